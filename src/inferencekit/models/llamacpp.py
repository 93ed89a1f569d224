"""llama.cpp backend: one decode loop, continuously batching every pending request, through llama.cpp's batch API.

Callers (`generate` from any thread, `agenerate` from any event loop) hand requests to one thread that
owns the llama.cpp context. At every step it admits waiting prompts into free sequences while
`max_batch_sequences` allows (each prompt evaluated once and its KV cache copied with
`llama_memory_seq_cp` to its samples), advances every live sequence one token in one `llama_decode`,
and retires finished ones, waking their callers: continuous batching, so the engine stays full while
work waits, and many problems' searches share every step. Sampling is done here in numpy: sample `j`
of a prompt draws only from `np.random.default_rng([seed, j])`, whatever else shares the batch.

Results are bit-identical whatever else shares the batch, whenever it was admitted, and
whether a prompt prefix came from the cache (the tests check this). That rules out three llama.cpp
settings, each of which changes a sequence's logits in the last bits, which this quantised model turns
into other tokens: a unified KV cache (the cell layout among other sequences changes the order of the
attention sums), CPU flash attention, and a sequence with a single token in a multi-token ubatch
(computed with other kernels). So each sequence has its own KV stream (`kv_unified=False`), flash
attention is off, and prompts are decoded one at a time in chunks of two tokens or more. Separate
streams also spare each query the other sequences' cells. Their cost is memory: each sequence reserves
a whole stream, so the context is sized to the calls' needs within `spec.extra["kv_cache_mib"]`
(default 2048), and sharing a prompt copies a stream (cheap next to decoding).

Streams stay cached after a call: a later prompt that starts with a cached prompt computes only the
rest (counted in `computed_prompt_tokens`), as tree search needs. So there may be more streams than
`max_batch_sequences`, which bounds only how many sequences decode together: a tree search round's
prompts, and the paths `score_text` read last round, stay cached side by side. `spec.extra["reuse_generated_kv"]`
also reuses generated tokens' KV: faster for tree search, but those were computed one token at a time,
so results then differ in the last bits from computing the same text as a prompt.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as lc
import numpy as np

from inferencekit.errors import UserError
from inferencekit.models.base import (
    USAGE_ACCOUNT,
    Completion,
    GenerationError,
    Generator,
    GeneratorSpec,
    Message,
    SamplingParams,
    Usage,
    UsageAccount,
    per_prompt_params,
    truncate_at_stop,
)

_BATCH = 512  # tokens per llama_decode call; prompts are fed in chunks of this size
_MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ
_PAD = 256  # llama.cpp pads each stream to a multiple of this


def resolve_gguf(spec: GeneratorSpec) -> Path:
    """The .gguf file a spec names: `path`, `path/gguf_file`, or the only .gguf inside `path`."""
    path = Path(spec.path).expanduser()
    if spec.gguf_file:
        path = path / spec.gguf_file
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one .gguf file, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
    return path


@dataclass
class _Call:
    """One caller's request: `params[i].n` completions of each prompt `toks[i]`, awaited by the caller."""

    toks: list[list[int]]
    params: list[SamplingParams]
    account: UsageAccount | None
    done: Callable[[], None]  # wakes the caller (an event's set, or a loop's call_soon_threadsafe)
    results: dict[tuple[int, int], Completion] = field(default_factory=dict)
    left: int = 0  # jobs not finished
    computed: int = 0
    error: BaseException | None = None
    start: float = field(default_factory=time.perf_counter)


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

    call: _Call
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
    data: bytearray = field(default_factory=bytearray)
    finish: str | None = None


class LlamaCppGenerator(Generator):
    """A GGUF model run by llama.cpp, decoding many sequences per step.

    Uses `spec.path` (a .gguf file, a folder holding one, or the folder of `spec.gguf_file`), `n_ctx`
    (per sequence), `max_batch_sequences`, `n_threads` (None: all cores) and `chat_template`.
    A completion's `tokens` include the EOS token that ended it, as do its `logprobs`.
    """

    name = "llamacpp"
    can_score_text = True  # score_text below

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        path = resolve_gguf(spec)
        self.spec = spec
        self.n_ctx = spec.n_ctx
        self._threads = spec.n_threads or os.cpu_count() or 1
        try:  # Llama gives model, tokenizer and metadata; its own small context stays unused
            self._llm = lc.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=self._threads, verbose=False)
        except ValueError as e:
            raise ValueError(f"{path}: llama.cpp could not load this GGUF model") from e
        model = self._llm.model
        self._vocab = lc.llama_model_get_vocab(model)
        self._n_vocab = self._llm.n_vocab()
        head_dim = lc.llama_model_n_embd(model) // max(1, lc.llama_model_n_head(model))
        cell_bytes = 4 * lc.llama_model_n_layer(model) * lc.llama_model_n_head_kv(model) * head_dim  # f16 K+V
        self._budget = int(spec.extra.get("kv_cache_mib", 2048)) * 2**20 // max(1, cell_bytes)
        self._ctx = None
        self._n_seq = self._per_seq = 0
        self._batch = lc.llama_batch_init(_BATCH, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._cache: dict[int, np.ndarray] = {}  # sequence -> the tokens its stream holds, to reuse
        self._scored: dict[int, np.ndarray] = {}  # sequence -> log-prob of each of its tokens after the first
        self._reuse_generated = bool(spec.extra.get("reuse_generated_kv", False))
        self._add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        self._bos = lc.llama_vocab_bos(self._vocab)
        self._template = spec.chat_template or self._llm.metadata.get("tokenizer.chat_template")
        self._formatters: dict[bool, object] = {}
        # the decode loop: callers hand jobs in through _inbox / _tasks under _wake; the loop's thread owns
        # the context, the streams and _waiting / _live, and holds _engine while it works
        self._wake = threading.Condition()
        self._engine = threading.RLock()
        self._inbox: list[_Job] = []
        self._tasks: list[_Task] = []
        self._waiting: list[_Job] = []
        self._live: list[_Seq] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self.max_live = 0  # most sequences decoded together so far (continuous batching at work)

    # ---------------------------------------------------------------- tokenizer and chat template

    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        add_bos = add_bos and self._add_bos
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if add_bos and len(tokens) > 1 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]  # the text (a rendered chat template) already starts with BOS
        return tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` itself: special-token text counts as one token each, no BOS is added."""
        return len(self._tokenize(text, add_bos=False))

    def _piece(self, token: int, special: bool = False) -> bytes:
        piece = None if special else self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = buf.raw[:n]
            if not special:
                self._pieces[token] = piece
        return piece

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the spec's template or the GGUF's `tokenizer.chat_template`."""
        if not self._template:
            raise ValueError(f"{self.spec.path} has no chat template; set chat_template in the model spec")
        fmt = self._formatters.get(add_generation_prompt)
        if fmt is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            special = (lc.llama_vocab_eos(self._vocab), self._bos)
            eos, bos = (self._piece(t, special=True).decode("utf-8", "replace") if t >= 0 else "" for t in special)
            fmt = Jinja2ChatFormatter(self._template, eos, bos, add_generation_prompt=add_generation_prompt)
            self._formatters[add_generation_prompt] = fmt
        return fmt(messages=list(messages)).prompt

    # ---------------------------------------------------------------- context

    def _ensure_context(self, seqs: int, per_seq: int) -> None:
        """Have a context with streams of at least `per_seq` cells and, budget allowing, `seqs` streams."""
        per = max(self._per_seq, min(-(-per_seq // _PAD) * _PAD, max(self.n_ctx, per_seq)))
        cap = max(1, min(_MAX_SEQ - 1, self._budget // per - 1))  # streams also cache: not bound to the batch width
        n_seq = min(max(seqs, 1), cap)
        if self._ctx and per <= self._per_seq and n_seq <= self._n_seq:
            return
        n_seq = max(n_seq, min(2 * self._n_seq, cap))  # grow in steps: a new context loses the cache
        self._free_context()
        cp = lc.llama_context_default_params()
        streams = n_seq + (n_seq > 1)  # one spare stream, for swaps (see _compact)
        cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = streams * per, streams, _BATCH, _BATCH
        cp.kv_unified, cp.flash_attn_type = False, 0  # see the module docstring
        cp.n_threads = cp.n_threads_batch = self._threads
        log = logging.getLogger("llama-cpp-python")  # its callback shows llama.cpp warnings as errors
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            self._ctx = lc.llama_init_from_model(self._llm.model, cp)
        finally:
            log.setLevel(level)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {streams} x {per} cells")
        self._n_seq, self._per_seq = n_seq, lc.llama_n_ctx_seq(self._ctx)
        self._mem = lc.llama_get_memory(self._ctx)

    def _free_context(self) -> None:
        with self._engine:
            if self._ctx:
                lc.llama_free(self._ctx)
            self._ctx, self._cache, self._scored = None, {}, {}

    # ---------------------------------------------------------------- requests

    def _prompt_tokens(self, prompts: Sequence[str]) -> list[list[int]]:
        toks = [self._tokenize(p, add_bos=True) or [self._bos] for p in prompts]
        for p, t in zip(prompts, toks, strict=True):
            if len(t) >= self.n_ctx:
                raise UserError(
                    f"a prompt of {len(t)} tokens does not fit the context of {self.n_ctx}: "
                    f"raise it with --model-arg n_ctx=N ({p[:40]!r}...)"
                )
        return toks

    def generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[Completion]]:
        """Submit all prompts to the decode loop as one request and wait for it (safe from many threads)."""
        plist = per_prompt_params(prompts, params)
        if not prompts:
            return []
        done = threading.Event()
        call = _Call(self._prompt_tokens(prompts), plist, USAGE_ACCOUNT.get(), done.set)
        self._submit(call)
        done.wait()
        return self._finish(call)

    async def agenerate(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """`params.n` completions of one prompt, decoded beside every other pending request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        call = _Call(self._prompt_tokens([prompt]), [params], USAGE_ACCOUNT.get(),
                     lambda: loop.call_soon_threadsafe(_resolve, future))
        self._submit(call)
        await future
        return self._finish(call)[0]

    def _submit(self, call: _Call) -> None:
        jobs = [_Job(call, i, list(range(1 if p.greedy else p.n))) for i, p in enumerate(call.params)]
        call.left = sum(len(job.js) for job in jobs)
        self._post(lambda: self._inbox.extend(jobs))

    def _post(self, add: Callable[[], None]) -> None:
        """Hand work to the decode loop (`add` queues it, under the loop's lock), starting the loop if idle."""
        with self._wake:
            if self._closed:
                raise RuntimeError("this llama.cpp generator is closed")
            add()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llamacpp-decode", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _finish(self, call: _Call) -> list[list[Completion]]:
        """The completions of a finished request, its work recorded to its caller's account."""
        if call.error is not None:
            raise call.error
        out = [
            [call.results.get((i, j)) or _copy(call.results[(i, 0)]) for j in range(p.n)]
            for i, p in enumerate(call.params)
        ]
        self._record(
            Usage(
                calls=1,
                prompt_tokens=sum(len(t) * p.n for t, p in zip(call.toks, call.params, strict=True)),
                computed_prompt_tokens=call.computed,
                completion_tokens=sum(c.tokens for cs in out for c in cs),
                seconds=time.perf_counter() - call.start,
            ),
            call.account,
        )
        return out

    def _run_in_loop(self, fn: Callable[[], object], per_seq: int, streams: int) -> object:
        """Run `fn` in the decode loop's thread, between two steps, once the context can hold it."""
        done = threading.Event()
        task = _Task(fn, per_seq, streams, done.set)
        self._post(lambda: self._tasks.append(task))
        done.wait()
        if task.error is not None:
            raise task.error
        return task.result

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
            with self._engine:
                try:
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
            per = len(job.toks) + self._cap(len(job.toks), job.params)
            if not self._live:  # a new context loses the live streams: only between them
                demand = sum(len(j.js) for j in self._waiting)
                self._ensure_context(max(demand, self.spec.max_batch_sequences), per)
            elif per > self._per_seq:
                return  # the live sequences drain first
            width = min(self._n_seq, self.spec.max_batch_sequences)
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
        sources = list(self._cache.items())
        sources += list({id(s.job): (s.seq, s.job.toks) for s in self._live}.values())
        prefix, src = 0, -1
        for seq, tokens in sources:
            n = min(_common_prefix(t, np.asarray(tokens)), len(t) - 2)  # see _feed: recompute >= 2 tokens
            if n > prefix:
                prefix, src = n, seq
        # cached streams in the job's way move to free streams above it (copies run in order at the next decode)
        end = first + len(job.js)
        free = [q for q in range(self._n_seq - 1, end - 1, -1) if q not in self._cache]
        for seq in range(first, end):
            if seq in self._cache and free:
                to = free.pop(0)
                lc.llama_memory_seq_cp(self._mem, seq, to, -1, -1)
                self._cache[to] = self._cache[seq]
                if seq in self._scored:
                    self._scored[to] = self._scored[seq]
            self._cache.pop(seq, None)
            self._scored.pop(seq, None)
        if src >= 0 and src != first:
            lc.llama_memory_seq_cp(self._mem, src, first, -1, -1)  # whole streams only
        lc.llama_memory_seq_rm(self._mem, first, prefix, -1)
        logits = self._feed(job.toks, prefix, first)
        job.call.computed += len(t) - prefix
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
        kept = {tuple(t) for t in self._cache.values()}
        for s in finished:
            call = s.job.call
            call.results[(s.job.prompt, s.j)] = self._completion(s, s.job.params)
            tokens = tuple(s.fed if self._reuse_generated else s.job.toks)
            if tokens not in kept:
                kept.add(tokens)
                self._cache[s.seq] = np.asarray(tokens)
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
        self._free_context()

    def _cap(self, prompt_len: int, p: SamplingParams) -> int:
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
            for entries in (self._cache, self._scored):  # what the hole held now lies in s's old stream
                if hole in entries:
                    entries[s.seq] = entries.pop(hole)
                else:
                    entries.pop(s.seq, None)
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
            self._free_context()
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def _logits(self, row: int | None, n: int = 1) -> np.ndarray:
        """Logits of batch row `row`, or of all `n` rows when every row is an output (a view)."""
        ptr = lc.llama_get_logits(self._ctx) if row is None else lc.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(n, self._n_vocab))

    def _step(self, s: _Seq, logits: np.ndarray, p: SamplingParams, prompt_len: int) -> None:
        """Choose the next token of `s` and check the stop conditions."""
        x = logits.astype(np.float64)
        tok = int(np.argmax(x)) if s.rng is None else _sample(x, p, s.rng)
        s.out.append(tok)
        if p.logprobs or p.top_logprobs:
            norm = _logsumexp(x)
            if p.logprobs:
                s.logprobs.append(float(x[tok] - norm))
            if p.top_logprobs:
                s.top.append([(self._token_text(t), float(x[t] - norm)) for t in _top_k(x, p.top_logprobs)])
        if lc.llama_vocab_is_eog(self._vocab, tok):
            s.finish = "stop"
            return
        piece = self._piece(tok)
        s.data += piece
        if p.stop:  # only the tail can hold a stop string completed by this token
            tail = bytes(s.data[-(len(piece) + 4 * max(map(len, p.stop))) :]).decode("utf-8", "ignore")
            if any(stop and stop in tail for stop in p.stop):
                s.finish = "stop"
                return
        if len(s.out) >= self._cap(prompt_len, p):
            s.finish = "length"

    def _token_text(self, token: int) -> str:
        """A token's text, "" for an end-of-generation token."""
        return "" if lc.llama_vocab_is_eog(self._vocab, token) else self._piece(token).decode("utf-8", "replace")

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

    def score_text(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None = None
    ) -> list[list[list[float]]]:
        """Log-probability of each token of each continuation given its prompt, per piece (for self_certainty).

        A continuation is a list of pieces (a solution's steps and separators), each tokenised on its
        own (no BOS) and appended to the prompt's tokens, as a search method appends a step; all of
        it is read in one pass. The work runs in the decode loop between two steps, in streams above
        the live sequences: scored sequences stay cached there (generation fills streams from the
        bottom) with their log-probabilities, so a continuation that extends one scored before (a tree
        search's child of its parent) computes only what is new, and a cached prompt is not computed
        again. The numbers are the same either way (see the module docstring). The work is added to
        `usage` when given (a reward model's), else to this generator's.
        """
        account = USAGE_ACCOUNT.get()
        items = []
        for prompt, pieces in zip(prompts, continuations, strict=True):
            head = self._tokenize(prompt, add_bos=True) or [self._bos]
            tails = [self._tokenize(piece, add_bos=False) for piece in pieces]
            tokens = head + [t for tail in tails for t in tail]
            if len(tokens) > self.n_ctx:
                raise ValueError(f"prompt and continuation of {len(tokens)} tokens do not fit n_ctx={self.n_ctx}")
            items.append((head, tails, tokens))
        per = max((len(tokens) for _, _, tokens in items), default=1)
        start = time.perf_counter()
        out, total, computed = self._run_in_loop(lambda: self._score_items(items), per, 2 * len(items))
        work = Usage(calls=1, prompt_tokens=total, computed_prompt_tokens=computed,
                     seconds=time.perf_counter() - start)
        if usage is None:
            self._record(work, account)
        else:
            usage.add(work)
        return out

    def _score_items(self, items: list[tuple[list[int], list[list[int]], list[int]]]):
        """`score_text`'s work, in the decode loop: (log-probs per piece, tokens read, tokens computed)."""
        out: list[list[list[float]]] = []
        total = computed = 0
        free = self._n_seq - len(self._live)  # streams n_seq - 1, n_seq - 2, ... above the live ones
        for k, (head, tails, tokens) in enumerate(items):
            if len(tokens) == len(head):
                out.append([[] for _ in tails])
                continue
            seq = self._n_seq - 1 - k % free
            scored, start = self._reuse_scored(tokens, seq, first_out=len(head) - 1)
            while start < len(tokens):
                end = min(len(tokens), start + _BATCH)
                end -= len(tokens) - end == 1  # no lone token in a chunk (see _feed)
                want = [len(head) - 1 <= i < len(tokens) - 1 for i in range(start, end)]
                self._decode([(tokens[i], i, seq, want[i - start]) for i in range(start, end)])
                for i in (i for i in range(start, end) if want[i - start]):
                    x = self._logits(i - start)[0].astype(np.float64)
                    scored[i] = x[tokens[i + 1]] - _logsumexp(x)
                computed += end - start
                start = end
            self._cache[seq], self._scored[seq] = np.asarray(tokens), scored
            total += len(tokens)
            split, at = [], len(head) - 1
            for tail in tails:
                split.append(scored[at : at + len(tail)].tolist())
                at += len(tail)
            out.append(split)
        return out, total, computed

    def _reuse_scored(self, tokens: list[int], seq: int, first_out: int) -> tuple[np.ndarray, int]:
        """Load into `seq` the longest cached prefix of `tokens` whose needed log-probabilities are known.

        Returns the log-probabilities known so far (entry i: of token i + 1; NaN where unknown) and the
        position where computing starts. Positions from `first_out` on need log-probabilities, so a
        stream without them (a generation's prompt) lends at most `first_out` positions, one with them
        as many as match; at least 2 tokens are always computed (see _feed).
        """
        t = np.asarray(tokens)
        scored = np.full(len(tokens) - 1, np.nan)
        best, src = 0, -1
        for other, cached in self._cache.items():
            match = _common_prefix(t, cached)
            n = min(match, first_out, len(tokens) - 2)
            known = self._scored.get(other)
            if known is not None and match - 1 > first_out:  # entry i needs tokens up to i + 1 to match
                reach = min(match - 1, len(known), len(tokens) - 2)
                if not np.isnan(known[first_out:reach]).any():
                    n = reach
            if n > best:
                best, src = n, other
        if src >= 0 and src != seq:
            lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
            lc.llama_memory_seq_cp(self._mem, src, seq, -1, -1)
        if src >= 0 and src in self._scored and best > first_out:
            scored[first_out:best] = self._scored[src][first_out:best]
        self._cache.pop(seq, None)
        self._scored.pop(seq, None)
        lc.llama_memory_seq_rm(self._mem, seq, best, -1)  # best is 0 when nothing matched
        return scored, best

    def close(self) -> None:
        """Stop the decode loop (after the work it holds), then free the llama.cpp context, batch and model."""
        with self._wake:
            self._closed = True
            thread = self._thread
            self._wake.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._engine:
            if getattr(self, "_batch", None) is not None:
                self._free_context()
                lc.llama_batch_free(self._batch)
                self._batch = None
                self._llm.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _copy(c: Completion) -> Completion:
    return Completion(
        c.text, c.tokens, c.finish_reason, c.stop_reason, None if c.logprobs is None else list(c.logprobs),
        None if c.top_logprobs is None else [list(t) for t in c.top_logprobs],
    )


def _logsumexp(x: np.ndarray) -> float:
    """log(sum(exp(x))), computed stably: a token's log-probability is its logit minus this."""
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


def _top_k(x: np.ndarray, k: int) -> list[int]:
    """Ids of the `k` largest logits, largest first (ties: lower id first)."""
    k = min(k, x.size)
    pool = np.argpartition(-x, k - 1)[:k]
    return pool[np.lexsort((pool, -x[pool]))].tolist()


def _sample(x: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Draw a token from logits `x` with temperature, top-k and top-p, using one uniform from `rng`."""
    u = rng.random()
    x = x / p.temperature
    z = np.exp(x - x.max())
    keep: np.ndarray | None = None  # token ids allowed, None: all
    if 0 < p.top_k < x.size:
        keep = np.argpartition(-x, p.top_k - 1)[: p.top_k]
    if p.top_p < 1:
        pool, total = keep, z.sum() if keep is None else z[keep].sum()
        if pool is None:  # sort only the likeliest tokens when they already hold top_p of the mass
            pool = np.argpartition(-x, 255)[:256] if x.size > 256 else np.arange(x.size)
            if z[pool].sum() < p.top_p * total:
                pool = np.arange(x.size)
        pool = pool[np.lexsort((pool, -x[pool]))]
        cum = np.cumsum(z[pool]) / total
        keep = pool[: int(np.searchsorted(cum, p.top_p)) + 1]
    if keep is not None:
        keep = np.sort(keep)
        cum = np.cumsum(z[keep])
        return int(keep[min(int(np.searchsorted(cum, u * cum[-1], side="right")), keep.size - 1)])
    cum = np.cumsum(z)
    return int(min(int(np.searchsorted(cum, u * cum[-1], side="right")), x.size - 1))
