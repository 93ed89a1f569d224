"""Decoding one batch of rows for the hf backend: into a preallocated cache, each row leaving the batch when it
ends (`_decode_rows`), or through `model.generate` for a model whose cache is not all plain attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Cache, LogitsProcessorList, StaticCache, StoppingCriteriaList, StopStringCriteria

from inferencekit.models.base import Completion, SamplingParams, truncate_at_stop
from inferencekit.models.hf.prefix_cache import _CACHE_KWARG, SharedPrefixes, _positions, _Row
from inferencekit.models.hf.sampling import _Cancel, _RowCaps, _RowSampler, row_seed


class BatchedDecoding(SharedPrefixes):
    """Mixin of `HFGenerator`: one batch of rows decoded to completions. The class using it also sets
    `tokenizer`, `eos_token_ids` and `_last_logits`, and provides `_decode`, `_top_pairs` and `_check_cancelled`."""

    tokenizer: Any
    eos_token_ids: list[int]
    _last_logits: dict

    def _run_batch(
        self,
        rows: list[_Row],
        prompts: Sequence[str],
        plist: list[SamplingParams],
        encoded: list[list[int]],
        stop: tuple[str, ...],
    ) -> tuple[list[Completion], dict[int, int]]:
        """Decode `rows` as one batch; return their completions and the prompt tokens computed per prompt."""
        input_ids, attention_mask, shared, computed = self._prefill(rows, encoded)
        width = input_ids.shape[1]
        row_params = [plist[r.prompt] for r in rows]
        seeds = [
            None if p.greedy else row_seed(p.seed, prompts[r.prompt], r.sample)
            for r, p in zip(rows, row_params, strict=True)
        ]
        want_logprobs = any(p.logprobs for p in row_params)
        top = max(p.top_logprobs for p in row_params)
        sampler = _RowSampler(row_params, seeds, want_logprobs, top)
        caps = [p.max_new_tokens for p in row_params]
        cache = self._preallocated(shared, width + max(caps))
        with torch.inference_mode(), self._attention_backends():
            if isinstance(cache, StaticCache):
                generated = self._decode_rows(input_ids, attention_mask, cache, sampler, caps, stop)
            else:
                generated = self._generate_rows(input_ids, attention_mask, cache, sampler, caps, stop)
        completions = [
            self._completion(generated[b][: p.max_new_tokens], sampler.logprobs[b] if p.logprobs else None, p)
            for b, p in enumerate(row_params)
        ]
        for c, p, pairs in zip(completions, row_params, sampler.top_pairs, strict=True):
            if p.top_logprobs:  # only the row's own tokens, only as many as it asked for
                c.top_logprobs = [self._top_pairs(i, v, p.top_logprobs) for i, v in pairs[: c.tokens]]
        return completions, computed

    def _decode_rows(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: StaticCache, sampler: _RowSampler,
        caps: list[int], stop: tuple[str, ...],
    ) -> list[list[int]]:
        """Every row's generated ids, decoded into `cache` (filled with all but the prompts' last positions,
        or empty), each row leaving the batch when it ends.

        `generate` computes every row until the longest one ends. On a CPU a step's cost grows with its
        rows (SmolLM2-135M in float32, 5-shot GSM8K prompts: 168 ms at 16 rows, 126 ms at 8), and a
        batch's lengths vary widely (5-shot GSM8K: most answers end near 120 tokens, some run to the cap),
        so a finished row's cache, mask and position leave the batch at once.
        """
        device = self.input_device
        n, width = input_ids.shape
        mask = torch.cat([attention_mask, torch.ones((n, max(caps)), dtype=attention_mask.dtype)], 1).to(device)
        positions = _positions(attention_mask)
        done = int(cache.get_seq_length())
        ids, pos = input_ids[:, done:].to(device), positions[:, done:].to(device)
        next_pos = attention_mask.sum(-1).to(device)  # the first generated token's position, per row
        left = torch.tensor(caps, device=device)
        eos = torch.tensor(self.eos_token_ids or [-1], device=device)
        stopper = StopStringCriteria(self.tokenizer, list(stop)) if stop else None
        text = input_ids.to(device)  # what the stop strings are looked for in
        rows, out = list(range(n)), [[] for _ in range(n)]
        for step in range(max(caps)):
            self._check_cancelled()  # a stopping run: between two steps
            logits = self.model(input_ids=ids, attention_mask=mask[:, : width + step], position_ids=pos,
                                use_cache=True, **{_CACHE_KWARG: cache}, **self._last_logits).logits[:, -1]
            chosen = sampler.choose(logits, rows)
            for r, t in zip(rows, chosen.tolist(), strict=True):
                out[r].append(t)
            left -= 1
            ended = torch.isin(chosen, eos) | (left <= 0)
            if stopper is not None:
                text = torch.cat([text, chosen[:, None]], 1)
                ended |= stopper(text, logits)
            if ended.all():
                break
            ids, pos, next_pos = chosen[:, None], next_pos[:, None], next_pos + 1
            if ended.any():
                keep = (~ended).nonzero().squeeze(1)
                for layer in cache.layers:
                    layer.reorder_cache(keep)
                rows = [rows[k] for k in keep.tolist()]
                ids, pos, next_pos, mask, left, text = (x[keep] for x in (ids, pos, next_pos, mask, left, text))
        return out

    def _generate_rows(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache | None, sampler: _RowSampler,
        caps: list[int], stop: tuple[str, ...],
    ) -> list[list[int]]:
        """Every row's generated ids (padded after its end) through `generate`: for a model whose cache is
        not all plain attention layers."""
        width, kwargs = input_ids.shape[1], {}
        criteria = [_Cancel(self)]
        if min(caps) < max(caps):  # each row ends at its own cap
            criteria.append(_RowCaps(caps, width))
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if cache is not None:
            kwargs[_CACHE_KWARG] = cache
        device = self.input_device
        sequences = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), max_new_tokens=max(caps),
            do_sample=False, logits_processor=LogitsProcessorList([sampler]), **kwargs,
        )
        self._check_cancelled()  # stopped early by _Cancel: not a completion
        return sequences[:, width:].cpu().tolist()

    def _completion(self, ids: list[int], logprobs: list[float] | None, params: SamplingParams) -> Completion:
        """Turn one row's generated ids (padded after its end) into a Completion."""
        eos = set(self.eos_token_ids)
        body = next((k for k, t in enumerate(ids) if t in eos), None)
        hit_eos = body is not None
        if body is None:
            body = len(ids)
        text, stop_reason = truncate_at_stop(self._decode(ids[:body]), params.stop)
        if stop_reason is not None:
            tokens = self._tokens_to_stop(ids[:body], stop_reason)
            finish = "stop"
            if params.include_stop:
                text += stop_reason
        elif hit_eos:
            tokens, finish = body + 1, "stop"  # the EOS token counts as generated
        else:
            tokens, finish = body, ("length" if body >= params.max_new_tokens else "stop")
        return Completion(
            text=text,
            tokens=tokens,
            finish_reason=finish,
            stop_reason=stop_reason,
            logprobs=logprobs[:tokens] if logprobs is not None else None,
        )

    def _tokens_to_stop(self, ids: list[int], stop: str) -> int:
        """Fewest leading tokens whose text contains `stop` (binary search; containment only grows)."""
        low, high = 1, len(ids)
        while low < high:
            mid = (low + high) // 2
            if stop in self._decode(ids[:mid]):
                high = mid
            else:
                low = mid + 1
        return high

