"""The generator interface every backend implements, and the objects it exchanges.

A backend implements three methods: `submit` (N completions for each of a list of `Request`s: a prompt,
its `SamplingParams`, and as data whose account its work is counted in and which problem it serves),
`chat_prompt` (render messages with the model's chat template) and `count_tokens`. Callers use `generate`
(prompts in, completions out), which builds the requests; `bind(account, affinity)` gives a view of the
generator whose requests carry that account and affinity (the runner binds one per problem). It declares what
more it offers: `context_length` (prompt plus completion tokens it takes, None when unknown) and
`can_score_text` with `score_text` (the log-probabilities of given text, lm-eval's `loglikelihood`).
Everything a generation needs travels in one `SamplingParams`, as in vLLM.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from inferencekit.errors import UserError
from inferencekit.models.spec import GeneratorSpec  # noqa: F401 - re-exported: `models.base.GeneratorSpec`


@dataclass(frozen=True)
class SamplingParams:
    """All settings of one generation call.

    `temperature == 0` means greedy decoding (then all `n` samples are equal, so backends may decode
    one and copy it). `seed` makes sampling reproducible per prompt: a backend seeds each prompt's
    sampler from it, never from the batch it happens to sit in. `stop` strings end a completion and
    are not part of its text unless `include_stop` is set. `logprobs` asks for the log probability
    of every generated token; `top_logprobs = k` also for the k likeliest tokens at every position
    (vLLM's `logprobs=k`), which token-level search reads.
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    include_stop: bool = False
    seed: int = 0
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> SamplingParams:
        return replace(self, **changes)


@dataclass
class Completion:
    """One generated continuation.

    `finish_reason` is "stop" (EOS or a stop string), or "length" (hit `max_new_tokens`).
    `stop_reason` is the stop string that ended it, if any. `logprobs` holds one value per
    generated token when asked for. `top_logprobs` holds, per generated token, the likeliest tokens
    there as (text, log probability) pairs, best first; an end-of-sequence token's text is "".
    """

    text: str
    tokens: int
    finish_reason: str = "stop"
    stop_reason: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[str, float]]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Usage:
    """Work done by a generator or reward model.

    `prompt_tokens` counts prompt tokens sent; `computed_prompt_tokens` those actually run through
    the model (fewer when a prompt's cache is shared between samples or reused across calls).
    """

    calls: int = 0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: Usage) -> None:
        for name in ("calls", "prompt_tokens", "computed_prompt_tokens", "completion_tokens", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def since(self, before: Usage) -> Usage:
        """The work done between the snapshot `before` and now."""
        return Usage(**{k: getattr(self, k) - getattr(before, k) for k in self.__dataclass_fields__})

    def copy(self) -> Usage:
        return Usage(**asdict(self))

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass
class UsageAccount:
    """The work done for one problem (or any block of calls): its generator's and its reward model's."""

    generator: Usage = field(default_factory=Usage)
    reward_model: Usage = field(default_factory=Usage)


@dataclass
class Request:
    """One prompt to complete, with who asks as data: the backend adds the work done for it to its engine's
    total and to `account.generator` (when given); a pool of replicas keeps requests of one `affinity` (one
    problem's samples and search tree) on one replica while it is healthy, for its prefix cache."""

    prompt: str
    params: SamplingParams
    account: UsageAccount | None = None
    affinity: Hashable | None = None


class GenerationError(RuntimeError):
    """A generation that failed for good (after the backend's own retries): a server error, a timeout.

    The runner records the problem as failed (not wrong) and a resumed run retries it.
    """


class PromptTooLong(GenerationError):
    """A prompt that does not fit the model's context: that problem fails (recorded, retried), not the run."""


class Cancelled(GenerationError):
    """The run is stopping (`Generator.cancel`): the request was abandoned and its problem is not recorded."""


class Generator(ABC):
    """A language model that continues prompts.

    Subclasses set `backend` and implement `submit`, `chat_prompt` and `count_tokens`. `usage` accumulates
    over the generator's life; `bind(account)` gives a view whose calls are also counted in `account`. A
    backend that can score given text sets `can_score_text = True` and implements `score_text`; one that
    knows its context window overrides `context_length`.

    What a run records about the engine (`results/`) is declared here, with defaults, and read as
    attributes: `spec` (what it was built from), `engine_settings()` (settings that can change the bits
    it computes), `parameter_count()` (for FLOPs estimates) and `stream()` (text as it is produced).
    """

    backend: ClassVar[str] = "generator"  # the backend's registry name ("llamacpp", "hf", "openai", ...)
    spec: GeneratorSpec | None = None  # what it was built from; None for one built in code (a test's)
    can_score_text: ClassVar[bool] = False  # True: `score_text` is implemented (ask this, never probe)
    cancelled: bool = False  # set by `cancel`
    stream_chunk_tokens: ClassVar[int] = 8  # the default `stream`'s tokens per generate call
    # The registered backends whose generator declares a capability ("can_score_text"), for refusals that
    # name them. The backend registry (`models/backends.py`, which the `inferencekit.models` package imports
    # before any of its modules is used) installs its lookup here: this module does not import the registry.
    capable_backends: ClassVar[Callable[[str], list[str]]] = staticmethod(lambda capability: [])
    can_score_certainty: ClassVar[bool] = False  # True: `certainty_text` is implemented (full distributions)

    def __init__(self) -> None:
        self.usage = Usage()
        self._lock = threading.Lock()

    def generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[Completion]]:
        """Return `params.n` completions for each prompt, in prompt order.

        `params` is one object for all prompts or one per prompt (different seeds, say).
        Prompts are raw text: apply `chat_prompt` first for chat models. Safe from many threads.
        """
        return self._generate(prompts, params, None, None)

    def bind(self, account: UsageAccount | None = None, affinity: Hashable | None = None) -> Generator:
        """A view of this generator whose requests carry `account` (the work is counted there too) and
        `affinity`; everything else (the engine, its total `usage`) is this generator's."""
        return BoundGenerator(self, account, affinity)

    def _generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams],
        account: UsageAccount | None, affinity: Hashable | None,
    ) -> list[list[Completion]]:
        """One `generate` call: its requests submitted together, counted as one call (with its wall seconds)
        in the total and `account`; the backend counts each request's tokens."""
        requests = [Request(prompt, sp, account, affinity)
                    for prompt, sp in zip(prompts, per_prompt_params(prompts, params), strict=True)]
        if not requests:
            return []
        with Timer() as timer:
            out = self.submit(requests)
        self._record(Usage(calls=1, seconds=timer.seconds), account)
        return out

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """`request.params.n` completions for each request, in order; blocks until all are done.

        Every backend implements it (a test double may override `generate` instead). Each request's work
        (its prompt tokens sent and computed, its completion tokens; not `calls` or `seconds`, which
        `generate` counts per call) goes to this generator's total and to `request.account.generator`
        where there is one, exactly per request. Safe from many threads.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement submit")

    @abstractmethod
    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render a conversation with the model's chat template into prompt text."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens the model's tokenizer makes of `text`."""

    @property
    def context_length(self) -> int | None:
        """Most tokens of prompt plus completion the model takes at once; None when the backend cannot tell."""
        return None

    def engine_settings(self) -> dict[str, Any]:
        """Settings that can change the bits this engine computes (threads, dtype, KV layout, attention...),
        for the run's provenance record beside the spec's; this default knows none."""
        return {}

    def parameter_count(self) -> int | None:
        """The model's parameter count as the loaded engine knows it (FLOPs estimates); None when it cannot
        tell (a served model). `results.accounting` tries `spec.n_params` first and a GGUF header after."""
        return None

    def stream(self, prompt: str, params: SamplingParams, account: UsageAccount | None = None) -> Iterator[str]:
        """Yield the text of one completion (of `params` with `n=1`) as it is produced (its work also counted
        in `account`, when given).

        This default generates `stream_chunk_tokens` at a time, each chunk continuing the prompt plus the text so
        far (backends with a prefix cache, like llama.cpp's, recompute only the new tokens); a backend with a
        decode loop overrides it to yield each token's text.
        """
        generator = self if account is None else self.bind(account)
        text, left, step = "", params.max_new_tokens, 0
        while left > 0:
            size = min(self.stream_chunk_tokens, left)
            chunk = params.replace(n=1, max_new_tokens=size, seed=params.seed + step, stop=())
            completion = generator.generate([prompt + text], chunk)[0][0]
            piece, stop = truncate_at_stop(text + completion.text, params.stop)
            piece = piece[len(text) :]
            if completion.finish_reason == "length" and stop is None:
                piece = piece.rstrip("\ufffd")  # a character cut between chunks: the next chunk redoes it
            text += piece
            left -= completion.tokens
            step += 1
            if piece:
                yield piece
            if stop is not None or completion.finish_reason == "stop" or completion.tokens == 0:
                return

    def torch_model(self) -> tuple[Any, Any] | None:
        """(transformers model, tokenizer) when this backend runs one in this process, for reward models
        that read its logits directly (self_certainty on the hf backend); None otherwise."""
        return None

    def score_text(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None = None
    ) -> list[list[list[float]]]:
        """Log-probability of every token of each continuation given its prompt, per piece.

        Contract (backends with `can_score_text`): a continuation is a list of pieces (a solution's steps
        and separators); each piece is tokenised on its own (no BOS) and appended to the prompt's tokens
        (the prompt tokenised as `generate` does, BOS included where the model adds one). The result has
        one list per prompt, one list per piece, one float per token of that piece (`[]` for a piece of no
        tokens): the model's log-probability of the token given everything before it. Greedy-equivalent:
        no sampling, so equal inputs give equal numbers. Token accounting: one `Usage` per call, with
        `calls=1`, `prompt_tokens` = all tokens read (prompt and continuation), `computed_prompt_tokens` =
        those actually run (fewer where a cached prefix is reused), `completion_tokens=0` and the seconds;
        added to `usage` when given (a reward model's own account, so the work is not counted as
        generation), else to this generator's total (and a bound view's account, like `generate`).
        A prompt plus continuation longer than `context_length` raises `ValueError`.

        This default refuses: `UserError` naming the backends that can.
        """
        raise UserError(f"backend {self.backend!r} cannot score text; backends that can: "
                        f"{', '.join(self.capable_backends('can_score_text'))}")

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        """Kang et al. 2025's per-token self-certainty of each response given its prompt, from the FULL
        next-token distribution: for each response token t, KL(U || p_t) = -(1/V) sum_j log(V p_t(j)) over
        all V vocabulary entries (p_t: the distribution the token was drawn from, given everything before it).

        Contract (backends with `can_score_certainty`): each response is tokenised on its own (no BOS) and
        appended to the prompt's tokens as `score_text` does; one list per prompt, one float per response
        token (`[]` for an empty response). No sampling; the work is counted as `score_text` counts it.
        This default refuses: `UserError` naming the backends that can.
        """
        raise UserError(f"backend {self.backend!r} cannot give full next-token distributions (self_certainty needs "
                        f"them); backends that can: {', '.join(self.capable_backends('can_score_certainty'))}; "
                        "mean_logprob needs only sampled-token log-probabilities")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""

    def cancel(self) -> None:
        """The run is stopping: abandon the requests in flight and refuse new ones; both raise `Cancelled`.

        Backends override it to stop their work promptly (a decode loop between two steps, HTTP requests at
        once); `close` still follows. This default only refuses new requests (see `_check_cancelled`).
        """
        self.cancelled = True

    def _check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("the run is stopping")

    def _record(self, usage: Usage, account: UsageAccount | None = None) -> None:
        """Add one request's work to the total and to its caller's account (None: the total only)."""
        with self._lock:
            self.usage.add(usage)
            if account is not None:
                account.generator.add(usage)

    def _record_scoring(self, work: Usage, usage: Usage | None) -> None:
        """Work of `score_text` or `certainty_text`: to `usage` when given (a reward model's), else this generator's."""
        if usage is None:
            self._record(work, None)
        else:
            usage.add(work)

    def _unrecord(self, usage: Usage) -> None:
        """Take work off the total (work done for someone else, e.g. a reward model using this generator)."""
        with self._lock:
            self.usage.add(Usage(**{k: -v for k, v in asdict(usage).items()}))


class BoundGenerator(Generator):
    """`Generator.bind`'s view: the same engine, its requests carrying an account and an affinity as data."""

    def __init__(self, inner: Generator, account: UsageAccount | None, affinity: Hashable | None) -> None:
        self.inner, self.account, self.affinity = inner, account, affinity
        self.backend = inner.backend  # type: ignore[misc] - the engine's
        self.spec = inner.spec
        self.can_score_text = inner.can_score_text  # type: ignore[misc] - the engine's capabilities
        self.can_score_certainty = inner.can_score_certainty  # type: ignore[misc]

    usage = property(lambda self: self.inner.usage)  # type: ignore[assignment] - the engine's
    cancelled = property(lambda self: self.inner.cancelled)  # type: ignore[assignment]
    context_length = property(lambda self: self.inner.context_length)  # type: ignore[assignment]

    def generate(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[Completion]]:
        return self.inner._generate(prompts, params, self.account, self.affinity)

    def bind(self, account: UsageAccount | None = None, affinity: Hashable | None = None) -> Generator:
        return self.inner.bind(account, affinity)

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        return self.inner.submit([replace(r, account=r.account or self.account, affinity=r.affinity if
                                          r.affinity is not None else self.affinity) for r in requests])

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self.inner.chat_prompt(messages, add_generation_prompt)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def torch_model(self) -> tuple[Any, Any] | None:
        return self.inner.torch_model()

    def engine_settings(self) -> dict[str, Any]:
        return self.inner.engine_settings()

    def parameter_count(self) -> int | None:
        return self.inner.parameter_count()

    def stream(self, prompt: str, params: SamplingParams, account: UsageAccount | None = None) -> Iterator[str]:
        return self.inner.stream(prompt, params, account=account or self.account)

    def score_text(
        self, prompts: Sequence[str], continuations: Sequence[Sequence[str]], usage: Usage | None = None
    ) -> list[list[list[float]]]:
        return self._scored(self.inner.score_text, prompts, continuations, usage)

    def certainty_text(
        self, prompts: Sequence[str], responses: Sequence[str], usage: Usage | None = None
    ) -> list[list[float]]:
        return self._scored(self.inner.certainty_text, prompts, responses, usage)

    def _scored(self, score: Any, prompts: Sequence[str], texts: Sequence[Any], usage: Usage | None) -> Any:
        """`score`'s result, its work counted in `usage` when given, else in the total and this view's account."""
        if usage is not None:
            return score(prompts, texts, usage=usage)
        work = Usage()
        out = score(prompts, texts, usage=work)
        self.inner._record(work, self.account)
        return out

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        """The engine is the owner's to close, not a view's."""


def per_prompt_params(
    prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
) -> list[SamplingParams]:
    """Expand one `SamplingParams` to one per prompt, checking a given list's length."""
    if isinstance(params, SamplingParams):
        return [params] * len(prompts)
    params = list(params)
    if len(params) != len(prompts):
        raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
    return params


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Cut `text` at the earliest stop string; return the kept text and the stop string found."""
    best: tuple[int, str] | None = None
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos != -1 and (best is None or pos < best[0]):
            best = (pos, s)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


class Timer:
    """Context manager measuring wall seconds."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def stream(generator: Generator, prompt: str, params: SamplingParams) -> Iterator[str]:
    """`generator.stream(prompt, params)`: the text of one completion as it is produced."""
    return generator.stream(prompt, params)
