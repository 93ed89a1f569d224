"""`LlamaCppGenerator`: the `Generator` interface over a GGUF model and its decode loop."""

from __future__ import annotations

import codecs
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence

import llama_cpp as lc

from inferencekit.models.base import (
    Completion,
    Generator,
    GeneratorSpec,
    Message,
    PromptTooLong,
    Request,
    SamplingParams,
    Usage,
    UsageAccount,
    truncate_at_stop,
)
from inferencekit.models.llamacpp.amx import decide as decide_amx
from inferencekit.models.llamacpp.decode_loop import Call, DecodeLoop
from inferencekit.models.llamacpp.gguf import GGUFModel, resolve_gguf


class LlamaCppGenerator(Generator):
    """A GGUF model run by llama.cpp, decoding many sequences per step.

    Uses `spec.path` (a .gguf file, a folder holding one, or the folder of `spec.gguf_file`), `n_ctx`
    (per sequence), `max_batch_sequences`, `n_threads` (None: all cores), `chat_template`,
    `kv_cache_mib`, `reuse_generated_kv` (see the package docstring) and `amx` (amx.py).
    A completion's `tokens` include the EOS token that ended it, as do its `logprobs`.
    """

    backend = "llamacpp"
    can_score_text = True  # score_text below
    can_score_certainty = True  # certainty_text below: the decode loop reads every position's full logits

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        path = resolve_gguf(spec)
        self.spec = spec
        self.n_ctx = spec.n_ctx
        self.threads = spec.n_threads or os.cpu_count() or 1
        self.amx = decide_amx(spec.amx, path)
        self.gguf = GGUFModel(path, spec.chat_template, label=spec.path, extra_bufts=self.amx.extra_bufts)
        self._loop = DecodeLoop(self.gguf, spec.n_ctx, spec.max_batch_sequences, self.threads,
                                spec.kv_cache_mib, spec.reuse_generated_kv)

    def engine_settings(self) -> dict:
        """The settings that can change the bits this engine computes, for the run's provenance record."""
        return {"kv_unified": False, "flash_attn": False, "threads": self.threads,  # see the package docstring
                "kv_cache_mib": self.spec.kv_cache_mib, "reuse_generated_kv": self.spec.reuse_generated_kv,
                "system_info": lc.llama_print_system_info().decode(errors="replace").strip(), **self.amx.settings()}

    def parameter_count(self) -> int:
        return self.gguf.n_params()

    @property
    def max_live(self) -> int:
        """Most sequences decoded together so far (continuous batching at work); settable, to reset it."""
        return self._loop.max_live

    @max_live.setter
    def max_live(self, value: int) -> None:
        self._loop.max_live = value

    # ---------------------------------------------------------------- tokenizer and chat template

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        return self.gguf.tokenize(text, add_bos)

    def _piece(self, token: int, special: bool = False) -> bytes:
        return self.gguf.piece(token, special)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` itself: special-token text counts as one token each, no BOS is added."""
        return len(self._tokenize(text, add_bos=False))

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the spec's template or the GGUF's `tokenizer.chat_template`."""
        return self.gguf.chat_prompt(messages, add_generation_prompt)

    # ---------------------------------------------------------------- requests

    def _prompt_tokens(self, prompts: Sequence[str]) -> list[list[int]]:
        self._check_cancelled()  # before the tokenizer: a stopping run closes the model next
        toks = [self._tokenize(p, add_bos=True) or [self.gguf.bos] for p in prompts]
        for p, t in zip(prompts, toks, strict=True):
            if len(t) >= self.n_ctx:
                raise PromptTooLong(
                    f"a prompt of {len(t)} tokens does not fit the context of {self.n_ctx}: "
                    f"raise it with --model-arg n_ctx=N ({p[:40]!r}...)"
                )
        return toks

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Hand the requests to the decode loop together and wait for them (safe from many threads)."""
        done = threading.Event()
        call = Call(self._prompt_tokens([r.prompt for r in requests]), [r.params for r in requests], done.set)
        self._loop.submit(call)
        done.wait()
        return self._finish(call, requests)

    def stream(self, prompt: str, params: SamplingParams, account: UsageAccount | None = None) -> Iterator[str]:
        """Yield the text of one completion (of `params` with `n=1`) as the decode loop produces it (its work
        counted in the total and `account`).

        A character split across tokens is held back until its last byte arrives, and text that may be
        the start of a stop string until it is known not to be, so the pieces join to exactly the text
        `generate` returns.
        """
        params = params.replace(n=1)
        pieces: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        call = Call(self._prompt_tokens([prompt]), [params], lambda: pieces.put(None), on_piece=pieces.put)
        self._loop.submit(call)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        sent = pending = ""
        while (data := pieces.get()) is not None:
            pending += decoder.decode(data)
            ready = _safe_prefix(pending, params.stop)
            if ready:
                yield pending[:ready]
                sent, pending = sent + pending[:ready], pending[ready:]
        text = self._finish(call, [Request(prompt, params, account)])[0][0].text
        self._record(Usage(calls=1, seconds=time.perf_counter() - call.start), account)  # one call, as `generate`
        if len(text) > len(sent):
            yield text[len(sent) :]

    def _finish(self, call: Call, requests: Sequence[Request]) -> list[list[Completion]]:
        """The completions of a finished call, each request's work recorded to its account."""
        if call.error is not None:
            raise call.error
        out = [
            [call.results.get((i, j)) or _copy(call.results[(i, 0)]) for j in range(p.n)]
            for i, p in enumerate(call.params)
        ]
        for i, request in enumerate(requests):
            p = call.params[i]
            self._record(Usage(prompt_tokens=len(call.toks[i]) * p.n, computed_prompt_tokens=call.computed[i],
                               completion_tokens=sum(c.tokens for c in out[i])), request.account)
        return out

    def _free_context(self) -> None:
        """Drop the llama.cpp context and every cached stream (the next request starts cold)."""
        self._loop.free_context()

    # ---------------------------------------------------------------- scoring given text

    def score_text(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None = None
    ) -> list[list[list[float]]]:
        """Log-probability of each token of each continuation given its prompt, per piece (for mean_logprob).

        A continuation is a list of pieces (a solution's steps and separators), each tokenised on its
        own (no BOS) and appended to the prompt's tokens, as a search method appends a step; all of
        it is read in one pass. The work runs in the decode loop between two steps, in streams above
        the live sequences: scored sequences stay cached there (generation fills streams from the
        bottom) with their log-probabilities, so a continuation that extends one scored before (a tree
        search's child of its parent) computes only what is new, and a cached prompt is not computed
        again. The numbers are the same either way (see the package docstring). The work is added to
        `usage` when given (a reward model's), else to this generator's.
        """
        return self._score(prompts, continuations, usage, "logprob")

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        """Per-token self-certainty of each response (see `Generator.certainty_text`), read as `score_text` reads
        text (one pass, cached streams reused) from each position's full logits."""
        return [pieces[0] for pieces in self._score(prompts, [[r] for r in responses], usage, "certainty")]

    def _score(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None, statistic: str
    ) -> list[list[list[float]]]:
        items = []
        for prompt, pieces in zip(prompts, continuations, strict=True):
            head = self._tokenize(prompt, add_bos=True) or [self.gguf.bos]
            tails = [self._tokenize(piece, add_bos=False) for piece in pieces]
            tokens = head + [t for tail in tails for t in tail]
            if len(tokens) > self.n_ctx:
                raise ValueError(f"prompt and continuation of {len(tokens)} tokens do not fit n_ctx={self.n_ctx}")
            items.append((head, tails, tokens))
        per = max((len(tokens) for _, _, tokens in items), default=1)
        start = time.perf_counter()
        out, total, computed = self._loop.run(lambda: self._loop.score_items(items, statistic), per, 2 * len(items))
        work = Usage(calls=1, prompt_tokens=total, computed_prompt_tokens=computed,
                     seconds=time.perf_counter() - start)
        self._record_scoring(work, usage)
        return out

    def cancel(self) -> None:
        """Fail every request in the decode loop with `Cancelled` after the current step, and refuse new ones."""
        super().cancel()
        self._loop.cancel()

    def close(self) -> None:
        """Stop the decode loop (after the work it holds), then free the llama.cpp context, batch and model."""
        self._loop.close()
        self.gguf.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _safe_prefix(text: str, stop: Sequence[str]) -> int:
    """How much of `text` a stream can show: up to a stop string in it, or all but a tail that may begin one."""
    cut, found = truncate_at_stop(text, stop)
    if found is not None:
        return len(cut)
    held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return len(text) - held


def _copy(c: Completion) -> Completion:
    return Completion(
        c.text, c.tokens, c.finish_reason, c.stop_reason, None if c.logprobs is None else list(c.logprobs),
        None if c.top_logprobs is None else [list(t) for t in c.top_logprobs],
    )
