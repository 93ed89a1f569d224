"""The llama.cpp backend's decode loop: one thread that owns the context and batches every pending request.

At every step it admits waiting prompts into free sequences while the decode width allows (each
prompt evaluated once, from the longest cached prefix, and its KV copied to its samples), advances
every live sequence one token in one `llama_decode`, and retires finished ones, waking their callers:
continuous batching. Work that must run between two steps (scoring given text) comes in as a task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as lc
import numpy as np

from inferencekit.errors import UserError
from inferencekit.models.base import (
    Cancelled,
    Completion,
    GenerationError,
    SamplingParams,
    truncate_at_stop,
)
from inferencekit.models.certainty import kl_uniform
from inferencekit.models.llamacpp.gguf import GGUFModel
from inferencekit.models.llamacpp.kv_cache import DrawnCertainty, StreamCache
from inferencekit.models.llamacpp.sampler import logsumexp, next_token, top_k

_BATCH = 512  # tokens per llama_decode call; prompts are fed in chunks of this size
_MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ
_PAD = 256  # llama.cpp pads each stream to a multiple of this


@dataclass
class Call:
    """One caller's requests: `params[i].n` completions of each prompt `toks[i]`, awaited by the caller."""

    toks: list[list[int]]
    params: list[SamplingParams]
    done: Callable[[], None]  # wakes the caller (an event's set)
    results: dict[tuple[int, int], Completion] = field(default_factory=dict)
    left: int = 0  # jobs not finished
    computed: list[int] = field(default_factory=list)  # prompt tokens computed, per prompt
    error: BaseException | None = None
    start: float = field(default_factory=time.perf_counter)
    on_piece: Callable[[bytes], None] | None = None  # streaming: called with each generated token's bytes


@dataclass
class _Task:
    """Work for the decode loop's thread (scoring given text) that needs streams of `per_seq` cells."""

    fn: Callable[[], object]
    per_seq: int
    streams: int
    done: Callable[[], None]
    result: object = None
    error: BaseException | None = None


@dataclass
class _Job:
    """Samples `js` of prompt `prompt` of `call`, admitted to the decode loop together (they share the prompt)."""

    call: Call
    prompt: int
    js: list[int]

    @property
    def toks(self) -> list[int]:
        return self.call.toks[self.prompt]

    @property
    def params(self) -> SamplingParams:
        return self.call.params[self.prompt]


@dataclass
class _Seq:
    """One sample being decoded in llama.cpp sequence (and KV stream) `seq`."""

    job: _Job
    j: int
    seq: int
    fed: list[int]  # tokens whose KV the stream holds: the prompt, then generated tokens
    rng: np.random.Generator | None  # None: greedy
    out: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[str, float]]] = field(default_factory=list)
    certainty: list[float] = field(default_factory=list)  # per generated token, with reuse_generated
    data: bytearray = field(default_factory=bytearray)
    finish: str | None = None


ScoreItem = tuple[list[int], list[list[int]], list[int]]  # prompt tokens, each piece's tokens, all tokens


class DecodeLoop:
    """The thread that decodes for one `GGUFModel`, and the llama.cpp context, batch and stream cache it owns.

    `n_ctx` bounds each sequence, `width` how many decode together, `kv_cache_mib` the KV memory of all
    streams (live and cached); `reuse_generated` caches generated tokens' KV too (see the package docstring).
    """

    def __init__(self, model: GGUFModel, n_ctx: int, width: int, threads: int, kv_cache_mib: int,
                 reuse_generated: bool) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.width = width
        self._threads = threads
        self._budget = kv_cache_mib * 2**20 // max(1, model.kv_cell_bytes())  # cells
        self._reuse_generated = reuse_generated
        self._ctx = None
        self._n_seq = self._per_seq = 0
        self._batch = lc.llama_batch_init(_BATCH, 0, 1)
        self.cache = StreamCache()
        self.drawn = DrawnCertainty(model.text)  # read by score_items("certainty") with reuse_generated
        # callers hand jobs in through _inbox / _tasks under _wake; the loop's thread owns the context, the
        # streams and _waiting / _live, and holds _engine while it works
        self._wake = threading.Condition()
        self._engine = threading.RLock()
        self._inbox: list[_Job] = []
        self._tasks: list[_Task] = []
        self._waiting: list[_Job] = []
        self._live: list[_Seq] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cancelled = False
        self.max_live = 0  # most sequences decoded together so far (continuous batching at work)

    # ---------------------------------------------------------------- callers' side (any thread)

    def submit(self, call: Call) -> None:
        """Queue a request; `call.done()` is called (from the loop's thread) once all its samples finished."""
        jobs = [_Job(call, i, list(range(1 if p.greedy else p.n))) for i, p in enumerate(call.params)]
        call.computed = [0] * len(call.toks)
        call.left = sum(len(job.js) for job in jobs)
        self._post(lambda: self._inbox.extend(jobs))

    def run(self, fn: Callable[[], object], per_seq: int, streams: int) -> object:
        """Run `fn` in the decode loop's thread, between two steps, once the context can hold it."""
        done = threading.Event()
        task = _Task(fn, per_seq, streams, done.set)
        self._post(lambda: self._tasks.append(task))
        done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _post(self, add: Callable[[], None]) -> None:
        """Hand work to the decode loop (`add` queues it, under the loop's lock), starting the loop if idle."""
        with self._wake:
            if self._cancelled:
                raise Cancelled("the run is stopping")
            if self._closed:
                raise RuntimeError("this llama.cpp generator is closed")
            add()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llamacpp-decode", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self) -> None:
        """Fail every queued and live request with `Cancelled` at the next step, and refuse new ones."""
        with self._wake:
            self._cancelled = True
            self._wake.notify()

    def close(self) -> None:
        """Stop the loop (after the work it holds), then free the llama.cpp context and batch."""
        with self._wake:
            self._closed = True
            thread = self._thread
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._engine:
            if self._batch is not None:
                self.free_context()
                lc.llama_batch_free(self._batch)
                self._batch = None

    # ---------------------------------------------------------------- context

    def _ensure_context(self, seqs: int, per_seq: int) -> None:
        """Have a context with streams of at least `per_seq` cells and, budget allowing, `seqs` streams."""
        per = max(self._per_seq, min(-(-per_seq // _PAD) * _PAD, max(self.n_ctx, per_seq)))
        cap = max(1, min(_MAX_SEQ - 1, self._budget // per - 1))  # streams also cache: not bound to the batch width
        n_seq = min(max(seqs, 1), cap)
        if self._ctx and per <= self._per_seq and n_seq <= self._n_seq:
            return
        n_seq = max(n_seq, min(2 * self._n_seq, cap))  # grow in steps: a new context loses the cache
        self.free_context()
        cp = lc.llama_context_default_params()
        streams = n_seq + (n_seq > 1)  # one spare stream, for swaps (see _compact)
        cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = streams * per, streams, _BATCH, _BATCH
        cp.kv_unified, cp.flash_attn_type = False, 0  # see the package docstring
        cp.n_threads = cp.n_threads_batch = self._threads
        log = logging.getLogger("llama-cpp-python")  # its callback shows llama.cpp warnings as errors
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            self._ctx = lc.llama_init_from_model(self.model.model, cp)
        finally:
            log.setLevel(level)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {streams} x {per} cells")
        self._n_seq, self._per_seq = n_seq, lc.llama_n_ctx_seq(self._ctx)
        self._mem = lc.llama_get_memory(self._ctx)

    def free_context(self) -> None:
        """Free the context (a later request makes a new one); the cached streams go with it."""
        with self._engine:
            if self._ctx:
                lc.llama_free(self._ctx)
            self._ctx = None
            self.cache.clear()

    # ---------------------------------------------------------------- the decode loop (one thread)

    def _loop(self) -> None:
        """Admit waiting sequences into free streams, advance every live one a token, retire finished ones.

        The thread ends after a moment without work (a later request starts another), so an idle
        generator holds no thread and can be garbage-collected.
        """
        while True:
            with self._wake:
                if not (self._inbox or self._tasks or self._waiting or self._live):
                    self._wake.wait(timeout=0.5)
                    if not (self._inbox or self._tasks or self._waiting or self._live):
                        self._thread = None
                        return
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                tasks, self._tasks = self._tasks, []
                cancelled = self._cancelled
            with self._engine:
                try:
                    if cancelled:  # between two steps: every caller gets Cancelled
                        raise Cancelled("the run is stopping")
                    tasks = self._run_tasks(tasks)
                    self._admit()
                    if self._live:
                        self._advance()
                except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
                    self._fail_all(exc, tasks)
                    tasks = []
            if tasks:
                with self._wake:
                    self._tasks[:0] = tasks  # not runnable beside the live sequences: after they drain

    def _run_tasks(self, tasks: list[_Task]) -> list[_Task]:
        """Run the tasks the context can hold now; return the others."""
        later = []
        for task in tasks:
            fits = self._ctx is not None and task.per_seq <= self._per_seq and len(self._live) < self._n_seq
            if not fits and self._live:
                later.append(task)
                continue
            if not fits:
                self._ensure_context(task.streams, task.per_seq)
            try:
                task.result = task.fn()
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                task.error = exc
            task.done()
        return later

    def _admit(self) -> None:
        """Start waiting jobs, in order, while the decode width has room."""
        while self._waiting:
            job = self._waiting[0]
            per = len(job.toks) + self.cap(len(job.toks), job.params)
            if not self._live:  # a new context loses the live streams: only between them
                demand = sum(len(j.js) for j in self._waiting)
                self._ensure_context(max(demand, self.width), per)
            elif per > self._per_seq:
                return  # the live sequences drain first
            width = min(self._n_seq, self.width)
            if len(job.js) > width:  # more samples than the width: in parts, each sharing the prompt again
                self._waiting[0:1] = [_Job(job.call, job.prompt, job.js[a : a + width])
                                      for a in range(0, len(job.js), width)]
                job = self._waiting[0]
            if len(self._live) + len(job.js) > width:
                return
            self._waiting.pop(0)
            self._start(job)

    def _start(self, job: _Job) -> None:
        """Feed a job's prompt into the first free stream (from the longest cached prefix) and share it."""
        self._compact()
        first = len(self._live)
        t = np.asarray(job.toks)
        # a prefix may come from a cached stream or from a live one's prompt (problems in flight share few-shot
        # blocks and tree paths): positions below a prompt's length hold the same KV in either
        prefix, src = self.cache.longest_prefix(t, {id(s.job): (s.seq, s.job.toks) for s in self._live}.values())
        # cached streams in the job's way move to free streams above it (copies run in order at the next decode)
        self.cache.clear_way(self._mem, first, first + len(job.js), self._n_seq)
        if src >= 0 and src != first:
            lc.llama_memory_seq_cp(self._mem, src, first, -1, -1)  # whole streams only
        lc.llama_memory_seq_rm(self._mem, first, prefix, -1)
        logits = self._feed(job.toks, prefix, first)
        job.call.computed[job.prompt] += len(t) - prefix
        p = job.params
        for seq, j in enumerate(job.js, start=first):
            if seq != first:
                lc.llama_memory_seq_cp(self._mem, first, seq, -1, -1)
            s = _Seq(job, j, seq, list(job.toks), None if p.greedy else np.random.default_rng([p.seed, j]))
            self._live.append(s)
            self._step(s, logits, p, len(t))
        self._retire()

    def _advance(self) -> None:
        """One token for every live sequence, in one llama_decode."""
        live = self._live
        self.max_live = max(self.max_live, len(live))
        self._decode([(s.out[-1], len(s.fed), s.seq, True) for s in live])
        for row, s in zip(self._logits(None, len(live)), live, strict=True):
            s.fed.append(s.out[-1])
            self._step(s, row, s.job.params, len(s.job.toks))
        self._retire()
        self._compact()

    def _retire(self) -> None:
        """Hand finished sequences' completions to their requests; their streams join the prefix cache."""
        finished = [s for s in self._live if s.finish is not None]
        if not finished:
            return
        self._live = [s for s in self._live if s.finish is None]
        self.cache.retain((s.seq, s.fed if self._reuse_generated else s.job.toks) for s in finished)
        for s in finished:
            if self._reuse_generated:  # the text's tokens: an end-of-generation token is not part of it
                text = s.out[:-1] if s.out and self.model.is_eog(s.out[-1]) else s.out
                self.drawn.remember(s.job.toks, text, s.certainty)
            call = s.job.call
            call.results[(s.job.prompt, s.j)] = self._completion(s, s.job.params)
            call.left -= 1
            if call.left == 0:
                call.done()

    def _fail_all(self, exc: BaseException, tasks: list[_Task]) -> None:
        """A failed step ends every request in the loop: each caller gets the error."""
        error = exc if isinstance(exc, (GenerationError, UserError)) else GenerationError(f"llama.cpp: {exc}")
        calls = {id(s.job.call): s.job.call for s in self._live}
        with self._wake:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            calls.update({id(job.call): job.call for job in self._waiting})
            self._waiting, self._live = [], []
        for call in calls.values():
            call.error = error
            call.done()
        for task in tasks:
            if task.result is None and task.error is None:  # not run yet
                task.error = error
                task.done()
        self.free_context()

    def cap(self, prompt_len: int, p: SamplingParams) -> int:
        """Most tokens a completion may have: `max_new_tokens`, or what is left of n_ctx."""
        return min(p.max_new_tokens, self.n_ctx - prompt_len)

    def _feed(self, tokens: list[int], start: int, seq: int) -> np.ndarray:
        """Decode `tokens[start:]` into `seq`, one prompt at a time; return the last token's logits.

        llama.cpp computes a sequence's lone token in a ubatch with other kernels than a run of
        tokens, so no chunk holds a single token unless the prompt has one; with that, the logits do
        not depend on the other prompts or on how much was cached.
        """
        while True:
            end = min(len(tokens), start + _BATCH)
            end -= len(tokens) - end == 1
            self._decode([(tokens[i], i, seq, i == len(tokens) - 1) for i in range(start, end)])
            if end == len(tokens):
                return self._logits(end - 1 - start)[0].copy()
            start = end

    def _compact(self) -> None:
        """Swap the live sequences onto sequences 0 .. len(live) - 1, out of the way of finished ones.

        llama.cpp splits a batch into one ubatch per run of consecutive sequence ids, and each ubatch
        reads all weights again; copying streams is cheap next to that. Swapping, rather than
        overwriting, keeps finished streams for the cache.
        """
        n = len(self._live)
        taken = {s.seq for s in self._live}
        holes = [i for i in range(n) if i not in taken]
        spare = self._n_seq
        for hole, s in zip(holes, [s for s in self._live if s.seq >= n], strict=False):
            for src, dst in ((s.seq, spare), (hole, s.seq), (spare, hole)):  # run in this order
                lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            lc.llama_memory_seq_rm(self._mem, spare, -1, -1)
            self.cache.swapped(hole, s.seq)  # what the hole held now lies in s's old stream
            s.seq = hole
        self._live.sort(key=lambda s: s.seq)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        b = self._batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, out) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, out
            b.seq_id[i][0] = seq
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            self.free_context()
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def _logits(self, row: int | None, n: int = 1) -> np.ndarray:
        """Logits of batch row `row`, or of all `n` rows when every row is an output (a view)."""
        ptr = lc.llama_get_logits(self._ctx) if row is None else lc.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab))

    def _step(self, s: _Seq, logits: np.ndarray, p: SamplingParams, prompt_len: int) -> None:
        """Choose the next token of `s` and check the stop conditions."""
        x = logits.astype(np.float64)
        tok = next_token(x, p, s.rng)
        s.out.append(tok)
        if p.logprobs or p.top_logprobs or self._reuse_generated:
            norm = logsumexp(x)
            if self._reuse_generated:
                s.certainty.append(kl_uniform(x, norm))
            if p.logprobs:
                s.logprobs.append(float(x[tok] - norm))
            if p.top_logprobs:
                s.top.append([(self.model.token_text(t), float(x[t] - norm)) for t in top_k(x, p.top_logprobs)])
        if self.model.is_eog(tok):
            s.finish = "stop"
            return
        piece = self.model.piece(tok)
        s.data += piece
        if s.job.call.on_piece is not None:
            s.job.call.on_piece(piece)
        if p.stop:  # only the tail can hold a stop string completed by this token
            tail = bytes(s.data[-(len(piece) + 4 * max(map(len, p.stop))) :]).decode("utf-8", "ignore")
            if any(stop and stop in tail for stop in p.stop):
                s.finish = "stop"
                return
        if len(s.out) >= self.cap(prompt_len, p):
            s.finish = "length"

    def _completion(self, s: _Seq, p: SamplingParams) -> Completion:
        text, stop = truncate_at_stop(bytes(s.data).decode("utf-8", "replace"), p.stop)
        return Completion(
            text=text + stop if stop is not None and p.include_stop else text,
            tokens=len(s.out),
            finish_reason=s.finish or "length",
            stop_reason=stop,
            logprobs=list(s.logprobs) if p.logprobs else None,
            top_logprobs=[list(t) for t in s.top] if p.top_logprobs else None,
        )

    # ---------------------------------------------------------------- scoring given text

    def score_items(
        self, items: list[ScoreItem], statistic: str = "logprob"
    ) -> tuple[list[list[list[float]]], int, int]:
        """`score_text`'s work, run in the loop's thread: (values per piece, tokens read, tokens computed).

        The value of a token: its log-probability (`logprob`), or the self-certainty of the distribution it
        was read from (`certainty`, for `certainty_text`). Each item is read in a stream above the live
        sequences (generation fills streams from the bottom) and stays cached there with its values.
        """
        out: list[list[list[float]]] = []
        total = computed = 0
        free = self._n_seq - len(self._live)  # streams n_seq - 1, n_seq - 2, ... above the live ones
        for k, (head, tails, tokens) in enumerate(items):
            if len(tokens) == len(head):
                out.append([[] for _ in tails])
                continue
            drawn = self.drawn.lookup(tokens, len(head)) if statistic == "certainty" else None
            if drawn is not None and (len(tails) == 1 or len(drawn) == len(tokens) - len(head)):
                # generated here (reuse_generated): nothing to compute; one piece takes every drawn token's value
                out.append([drawn.tolist()] if len(tails) == 1 else self._split(drawn, tails))
                total += len(tokens)
                continue
            seq = self._n_seq - 1 - k % free
            scored, start = self.cache.reuse_scored(self._mem, tokens, seq, first_out=len(head) - 1,
                                                    statistic=statistic)
            while start < len(tokens):
                end = min(len(tokens), start + _BATCH)
                end -= len(tokens) - end == 1  # no lone token in a chunk (see _feed)
                want = [len(head) - 1 <= i < len(tokens) - 1 for i in range(start, end)]
                self._decode([(tokens[i], i, seq, want[i - start]) for i in range(start, end)])
                for i in (i for i in range(start, end) if want[i - start]):
                    x = self._logits(i - start)[0].astype(np.float64)
                    norm = logsumexp(x)
                    scored[i] = x[tokens[i + 1]] - norm if statistic == "logprob" else kl_uniform(x, norm)
                computed += end - start
                start = end
            self.cache.store_scored(seq, tokens, scored, statistic)
            total += len(tokens)
            out.append(self._split(scored[len(head) - 1 :], tails))
        return out, total, computed

    @staticmethod
    def _split(values: np.ndarray, tails: list[list[int]]) -> list[list[float]]:
        """Values of a continuation's tokens, in order, cut into its pieces."""
        split, at = [], 0
        for tail in tails:
            split.append(values[at : at + len(tail)].tolist())
            at += len(tail)
        return split
