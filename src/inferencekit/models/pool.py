"""A pool of replicas that is itself a `Generator`: HTTP endpoints or Ray actors behind one interface.

Every request goes to one replica, chosen by least outstanding requests under a bound per replica,
with affinity: requests carrying the same `Request.affinity` (one problem's samples and search
tree) stay on one replica while it is healthy, so its prefix cache keeps hitting; without that value,
the samples of one prompt do. A failed request is
retried (on another replica when there is a healthy one, else after exponential backoff with jitter,
or after the `Retry-After` the replica asked for); a replica that fails `fail_threshold` times in a
row is taken out for a cooldown that doubles on each relapse, and its problems move to the others.
After the last retry the request raises `GenerationError`.

Implementation detail: the pool runs its requests on its own event loop in a thread (`BackgroundLoop`), so
that the callers' threads (`submit` blocks until its requests are done) share one set of in-flight
requests; nothing outside this module sees that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from inferencekit.models.base import (
    Cancelled,
    Completion,
    GenerationError,
    Generator,
    GeneratorSpec,
    Request,
    SamplingParams,
    Usage,
)

log = logging.getLogger("inferencekit")
T = TypeVar("T")
_CLOSE_TIMEOUT = 5.0  # seconds


class ReplicaError(GenerationError):
    """One request to one replica failed. `retryable`: a connection error, timeout, 429 or 5xx (or a dead actor)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.timed_out = timed_out  # no answer in time: retried at most `RetryPolicy.max_timeout_retries` times


class Replica(ABC):
    """One server or actor. `request` makes a single attempt and raises `ReplicaError` when it fails."""

    name: str = "replica"
    honours_n: bool = True  # False: the replica returns one sample per request whatever `n` asks

    @abstractmethod
    async def request(self, prompt: str, params: SamplingParams) -> tuple[list[Completion], Usage]:
        """Completions of one prompt (up to `params.n`) and the work they took."""

    async def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    async def check(self) -> str | None:
        """None when the replica answers and serves the expected model, else a one-line reason."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections (on the pool's loop)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a failed request: `max_retries` more attempts, full-jitter exponential backoff.

    A request that timed out is retried at most `max_timeout_retries` times (a server that accepted it and
    never answered is unlikely to answer the next one), so it costs at most that many more timeouts.
    """

    max_retries: int = 5
    max_timeout_retries: int = 1
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0

    @classmethod
    def of(cls, spec: GeneratorSpec) -> RetryPolicy:
        """The policy a generator spec's model arguments set."""
        return cls(max_retries=spec.max_retries, base_delay=spec.retry_delay, max_timeout_retries=spec.timeout_retries)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based); a server's `Retry-After` wins."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class BackgroundLoop:
    """An event loop running in a daemon thread, for synchronous and foreign-loop callers alike."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._pending: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self.cancelled = False

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self.cancelled:
                coro.close()
                raise Cancelled("the run is stopping")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it (from any thread but the loop's own)."""
        try:
            return self._submit(coro).result()
        except concurrent.futures.CancelledError:
            raise Cancelled("the run is stopping") from None

    def cancel(self) -> None:
        """Cancel every coroutine in flight (their waiters raise `Cancelled` now) and refuse new ones."""
        with self._lock:
            self.cancelled = True
            pending = list(self._pending)
        for future in pending:
            future.cancel()  # the task on the loop is cancelled too: its HTTP request is dropped

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class _State:
    """Routing state of one replica."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.failures = 0  # in a row
        self.relapses = 0  # times taken out since the last success
        self.down_until = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class ReplicaPool(Generator):
    """Spreads requests over replicas; see the module docstring. Subclasses supply the chat template."""

    backend = "pool"

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        max_in_flight: int = 64,
        policy: RetryPolicy | None = None,
        fail_threshold: int = 3,
        cooldown: float = 30.0,
        affinity_memory: int = 100_000,
    ) -> None:
        super().__init__()
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        self.replicas = list(replicas)
        self.max_in_flight = max(1, max_in_flight)
        self.policy = policy or RetryPolicy()
        self.fail_threshold = max(1, fail_threshold)
        self.cooldown = cooldown
        self._states = [_State() for _ in self.replicas]
        self._affinity: OrderedDict[Hashable, int] = OrderedDict()
        self._affinity_memory = affinity_memory
        self._fan_out = not all(r.honours_n for r in self.replicas)
        self.requests_per_replica = [0] * len(self.replicas)  # attempts sent, for logs and tests
        self.failures_per_replica = [0] * len(self.replicas)
        self._loop = BackgroundLoop(f"inferencekit-{self.backend}")
        self._changed = asyncio.Event()  # replaced each time a slot frees or a replica's state changes

    # -- health ---------------------------------------------------------------------------------------

    def check_replicas(self) -> list[str]:
        """One line per replica that does not answer or serves another model (checked concurrently)."""

        async def check_all() -> list[str | None]:
            return await asyncio.gather(*(r.check() for r in self.replicas))

        return [f"{r.name}: {why}" for r, why in zip(self.replicas, self._loop.run(check_all()), strict=True) if why]

    # -- generation -----------------------------------------------------------------------------------

    def submit(self, requests: Sequence[Request]) -> list[list[Completion]]:
        async def all_requests() -> list[list[Completion]]:
            return await _all_or_none([self._samples(r) for r in requests])

        return self._loop.run(all_requests())

    def count_tokens(self, text: str) -> int:
        return self._loop.run(self._call(lambda r: r.count_tokens(text), None))

    async def _samples(self, request: Request) -> list[Completion]:
        """`params.n` completions: greedy once and copied; replicas that ignore `n` get one request per sample,
        sample k with seed `seed + k` (so which replica serves it does not change it)."""
        params = request.params
        if params.greedy:
            return (await self._request(request, params.replace(n=1))) * params.n
        got: list[Completion] = []
        if not self._fan_out:
            got = (await self._request(request, params))[: params.n]
            if len(got) == params.n:
                return got
            self._fan_out = True  # the server ignored n: from now on fan out from the start
        singles = [params.replace(n=1, seed=params.seed + k) for k in range(len(got), params.n)]
        rest = await _all_or_none([self._request(request, sp) for sp in singles])
        return got + [c for cs in rest for c in cs[:1]]

    async def _request(self, request: Request, params: SamplingParams) -> list[Completion]:
        # Without a problem to follow, a prompt's own samples still share one replica's prefix cache.
        key = request.affinity if request.affinity is not None else ("prompt", hash(request.prompt))
        completions, usage = await self._call(lambda r: r.request(request.prompt, params), key)
        self._record(usage, request.account)
        return completions

    async def _call(self, fn: Callable[[Replica], Awaitable[T]], affinity: Hashable | None) -> T:
        """Run `fn` on a replica, retrying per the policy; the last failure raises `GenerationError`."""
        avoid: int | None = None
        timeouts = 0
        for attempt in range(self.policy.max_retries + 1):
            i = await self._acquire(affinity, avoid)
            self.requests_per_replica[i] += 1
            try:
                result = await fn(self.replicas[i])
            except ReplicaError as exc:
                self._release(i, failed=exc)
                timeouts += exc.timed_out
                last = attempt == self.policy.max_retries or timeouts > self.policy.max_timeout_retries
                if not exc.retryable or last:
                    raise GenerationError(
                        f"{self.replicas[i].name}: {exc} (after {attempt + 1} attempt{'s' * (attempt > 0)})"
                    ) from exc
                log.warning("request to %s failed (%s); retrying", self.replicas[i].name, exc)
                avoid = i
                if not self._other_healthy(i):  # nowhere else to go: back off (or wait as asked)
                    await asyncio.sleep(self.policy.delay(attempt, exc.retry_after))
                continue
            except BaseException:  # cancelled (a sibling request failed for good), or not a replica's failure
                self._release(i, finished=False)
                raise
            self._release(i)
            return result
        raise AssertionError("unreachable")

    # -- routing --------------------------------------------------------------------------------------

    def _other_healthy(self, i: int) -> bool:
        now = time.monotonic()
        return any(s.healthy(now) for j, s in enumerate(self._states) if j != i)

    def _choose(self, affinity: Hashable | None, avoid: int | None) -> int | None:
        """The replica for a request, or None to wait for a free slot."""
        now = time.monotonic()
        indices = range(len(self.replicas))
        usable = [i for i in indices if i != avoid and self._states[i].healthy(now)]
        if not usable:  # all out: try the one back soonest rather than fail without trying
            others = [i for i in indices if i != avoid] or list(indices)
            usable = [min(others, key=lambda i: self._states[i].down_until)]
        if affinity is not None and self._affinity.get(affinity) in usable:
            i = self._affinity[affinity]
            self._affinity.move_to_end(affinity)
            return i if self._states[i].outstanding < self.max_in_flight else None
        free = [i for i in usable if self._states[i].outstanding < self.max_in_flight]
        if not free:
            return None
        i = min(free, key=lambda j: (self._states[j].outstanding, self.requests_per_replica[j]))
        if affinity is not None:
            self._affinity[affinity] = i
            self._affinity.move_to_end(affinity)
            while len(self._affinity) > self._affinity_memory:
                self._affinity.popitem(last=False)
        return i

    async def _acquire(self, affinity: Hashable | None, avoid: int | None) -> int:
        # Routing state lives on the pool's one loop thread: choosing and counting need no lock.
        while (i := self._choose(affinity, avoid)) is None:
            try:  # woken by a freed slot, or re-check when a replica's cooldown may have ended
                await asyncio.wait_for(self._changed.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
        self._states[i].outstanding += 1
        return i

    def _release(self, i: int, failed: ReplicaError | None = None, finished: bool = True) -> None:
        state = self._states[i]
        state.outstanding -= 1
        if not finished:
            pass
        elif failed is None:
            state.failures = state.relapses = 0
        elif failed.retryable:
            self.failures_per_replica[i] += 1
            state.failures += 1
            now = time.monotonic()
            if failed.retry_after is not None:  # asked to wait: send nothing there meanwhile
                state.down_until = max(state.down_until, now + min(failed.retry_after, self.policy.max_retry_after))
            if state.failures >= self.fail_threshold:
                pause = min(self.cooldown * 2**state.relapses, 600.0)
                state.down_until = max(state.down_until, now + pause)
                state.relapses += 1
                state.failures = 0
                log.warning("%s keeps failing (%s): taken out of the pool for %.0f s", self.replicas[i].name,
                            failed, pause)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def cancel(self) -> None:
        """Drop every request in flight (a hung server holds nothing) and refuse new ones: `Cancelled`."""
        super().cancel()
        self._loop.cancel()

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return

        async def close_all() -> None:
            await asyncio.gather(*(r.aclose() for r in self.replicas), return_exceptions=True)

        # bounded: closing connections to a server that hangs must not hold the exit
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(close_all(), _CLOSE_TIMEOUT), self._loop.loop)
        try:
            future.result()
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            log.warning("closing the connections timed out")
        self._loop.close()


async def _all_or_none(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in order; when one fails, the others are cancelled (their replica slots freed) first."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
