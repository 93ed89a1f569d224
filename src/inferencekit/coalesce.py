"""Gather concurrent calls into one batched call: whatever is pending when the worker is free goes together.

Many problems' searches run at once, each asking for one thing at a time; a model works best on
batches. A `Coalescer` wraps a batch function: the first caller to find it idle runs every request
pending at that moment in one call (itself included) and hands each its result; requests arriving
meanwhile form the next batch. No thread of its own and no timer: while one batch runs, the next
fills up, so the batch size follows the load.
"""

from __future__ import annotations

import threading
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

    `max_items` bounds one batch (None: no bound). An exception from `run` goes to every caller of
    that batch.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_items: int | None = None) -> None:
        self._run = run
        self._max = max_items
        self._cv = threading.Condition()
        self._queue: list[_Pending[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        mine: _Pending[T, R] = _Pending(item)
        with self._cv:
            self._queue.append(mine)
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
                    cut = len(self._queue) if self._max is None else self._max
                    batch, self._queue = self._queue[:cut], self._queue[cut:]
                self._execute(batch)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return self._result(mine)

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
