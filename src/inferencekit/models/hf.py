"""Hugging Face transformers backend: a local folder, a hub id, or a GGUF file loaded through transformers.

All prompts x samples of one call run in as few padded batches as `spec.max_batch_sequences` allows,
and calls from many threads at once (the runner's problems in flight) are gathered into one such batch
while the model is busy (`inferencekit.coalesce`). A batch's shared prompt prefix is computed once
(`_prefill`); it decodes into a preallocated KV cache, each row leaving the batch when it ends
(`_decode_rows`), or through `model.generate` for a model whose cache is not all plain attention.
Token choice happens in `_RowSampler`, a logits processor that
draws each row's token from that row's own random stream, so a sample depends on its prompt, its
seed and its index, never on the batch it sits in.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Cache,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from inferencekit.coalesce import Coalescer
from inferencekit.errors import first_line as _one_line
from inferencekit.hub import is_hub_id

from .base import (
    USAGE_ACCOUNT,
    Completion,
    Generator,
    GeneratorSpec,
    SamplingParams,
    Usage,
    UsageAccount,
    per_prompt_params,
    truncate_at_stop,
)
from .certainty import kl_uniform_rows
from .dequantised import dequantised_checkpoint
from .hf_text import TokenizerText
from .torch_options import attention_without_cudnn, model_context_length, torch_dtype

logger = logging.getLogger(__name__)

try:  # per-layer caches arrived in transformers 4.54; before them decoding keeps the growing cache
    from transformers.cache_utils import StaticLayer
except ImportError:
    StaticLayer = None

try:  # transformers renamed generate's `past_key_values` to `cache`
    from transformers.generation.utils import ALL_CACHE_NAMES

    _CACHE_KWARG = ALL_CACHE_NAMES[0]
except ImportError:
    _CACHE_KWARG = "past_key_values"

GATHER_LINGER_S = 0.05  # how long a gathered batch waits for a next arrival (see inferencekit.coalesce)
MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth its own forward pass


def resolve_source(path: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """Return (folder or hub id, GGUF file name, is_local); raise FileNotFoundError for missing local paths.

    A path to a `.gguf` file is split into its folder and file name.
    """
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix == ".gguf" and gguf_file is None:
            return str(local.parent), local.name, True
        raise FileNotFoundError(f"model path {path} is a file, not a model folder (or a .gguf file)")
    if local.is_dir():
        if gguf_file is not None and not (local / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file} not found in model folder {path}")
        return str(local), gguf_file, True
    if not is_hub_id(path, allow_bare=True):
        raise FileNotFoundError(f"model path not found: {path}")
    return path, gguf_file, False


def _dtype_kwarg(dtype: str) -> dict:
    value = torch_dtype(dtype)
    import transformers
    from packaging.version import Version

    # transformers renamed torch_dtype= to dtype= in 4.56
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: value}


def _plain_checkpoint(gguf: Path, spec: GeneratorSpec) -> tuple[str, str | None]:
    """(folder, None) of the dequantised copy of local file `gguf`, or (its folder, its name) to load it
    directly when no copy can be made (noted once)."""
    options = dict(_dtype_kwarg(spec.dtype), trust_remote_code=spec.trust_remote_code)
    try:
        return str(dequantised_checkpoint(gguf, spec.dtype, options)), None
    except (OSError, ValueError, RuntimeError) as e:
        logger.warning("loading %s without a saved dequantised copy (%s)", gguf.name, _one_line(e))
        return str(gguf.parent), gguf.name


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

    def __init__(self, generator: Generator) -> None:
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


@dataclass
class _Row:
    """One sequence to decode: sample `sample` of prompt `prompt`."""

    prompt: int
    sample: int


class HFGenerator(TokenizerText, Generator):
    """A causal LM run with transformers (`backend: hf`)."""

    backend = "hf"
    can_score_certainty = True  # certainty_text below

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model_name = spec.name
        self.max_batch_sequences = max(1, int(spec.max_batch_sequences))
        self._share_prompts = True  # compute what rows share once (see _prefill)
        self._prefix: tuple[list[int], DynamicCache] | None = None
        self._preallocate = StaticLayer is not None  # decode into a preallocated KV cache (see _preallocated)
        source, gguf_file, is_local = resolve_source(spec.path, spec.gguf_file)
        if gguf_file is not None and is_local:
            source, gguf_file = _plain_checkpoint(Path(source) / gguf_file, spec)
        common: dict = {"trust_remote_code": spec.trust_remote_code}
        if gguf_file is not None:
            common["gguf_file"] = gguf_file
        model_kwargs = dict(common, **_dtype_kwarg(spec.dtype))
        device_map = spec.device_map
        if device_map is None and torch.cuda.is_available():
            device_map = "cuda"
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        if spec.attn_implementation is not None:
            model_kwargs["attn_implementation"] = spec.attn_implementation
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **common)
            self.model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
        except OSError as error:
            if is_local:
                raise OSError(f"cannot load model from {source}: {_one_line(error)}") from None
            raise OSError(
                f"cannot load model {spec.path!r}: no such local folder, and the hub could not provide it "
                f"({_one_line(error)})"
            ) from None
        self.model.eval()
        # as generate does: only the last position's logits, where the model's forward can be told so
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
            self.model.forward).parameters else {}
        self._setup_tokenizer()
        self._setup_generation_config()
        self._generate_lock = threading.Lock()
        self._gather: Coalescer[_Request, list[list[Completion]]] = Coalescer(
            self._generate_many, self.max_batch_sequences, weight=_rows, linger=GATHER_LINGER_S)

    # ----------------------------------------------------------------- setup

    def _setup_tokenizer(self) -> None:
        tok = self.tokenizer
        tok.padding_side = "left"
        self._setup_text(self.spec.chat_template)
        if tok.pad_token is None:
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            elif tok.unk_token is not None:
                tok.pad_token = tok.unk_token
            else:
                tok.add_special_tokens({"pad_token": "<|pad|>"})
                if len(tok) > self.model.get_input_embeddings().weight.shape[0]:
                    self.model.resize_token_embeddings(len(tok))

    def _setup_generation_config(self) -> None:
        """Replace the model's generation config by one holding only the special token ids.

        transformers fills unset generation settings from the model's own config (repetition
        penalty, forced tokens...); SamplingParams is the whole specification here.
        """
        original = self.model.generation_config
        eos = getattr(original, "eos_token_id", None) if original is not None else None
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos_ids
        self.pad_token_id = self.tokenizer.pad_token_id
        self.model.generation_config = GenerationConfig(
            eos_token_id=eos_ids or None,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @property
    def input_device(self) -> torch.device:
        """Device of the input embeddings, where inputs go (the first shard under device_map)."""
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------ interface

    @property
    def context_length(self) -> int:
        return model_context_length(self.model, self.tokenizer)

    def torch_model(self) -> tuple[torch.nn.Module, Any]:
        return self.model, self.tokenizer

    def engine_settings(self) -> dict[str, Any]:
        """The settings that can change the bits this engine computes, for the run's provenance record."""
        if self.model is None:  # closed
            return {}
        out: dict[str, Any] = {"torch_dtype": str(self.model.dtype), "device": str(self.model.device)}
        attention = getattr(self.model.config, "_attn_implementation", None)  # transformers' private field
        if attention:
            out["attention"] = attention
        out["torch_threads"] = torch.get_num_threads()
        out["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        return out

    def parameter_count(self) -> int | None:
        return None if self.model is None else int(self.model.num_parameters())

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        """Per-token self-certainty of each response (see `Generator.certainty_text`): one forward pass per
        response, its positions' full logits only (`logits_to_keep` where the model takes it)."""
        account, start = USAGE_ACCOUNT.get(), time.perf_counter()
        out, total = [], 0
        with self._generate_lock, torch.inference_mode(), self._attention_backends():
            for prompt, response in zip(prompts, responses, strict=True):
                head = self.encode(prompt)
                tail = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
                total += len(head) + len(tail)
                if not tail:
                    out.append([])
                    continue
                ids = torch.tensor([head + tail], device=self.input_device)
                keep = {"logits_to_keep": len(tail) + 1} if self._last_logits else {}
                logits = self.model(input_ids=ids, **keep).logits[0, -len(tail) - 1 : -1]
                out.append(kl_uniform_rows(logits).tolist())
        work = Usage(calls=1, prompt_tokens=total, computed_prompt_tokens=total, seconds=time.perf_counter() - start)
        if usage is None:
            self._record(work, account)
        else:
            usage.add(work)
        return out

    def generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[Completion]]:
        """`params.n` completions per prompt; usage counts the work done (greedy copies count once).

        Safe from many threads: calls arriving while a batch runs are gathered into the next one, so
        the problems in flight share forward passes; each call's usage goes to its caller's account.
        """
        plist = per_prompt_params(prompts, params)
        if not prompts:
            return []
        return self._gather((list(prompts), plist, USAGE_ACCOUNT.get(), time.perf_counter()))

    def _generate_many(self, requests: list[_Request]) -> list[list[list[Completion]]]:
        """One batched generation for the gathered requests; each request's work recorded to its account."""
        prompts = [p for r in requests for p in r[0]]
        plist = [p for r in requests for p in r[1]]
        out, computed, encoded = self._generate_now(prompts, plist)
        results, at = [], 0
        for r_prompts, _, account, start in requests:
            part = range(at, at + len(r_prompts))
            results.append(out[at : at + len(r_prompts)])
            self._record(
                Usage(
                    calls=1,
                    prompt_tokens=sum(len(encoded[i]) * plist[i].n for i in part),
                    computed_prompt_tokens=sum(computed.get(i, 0) for i in part),
                    completion_tokens=sum(c.tokens for i in part for c in _counted(out[i], plist[i])),
                    seconds=time.perf_counter() - start,
                ),
                account,
            )
            at += len(r_prompts)
        return results

    def _generate_now(
        self, prompts: list[str], plist: list[SamplingParams]
    ) -> tuple[list[list[Completion]], dict[int, int], list[list[int]]]:
        """Completions per prompt, prompt tokens computed per prompt, and the prompts' token ids."""
        with self._generate_lock:
            self._check_cancelled()  # requests gathered before a cancel
            encoded = [self.encode(p) for p in prompts]
            groups: dict[tuple, list[_Row]] = {}  # rows with other token caps share a batch; stop strings not
            for i, p in enumerate(plist):
                for j in range(1 if p.greedy else p.n):
                    groups.setdefault(p.stop, []).append(_Row(i, j))
            done: dict[tuple[int, int], Completion] = {}
            computed: dict[int, int] = {}
            for stop, rows in groups.items():
                rows.sort(key=lambda r: len(encoded[r.prompt]))  # similar lengths share a batch
                for start in range(0, len(rows), self.max_batch_sequences):
                    chunk = rows[start : start + self.max_batch_sequences]
                    results, work = self._run_batch(chunk, prompts, plist, encoded, stop)
                    for i, n in work.items():
                        computed[i] = computed.get(i, 0) + n
                    for row, completion in zip(chunk, results, strict=True):
                        done[row.prompt, row.sample] = completion
        out: list[list[Completion]] = []
        for i, p in enumerate(plist):
            if p.greedy:
                first = done[i, 0]
                out.append([first] + [replace(first, logprobs=_copy(first.logprobs), top_logprobs=_copy(
                    first.top_logprobs)) for _ in range(p.n - 1)])
            else:
                out.append([done[i, j] for j in range(p.n)])
        return out, computed, encoded

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------- decoding

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

    def _prefill(
        self, rows: list[_Row], encoded: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None, dict[int, int]]:
        """The batch's input ids, attention mask, KV cache of all but their last position, and prompt tokens
        computed per prompt.

        What the rows share is computed once: the prompts' common prefix (a few-shot block, a tree's path;
        kept between batches in `_prefix`), then each distinct prompt's remainder, copied to its samples.
        Each row is laid out as [common prefix][padding][remainder], so positions stay contiguous. Without
        a shared part (or for a model whose cache cannot be built this way) rows are left-padded and
        `generate` computes everything (cache None).
        """
        distinct = list(dict.fromkeys(r.prompt for r in rows))
        seqs = [encoded[p] for p in distinct]
        common = min(_common_prefix(seqs), min(len(s) for s in seqs) - 1)
        if common < MIN_SHARED_PREFIX:
            common = 0
        if not self._share_prompts or max(map(len, seqs)) < 2 or (common == 0 and len(distinct) == len(rows)):
            return (*_layout([encoded[r.prompt] for r in rows], 0, self.pad_token_id), None,
                    {p: len(encoded[p]) * sum(r.prompt == p for r in rows) for p in distinct})
        ids, mask = _layout(seqs, common, self.pad_token_id)
        width = ids.shape[1]
        positions = _positions(mask)
        device = self.input_device
        try:
            with torch.inference_mode(), self._attention_backends():
                cache, prefix_work = self._prefix_cache(seqs[0][:common])
                cache.batch_repeat_interleave(len(distinct))
                if width - 1 > common:
                    self.model(
                        input_ids=ids[:, common:-1].to(device), attention_mask=mask[:, :-1].to(device),
                        position_ids=positions[:, common:-1].to(device), use_cache=True, **{_CACHE_KWARG: cache},
                    )
                slot = {p: i for i, p in enumerate(distinct)}
                select = torch.tensor([slot[r.prompt] for r in rows])
                cache.batch_select_indices(select)  # CPU indices: any device
        except Exception as e:  # noqa: BLE001 - any architecture-specific failure: fall back for good
            logger.warning("prompts are not shared between sequences with this model (%s)", _one_line(e))
            self._share_prompts = False
            self._prefix = None
            return self._prefill(rows, encoded)
        computed = {p: len(encoded[p]) - common - 1 + sum(r.prompt == p for r in rows) for p in distinct}
        computed[distinct[0]] += prefix_work
        return ids[select], mask[select], cache, computed

    def _preallocated(self, filled: DynamicCache | None, length: int) -> Cache | None:
        """A KV cache with room for `length` positions holding `filled`'s entries (None: empty), or
        `filled` itself where the model's layers are not all plain attention.

        A `DynamicCache` concatenates every layer's keys and values at each step: profiled on CPU
        (SmolLM2-135M, batch 16, 5-shot GSM8K prompts) that copying took 62% of decoding. A static
        cache writes each step in place; attention then spans the masked free positions too.
        """
        if not self._preallocate:
            return filled
        try:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            if any(type(layer) is not StaticLayer for layer in cache.layers):
                raise ValueError("not every layer is a plain attention layer")
            if filled is not None:
                for layer, source in zip(cache.layers, filled.layers, strict=True):
                    layer.update(source.keys, source.values)
        except Exception as e:  # noqa: BLE001 - any architecture-specific failure: keep the dynamic cache
            logger.info("decoding with a growing cache for this model (%s)", _one_line(e))
            self._preallocate = False
            return filled
        return cache

    def _prefix_cache(self, prefix: list[int]) -> tuple[DynamicCache, int]:
        """A batch-of-one KV cache of `prefix` and the tokens computed to make it.

        The last prefix's cache is kept and reused as far as it matches (the few-shot block every problem
        starts with); only the rest is computed. Call under inference mode.
        """
        if not prefix:
            return DynamicCache(), 0
        kept, cache = (0, None)
        if self._prefix is not None:
            stored, stored_cache = self._prefix
            kept = _common_prefix([stored, prefix])
            if kept >= MIN_SHARED_PREFIX:
                cache = copy.deepcopy(stored_cache)
                if kept < len(stored):
                    cache.crop(kept - len(stored))  # tokens to remove: transformers 5 refuses a length
            else:
                kept = 0
        if cache is None:
            cache = DynamicCache()
        if kept < len(prefix):
            device = self.input_device
            self.model(
                input_ids=torch.tensor([prefix[kept:]], device=device),
                attention_mask=torch.ones((1, len(prefix)), dtype=torch.long, device=device),
                position_ids=torch.arange(kept, len(prefix), device=device)[None],
                use_cache=True, **{_CACHE_KWARG: cache},
            )
        self._prefix = (list(prefix), copy.deepcopy(cache))
        return cache, len(prefix) - kept

    def _attention_backends(self) -> AbstractContextManager:
        """On CUDA, keep torch's SDPA off its cuDNN backend during generation.

        cuDNN attention builds a plan for every new (batch, length) shape, and decoding meets a new
        length at every step: measured on an H200 (torch 2.11), 20 vs 110-130 tokens/s at batch 1 and
        500 vs 3000-4700 at batch 32 on a fresh model. Flash / memory-efficient kernels have no such cost.
        """
        return attention_without_cudnn(self.input_device)

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


_Request = tuple[list[str], list[SamplingParams], UsageAccount | None, float]  # prompts, params, account, start


def _rows(request: _Request) -> int:
    """Sequences a request decodes: a greedy prompt's copies are decoded once."""
    return sum(1 if p.greedy else p.n for p in request[1])


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all `seqs` share."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its row, counting only unmasked tokens, as `generate` numbers them."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _layout(seqs: Sequence[Sequence[int]], common: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of `seqs` as [shared first `common` tokens][padding][the rest]."""
    width = common + max(len(s) - common for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :common], mask[b, :common] = torch.tensor(s[:common], dtype=torch.long), 1
        rest = len(s) - common
        if rest:
            ids[b, width - rest :], mask[b, width - rest :] = torch.tensor(s[common:], dtype=torch.long), 1
    return ids, mask


def _counted(completions: list[Completion], params: SamplingParams) -> list[Completion]:
    """The completions actually decoded: a greedy prompt's copies count once."""
    return completions[:1] if params.greedy else completions


def _copy(values: list | None) -> list | None:
    return None if values is None else [list(v) if isinstance(v, list) else v for v in values]
