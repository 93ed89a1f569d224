"""The batcher: gather concurrent calls into one batched call, whatever is pending when the worker is free.

The one batcher type of the request path (ARCHITECTURE.md): the hf backend's generation and the shared
reward model (`reward_models/concurrent.py`) sit behind one; Ray actors hand requests to their engine's.

Many problems' searches run at once, each asking for one thing at a time; a model works best on
batches. A `Coalescer` wraps a batch function: the first caller to find it idle runs every request
pending at that moment in one call (itself included) and hands each its result; requests arriving
meanwhile form the next batch. No thread of its own: while one batch runs, the next fills up, so the
batch size follows the load. With `linger`, a caller that finds it idle with less than a full batch
first waits while requests keep arriving (each within `linger` seconds of the last): when a batch
returns, its callers' next requests come a moment apart, and without the wait the first of them
would run alone while the rest queue behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class Coalescer(Generic[T, R]):
    """Calls `run(items) -> results` (one result per item, in order) on the items of concurrent callers.

    `max_items` bounds one batch's total `weight` (each item's weight is 1 unless given; None: no
    bound; an item heavier than the bound goes alone). An exception from `run` goes to every caller
    of that batch.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        max_items: int | None = None,
        *,
        weight: Callable[[T], int] | None = None,
        linger: float = 0.0,
    ) -> None:
        self._run = run
        self._max = max_items
        self._weight = weight or (lambda _: 1)
        self._linger = linger
        self._cv = threading.Condition()
        self._queue: list[_Pending[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        mine: _Pending[T, R] = _Pending(item)
        with self._cv:
            self._queue.append(mine)
            self._cv.notify_all()  # a lingering runner waits for arrivals
            while not mine.done:
                if not self._busy:
                    break
                self._cv.wait()
            else:
                return self._result(mine)
            self._busy = True
        try:
            while not mine.done:  # a bounded batch may not hold this caller's item: run until it is done
                with self._cv:
                    self._await_arrivals()
                    cut = self._cut()
                    batch, self._queue = self._queue[:cut], self._queue[cut:]
                self._execute(batch)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return self._result(mine)

    def _cut(self) -> int:
        """How many queued items the next batch takes: as many as fit `max_items`, at least one."""
        if self._max is None:
            return len(self._queue)
        total = 0
        for k, p in enumerate(self._queue):
            total += self._weight(p.item)
            if total > self._max:
                return max(1, k)
        return len(self._queue)

    def _await_arrivals(self) -> None:
        """With `linger`: wait (holding no batch) while requests keep arriving and the batch is not full."""
        deadline = time.monotonic() + 20 * self._linger  # a steady trickle must not hold the batch forever
        while self._linger > 0 and self._cut() == len(self._queue) and time.monotonic() < deadline:
            waiting = len(self._queue)
            if self._max is not None and sum(self._weight(p.item) for p in self._queue) >= self._max:
                return
            self._cv.wait(timeout=self._linger)
            if len(self._queue) == waiting:
                return

    def _execute(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = list(self._run([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - each caller re-raises it
            for p in batch:
                p.error = exc
        else:
            for p, r in zip(batch, results, strict=True):
                p.result = r
        with self._cv:
            for p in batch:
                p.done = True
            self._cv.notify_all()

    @staticmethod
    def _result(p: _Pending[T, R]) -> R:
        if p.error is not None:
            raise p.error
        return p.result  # type: ignore[return-value]
