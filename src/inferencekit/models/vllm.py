"""vLLM backend: vLLM's asynchronous engine (`AsyncLLM`) in this process, driven from one background event loop.

Every caller (`submit` from the runner's problem threads, `score_text`) hands its requests to that loop and
blocks on a future (the loop is an implementation detail: vLLM's engine is asynchronous), and vLLM's
scheduler batches whatever is pending, continuously, with its prefix cache on (a tree search's shared path,
a few-shot block) and its engine processes doing the work.

Sampling: each sample of a prompt is its own request whose seed is `row_seed(seed, prompt, index)`, as for
the hf backend, so a sample depends only on its prompt, seed and index. (vLLM's own `n > 1` would seed
child `i` with `seed + i`: sample 1 of seed 0 would be sample 0 of seed 1, correlating runs of nearby
seeds.) Its prompt is computed once all the same: the requests share it through the prefix cache. A greedy
prompt is decoded once and copied `n` times. Prompts are tokenised here (one BOS, as the hf backend does)
and sent as token ids; text comes back with special tokens kept and stop strings cut by vLLM.

A GGUF file (the default embedded model included) is served from its dequantised copy
(`models/dequantised.py`), the same checkpoint the hf backend reads. Engine arguments: `dtype`,
`n_ctx` (vLLM's `max_model_len`), `max_batch_sequences` (`max_num_seqs`), `tensor_parallel_size`,
`data_parallel_size` and any other `AsyncEngineArgs` field through the model argument `engine_args`
(`max_logprobs` is -1 unless given: `certainty_text` reads whole distributions). On a CPU
the KV cache holds `kv_cache_mib` (vLLM would otherwise reserve most of the machine's memory); on a GPU vLLM
sizes it from `gpu_memory_utilization`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

try:
    import vllm
    from vllm import AsyncEngineArgs
    from vllm import SamplingParams as VLLMParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM
except ImportError as exc:  # the backends registry turns this into one line for the user
    raise ImportError(
        "the vllm backend needs vLLM: pip install 'inferencekit[vllm]' on a GPU machine; on a CPU-only one "
        f"install the CPU build first (see the README) ({exc})"
    ) from exc
from transformers import AutoTokenizer, GenerationConfig

from inferencekit.errors import UserError
from inferencekit.models.base import (
    Completion,
    GenerationError,
    Generator,
    GeneratorSpec,
    Request,
    SamplingParams,
    Usage,
)
from inferencekit.models.hf import _copy, _plain_checkpoint, resolve_source, row_seed
from inferencekit.models.hf_text import TokenizerText

ENGINE_FIELDS = {f.name for f in dataclasses.fields(AsyncEngineArgs)}


class VLLMGenerator(TokenizerText, Generator):
    """A model run by vLLM's engine in this process (`backend: vllm`)."""

    backend = "vllm"
    can_score_text = True  # score_text below, from prompt log-probabilities
    can_score_certainty = True  # certainty_text below, from full prompt log-probabilities (max_logprobs=-1)

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model_name = spec.name
        source, gguf_file, is_local = resolve_source(spec.path, spec.gguf_file)
        if gguf_file is not None and is_local:
            source, gguf_file = _plain_checkpoint(Path(source) / gguf_file, spec)
        model = str(Path(source) / gguf_file) if gguf_file else source  # vLLM reads a GGUF file itself
        self.tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=spec.trust_remote_code, **({"gguf_file": gguf_file} if gguf_file else {}))
        self.eos_token_ids = _eos_ids(source, self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        self._setup_text(spec.chat_template)
        self.engine_args = self._engine_args(model, source)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inferencekit-vllm", daemon=True)
        self._thread.start()
        try:
            self.engine: AsyncLLM = self._run(self._start()).result()
        except BaseException:
            self._stop_loop()
            raise
        self.n_ctx = self.engine.model_config.max_model_len

    def _engine_args(self, model: str, tokenizer: str) -> AsyncEngineArgs:
        spec = self.spec
        unknown = set(spec.engine_args) - ENGINE_FIELDS
        if unknown:
            raise UserError(f"unknown vLLM engine argument(s) {', '.join(sorted(unknown))} in engine_args "
                            "(see vLLM's AsyncEngineArgs)")
        args: dict[str, Any] = {
            "model": model, "tokenizer": tokenizer, "dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code,
            "max_model_len": spec.n_ctx, "max_num_seqs": spec.max_batch_sequences, "enable_prefix_caching": True,
            "tensor_parallel_size": spec.tensor_parallel_size, "data_parallel_size": spec.data_parallel_size,
            "seed": 0, "disable_log_stats": True,
            "max_logprobs": -1,  # lets certainty_text ask for whole distributions; the user may cap it
        }
        if current_platform.is_cpu():
            args["kv_cache_memory_bytes"] = spec.kv_cache_mib * 2**20  # else vLLM reserves a share of the memory
            # vLLM 0.32's CPU runner fails a seeded request whose prompt was prefilled in chunks ("CPU Generator
            # does not use offset") and the engine with it: whole prompts only (each sample has its own seed)
            args["enable_chunked_prefill"] = False
        args.update(spec.engine_args)
        return AsyncEngineArgs(**args)

    async def _start(self) -> AsyncLLM:
        return AsyncLLM.from_engine_args(self.engine_args)

    def _run(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def engine_settings(self) -> dict:
        """The settings that can change the bits this engine computes, for the run's provenance record."""
        config = self.engine.vllm_config
        cache, parallel = config.cache_config, config.parallel_config
        return {
            "vllm_version": vllm.__version__, "device": str(config.device_config.device_type),
            "dtype": str(config.model_config.dtype).removeprefix("torch."), "max_model_len": self.n_ctx,
            "max_num_seqs": config.scheduler_config.max_num_seqs, "enable_prefix_caching": cache.enable_prefix_caching,
            "block_size": cache.block_size, "kv_cache_dtype": cache.cache_dtype,
            "kv_cache_memory_bytes": cache.kv_cache_memory_bytes, "num_kv_blocks": cache.num_gpu_blocks,
            "gpu_memory_utilization": cache.gpu_memory_utilization,
            "tensor_parallel_size": parallel.tensor_parallel_size, "data_parallel_size": parallel.data_parallel_size,
            "engine_args": dict(self.spec.engine_args),
        }

    @property
    def context_length(self) -> int:
        return self.n_ctx

    # ---------------------------------------------------------------- requests

    def _prompt_ids(self, prompts: Sequence[str], plist: Sequence[SamplingParams]) -> list[list[int]]:
        encoded = [self.encode(p) for p in prompts]
        for prompt, ids in zip(prompts, encoded, strict=True):
            if len(ids) >= self.n_ctx:
                raise UserError(f"a prompt of {len(ids)} tokens does not fit the context of {self.n_ctx}: "
                                f"raise it with --model-arg n_ctx=N ({prompt[:40]!r}...)")
        return encoded

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """`params.n` completions per request (safe from many threads: vLLM batches all pending requests)."""
        plist = [r.params for r in requests]
        most = self.engine.model_config.max_logprobs
        if most >= 0 and any(p.top_logprobs > most for p in plist):
            raise UserError(f"top_logprobs={max(p.top_logprobs for p in plist)} is more than vLLM's max_logprobs="
                            f"{most}: raise it with --model-arg 'engine_args={{max_logprobs: N}}'")
        encoded = self._prompt_ids([r.prompt for r in requests], plist)
        return self._run(self._call(list(requests), encoded)).result()

    async def _call(self, requests: list[Request], encoded: list[list[int]]) -> list[list[Completion]]:
        jobs = [
            self._request(ids, r.params, None if r.params.greedy else row_seed(r.params.seed, r.prompt, j))
            for r, ids in zip(requests, encoded, strict=True)
            for j in range(1 if r.params.greedy else r.params.n)
        ]
        finished = iter(await asyncio.gather(*jobs))
        out = []
        for r, ids in zip(requests, encoded, strict=True):
            p = r.params
            done = [next(finished) for _ in range(1 if p.greedy else p.n)]
            first = done[0][0]
            out.append([c for c, _ in done] if not p.greedy else
                       [first] + [dataclasses.replace(first, logprobs=_copy(first.logprobs),
                                                      top_logprobs=_copy(first.top_logprobs)) for _ in range(p.n - 1)])
            self._record(Usage(prompt_tokens=len(ids) * p.n, computed_prompt_tokens=sum(len(ids) - c for _, c in done),
                               completion_tokens=sum(c.tokens for c, _ in done)), r.account)
        return out

    async def _request(self, ids: list[int], p: SamplingParams, seed: int | None) -> tuple[Completion, int]:
        """One sequence: its completion and the prompt tokens vLLM found in its prefix cache."""
        params = VLLMParams(
            n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=seed, max_tokens=p.max_new_tokens,
            stop=list(p.stop) or None, include_stop_str_in_output=p.include_stop,
            logprobs=p.top_logprobs if p.top_logprobs else (0 if p.logprobs else None),
            skip_special_tokens=False, spaces_between_special_tokens=False, output_kind=RequestOutputKind.FINAL_ONLY,
        )
        result = await self._final(TokensPrompt(prompt_token_ids=ids), params)
        out = result.outputs[0]
        tokens = list(out.token_ids)
        logprobs = top = None
        if out.logprobs is not None:
            if p.logprobs:
                logprobs = [position[t].logprob for t, position in zip(tokens, out.logprobs, strict=True)]
            if p.top_logprobs:
                top = [self._ranked(position, p.top_logprobs) for position in out.logprobs]
        stop_reason = out.stop_reason if isinstance(out.stop_reason, str) else None
        completion = Completion(text=out.text, tokens=len(tokens),
                                finish_reason="length" if out.finish_reason == "length" else "stop",
                                stop_reason=stop_reason, logprobs=logprobs, top_logprobs=top)
        return completion, result.num_cached_tokens or 0

    async def _final(self, prompt: TokensPrompt, params: VLLMParams) -> Any:
        """The finished `RequestOutput` of one request."""
        final = None
        async for output in self.engine.generate(prompt, params, request_id=f"ik-{next(self._ids)}"):
            final = output
        if final is None or not final.finished or any(o.finish_reason == "abort" for o in final.outputs):
            raise GenerationError("vLLM aborted the request")
        return final

    def _ranked(self, position: dict, k: int) -> list[tuple[str, float]]:
        """The `k` likeliest tokens at one position, best first (vLLM adds the sampled token when it is not)."""
        best = sorted(position.items(), key=lambda item: item[1].rank)[:k]
        return self._top_pairs([t for t, _ in best], [lp.logprob for _, lp in best], k)

    # ---------------------------------------------------------------- scoring given text

    def score_text(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None = None
    ) -> list[list[list[float]]]:
        """Log-probability of each token of each continuation given its prompt, per piece (see `Generator`).

        Each prompt plus continuation is one request for its prompt log-probabilities (vLLM reads those
        only from computed positions, so such a request skips the prefix cache).
        """
        items = [self._scored_tokens(prompt, pieces) for prompt, pieces in zip(prompts, continuations, strict=True)]
        results = self._prompt_statistics([tokens for _, tokens in items], 0, usage)
        out = []
        for (tails, tokens), logprobs in zip(items, results, strict=True):
            at, pieces = len(tokens) - sum(map(len, tails)), []
            for tail in tails:
                pieces.append(logprobs[at : at + len(tail)])
                at += len(tail)
            out.append(pieces)
        return out

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        """Per-token self-certainty of each response (see `Generator.certainty_text`) from vLLM's prompt
        log-probabilities over the whole vocabulary: KL(U || p) = -log V - mean_j log p(j) at each position.

        Exact, but costly: vLLM hands the whole distribution of every position back to this process (about
        20 ms per token for a 49k vocabulary on a 2-core CPU, prompt positions included). Needs `max_logprobs`
        -1 (the default here).
        """
        most = self.engine.model_config.max_logprobs
        if most >= 0:
            raise UserError(f"self-certainty on vllm reads whole distributions, but engine_args caps max_logprobs at "
                            f"{most}: leave it unset (-1) or use --backend llamacpp or hf")
        items = [self._scored_tokens(prompt, [response]) for prompt, response in zip(prompts, responses, strict=True)]
        results = self._prompt_statistics([tokens for _, tokens in items], -1, usage)
        return [values[len(tokens) - len(tails[0]):] for (tails, tokens), values in zip(items, results, strict=True)]

    def _scored_tokens(self, prompt: str, pieces: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Each piece's tokens (on its own, no BOS) and the prompt's tokens followed by all of them."""
        tails = [self.tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in pieces]
        tokens = self.encode(prompt) + [t for tail in tails for t in tail]
        if len(tokens) > self.n_ctx:
            raise ValueError(f"prompt and continuation of {len(tokens)} tokens do not fit n_ctx={self.n_ctx}")
        return tails, tokens

    def _prompt_statistics(self, sequences: list[list[int]], ranks: int, usage: Usage | None) -> list[list[float]]:
        """Per token of each sequence (0.0 for the first): its log-probability (`ranks` 0) or the
        self-certainty of the distribution it was read from (`ranks` -1: the whole vocabulary). The work
        goes to `usage` when given, else to this generator."""
        start = time.perf_counter()
        results = self._run(self._score_all(sequences, ranks)).result()
        work = Usage(calls=1, prompt_tokens=sum(map(len, sequences)),
                     computed_prompt_tokens=sum(len(t) - cached for t, (_, cached) in zip(sequences, results,
                                                                                          strict=True)),
                     seconds=time.perf_counter() - start)
        self._record_scoring(work, usage)
        return [values for values, _ in results]

    async def _score_all(self, sequences: list[list[int]], ranks: int) -> list[tuple[list[float], int]]:
        return await asyncio.gather(*(self._score(tokens, ranks) for tokens in sequences))

    async def _score(self, tokens: list[int], ranks: int) -> tuple[list[float], int]:
        """One sequence's per-token statistic (see `_prompt_statistics`) and its cached prompt tokens."""
        params = VLLMParams(max_tokens=1, temperature=0.0, prompt_logprobs=ranks, detokenize=False, flat_logprobs=True,
                            output_kind=RequestOutputKind.FINAL_ONLY)
        result = await self._final(TokensPrompt(prompt_token_ids=tokens), params)
        # flat: per position, the prompt token's entry first, then the `ranks` likeliest (all when -1)
        flat = result.prompt_logprobs
        spans = list(zip(flat.start_indices[1:], flat.end_indices[1:], strict=True))
        if ranks == 0:
            return [0.0] + [flat.logprobs[start] for start, _ in spans], result.num_cached_tokens or 0
        vocab = self.engine.model_config.get_vocab_size()
        if any(end - start - 1 != vocab for start, end in spans):
            raise GenerationError(f"vLLM returned fewer than the {vocab} log-probabilities of a whole distribution")
        values = [-math.log(vocab) - math.fsum(flat.logprobs[start + 1 : end]) / vocab for start, end in spans]
        return [0.0] + values, result.num_cached_tokens or 0

    # ---------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the engine (its processes end) and the event loop thread."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            self._run(self._stop_output_handler(engine)).result()
            engine.shutdown()
        self._stop_loop()

    @staticmethod
    async def _stop_output_handler(engine: AsyncLLM) -> None:
        """Cancel the task reading the engine's outputs first, so that it does not report the engine's end
        as a failure."""
        handler = getattr(engine, "output_handler", None)
        if handler is not None:
            handler.cancel()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _eos_ids(source: str, tokenizer: Any) -> list[int]:
    """The ids that end a completion: the checkpoint's generation config's, and the tokenizer's EOS."""
    try:
        eos = GenerationConfig.from_pretrained(source).eos_token_id
    except OSError:
        eos = None
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids

