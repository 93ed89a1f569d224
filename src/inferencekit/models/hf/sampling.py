"""Token choice for the hf backend: every row draws from its own random stream, whatever batch it sits in."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from inferencekit.models.base import SamplingParams


def row_seed(seed: int, prompt: str, sample: int) -> int:
    """Seed of one sample's random stream: a hash of (seed, sample index, prompt text).

    The prompt text is part of it so that different prompts sampled with one seed get independent
    streams; nothing about the batch enters it.
    """
    data = f"{seed}\x00{sample}\x00{prompt}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class _RowSampler(LogitsProcessor):
    """Chooses every row's next token; as a logits processor it masks all others, so that greedy decoding
    emits it.

    Greedy rows (temperature 0) take the argmax. Sampled rows apply temperature, top-k and top-p
    and invert their cumulative distribution at one uniform number from the row's own CPU
    generator. With `want_logprobs` it records the raw log-probability of each chosen token per row
    (the scores it receives are the unprocessed logits: it is the only processor), with `top` > 0
    also the `top` likeliest tokens of every row and step.
    """

    def __init__(
        self, params: Sequence[SamplingParams], seeds: Sequence[int | None], want_logprobs: bool, top: int = 0
    ):
        self.params = list(params)
        self.generators = [
            None if p.greedy else torch.Generator().manual_seed(s) for p, s in zip(self.params, seeds, strict=True)
        ]
        # only rows with top-k/top-p need the (costly) sort that finds their cutoff
        self.plain = {i for i, p in enumerate(self.params) if not p.greedy and p.top_k <= 0 and p.top_p >= 1}
        self.filtered = {i for i, p in enumerate(self.params) if not p.greedy and (p.top_k > 0 or p.top_p < 1)}
        self.want_logprobs = want_logprobs
        self.top = top
        self.logprobs: list[list[float]] = [[] for _ in self.params]  # per row, per step
        self.top_pairs: list[list[tuple[list[int], list[float]]]] = [[] for _ in self.params]

    def _uniforms(self, rows: list[int], device: torch.device) -> torch.Tensor:
        return torch.cat([torch.rand(1, generator=self.generators[i]) for i in rows]).to(device)

    def _temperatures(self, rows: list[int], device: torch.device) -> torch.Tensor:
        return torch.tensor([self.params[i].temperature for i in rows], device=device).unsqueeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = self.choose(scores, range(scores.shape[0]))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen.unsqueeze(1), 0.0)

    def choose(self, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The next token of each of `rows` (the sampler's row numbers), whose logits are `scores`' rows."""
        logits = scores.float()
        chosen = logits.argmax(dim=-1)
        device = logits.device
        plain = [k for k, r in enumerate(rows) if r in self.plain]
        if plain:
            own = [rows[k] for k in plain]
            index = torch.tensor(plain, device=device)
            probs = torch.softmax(logits[index] / self._temperatures(own, device), dim=-1)
            chosen[index] = _invert_cdf(probs, self._uniforms(own, device))
        filtered = [k for k, r in enumerate(rows) if r in self.filtered]
        if filtered:
            own = [rows[k] for k in filtered]
            index = torch.tensor(filtered, device=device)
            scaled = logits[index] / self._temperatures(own, device)
            sorted_logits = torch.sort(scaled, dim=-1, descending=True).values
            vocab = logits.shape[-1]
            top_k = torch.tensor([self.params[i].top_k if self.params[i].top_k > 0 else vocab for i in own],
                                 device=device)
            top_p = torch.tensor([self.params[i].top_p for i in own], device=device)
            probs = torch.softmax(sorted_logits, dim=-1)
            # the smallest prefix whose mass reaches top_p (at least one token), at most top_k long
            kept = ((probs.cumsum(-1) - probs) < top_p.unsqueeze(1)).sum(-1).clamp(min=1)
            kept = torch.minimum(kept, top_k.clamp(max=vocab))
            threshold = sorted_logits.gather(1, (kept - 1).unsqueeze(1))
            # sample in vocabulary order, not sorted order: near-tied logits that swap places under
            # batch-dependent rounding would otherwise change which token a uniform number lands on
            masked = torch.softmax(scaled.masked_fill(scaled < threshold, float("-inf")), dim=-1)
            chosen[index] = _invert_cdf(masked, self._uniforms(own, device))
        if self.want_logprobs or self.top:
            logprobs = torch.log_softmax(logits, dim=-1)
            if self.want_logprobs:
                for r, v in zip(rows, logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist(), strict=True):
                    self.logprobs[r].append(v)
            if self.top:
                values, ids = logprobs.topk(min(self.top, logprobs.shape[-1]), dim=-1)
                for r, i, v in zip(rows, ids.tolist(), values.tolist(), strict=True):
                    self.top_pairs[r].append((i, v))
        return chosen


class _Cancel(StoppingCriteria):
    """Ends every row at the next step once the generator is cancelled (`generate` then raises `Cancelled`)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.generator.cancelled, device=input_ids.device)


class _RowCaps(StoppingCriteria):
    """Ends each row at its own token cap (rows of one batch may have different caps)."""

    def __init__(self, caps: Sequence[int], prompt_width: int) -> None:
        self.caps, self.width = torch.tensor(caps), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.width >= self.caps).to(input_ids.device)


def _invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index of the first token whose cumulative probability exceeds u * total, per row."""
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    # rounding can put u * total at the very top: fall back to the last token that has mass
    last_with_mass = (probs > 0).int().cumsum(-1).argmax(-1)
    return torch.minimum(picked, last_with_mass)

