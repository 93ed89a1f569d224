"""Parallel grading in worker processes, with a time limit per item enforced from the parent."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from inferencekit.grading.equivalence import GradingTimeout, is_equiv, math_verify_equiv, quick_equiv, time_limit
from inferencekit.grading.extract import gold_answer, quick_extract
from inferencekit.grading.grade import check_engine, grade_answer, needs_letter_search
from inferencekit.interrupt import on_hard_exit

# A job for a worker: ("equiv", pred, gold) compares two answers; ("grade", text, gold, style,
# box_match, engine) extracts the answer too. Either gives (answer or None, verdict).
Job = tuple
Outcome = tuple[str | None, bool]

_MAX_CHUNK = 32
# String rules run in the parent without a time limit only on answers this short; longer ones (a
# pathological output can nest \text{} 20,000 deep) go to the workers, whose time limits apply.
_QUICK_CHARS = 2000
_MAX_CRASHES = 3
_STARTUP_TIMEOUT = 120.0  # seconds for a fresh pool to import sympy/math-verify; not item time


def _warm_up() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides, and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The first parse builds math-verify's parser; doing it at worker start keeps it out of deadlines.
    math_verify_equiv("\\frac{1}{2}", "0.5")
    grade_answer("so the answer is $\\frac{1}{2}$.", "0.5")


def _ready() -> bool:
    return True


def _nothing() -> None:
    pass


def _do(job: Job) -> Outcome:
    if job[0] == "equiv":
        return job[1], is_equiv(job[1], job[2], timeout=None)
    return grade_answer(*job[1:])


def _work_chunk(jobs: list[Job], timeout: float, worker_timer: bool) -> list[Outcome | None]:
    """Worker side: each job under its own SIGALRM limit when ``worker_timer``; ``None`` when it failed."""
    results: list[Outcome | None] = []
    for job in jobs:
        try:
            with time_limit(timeout if worker_timer else None):
                results.append(_do(job))
        except (GradingTimeout, Exception):  # out of time, or a parser bug on odd input: not equal
            results.append(None)
    return results


def _quick_equiv(pred: str | None, gold: str) -> bool | None:
    """``quick_equiv`` for short answers; ``None`` (decide in a worker) for long ones."""
    if pred is not None and len(pred) + len(gold) > _QUICK_CHARS:
        return None
    return quick_equiv(pred, gold)


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (new workers fork from a server that preloaded math-verify)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["inferencekit.grading.pool"])
        return ctx
    return multiprocessing.get_context("spawn")


class Grader:
    """A process pool for grading many items in parallel, each limited to ``timeout`` seconds.

    Use as a context manager (or call ``close``). Cheap decisions (exact/canonical matches, missing
    answers) are made in the calling process; the rest goes to workers in chunks. Inside a worker
    each item has a SIGALRM limit of ``timeout``; the parent also gives each chunk a deadline of
    ``timeout`` per item plus a margin, and when one passes (code that ignores signals) it kills
    the pool, starts a new one, and retries that chunk's items one at a time: an item that still
    runs out of time counts as ``False``. ``worker_timer=False`` leaves only the parent's deadline.
    Results always come back in input order.

    Workers start with forkserver (spawn where that is missing), so a script that uses a Grader
    needs the usual ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        *,
        chunk_size: int | None = None,
        worker_timer: bool = True,
    ) -> None:
        self.workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        self.timeout = float(timeout)
        self.chunk_size = chunk_size
        self.worker_timer = worker_timer
        self.restarts = 0  # how many times a stuck pool was killed and replaced
        self._pool: ProcessPoolExecutor | None = None
        self._forget_on_exit: Callable[[], None] = _nothing

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        """Shut the worker processes down: after their current items, or at once with ``kill``."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if kill:
                _kill(pool)
            else:
                pool.shutdown(wait=True, cancel_futures=True)
            self._forget_on_exit()

    def is_equiv_many(self, pairs: list[tuple[str | None, str]]) -> list[bool]:
        """``is_equiv`` over ``(pred, gold)`` pairs, in parallel, in input order."""
        results: list[bool] = []
        todo: list[tuple[int, Job]] = []
        for i, (pred, gold) in enumerate(pairs):
            quick = _quick_equiv(pred, str(gold))
            results.append(bool(quick))
            if quick is None:
                todo.append((i, ("equiv", str(pred), str(gold))))
        for (i, _), outcome in zip(todo, self._run([job for _, job in todo]), strict=True):
            results[i] = outcome is not None and outcome[1]
        return results

    def grade_many(
        self, items: list[tuple[str, str, str]], box_match: str = "last", engine: str = "inferencekit"
    ) -> list[bool]:
        """``grade`` over ``(text, gold, style)`` items, in parallel, in input order.

        ``engine="math-verify"`` grades with plain math-verify (same workers and time limits).
        """
        return [verdict for _, verdict in self.extract_and_grade_many(items, box_match, engine)]

    def extract_and_grade_many(
        self, items: list[tuple[str, str, str]], box_match: str = "last", engine: str = "inferencekit"
    ) -> list[tuple[str | None, bool]]:
        """``(extracted answer, verdict)`` per ``(text, gold, style)`` item, in input order.

        Answers settled by a box or ``####`` are compared here when string rules decide (no worker);
        the rest, and every item under ``engine="math-verify"``, is extracted and graded in the workers.
        An item that runs out of time is wrong, with the cheaply found answer (or ``None``).
        """
        check_engine(engine)
        results: list[tuple[str | None, bool]] = []
        jobs: list[Job] = []
        owners: list[tuple[int, int]] = []  # (item, candidate number) of each job
        for i, (text, gold, style) in enumerate(items):
            if engine == "inferencekit":
                gold = gold_answer(str(gold), style)
                settled, answers = quick_extract(text, style, box_match)
                settled = settled and not needs_letter_search(answers, gold)
            else:  # plain math-verify reads the gold and extracts the answer itself, in a worker
                gold, settled, answers = str(gold), False, []
            results.append((answers[0] if answers else None, False))
            if not settled:
                jobs.append(("grade", text, gold, style, box_match, engine))
                owners.append((i, -1))
                continue
            for k, answer in enumerate(answers):
                quick = _quick_equiv(answer, gold)
                if quick:
                    results[i] = (results[i][0], True)
                    break
                if quick is None:
                    jobs.append(("equiv", answer, gold))
                    owners.append((i, k))
        for (i, k), outcome in zip(owners, self._run(jobs), strict=True):
            if outcome is None:
                continue
            answer, verdict = outcome
            if k == -1:
                results[i] = (answer, verdict)
            elif verdict:
                results[i] = (results[i][0], True)
        return results

    # -- pool management -------------------------------------------------------------------------

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_mp_context(), initializer=_warm_up)
            # one task per worker makes the pool start (and warm up) all its processes now
            warm = [pool.submit(_ready) for _ in range(self.workers)]
            done, not_done = wait(warm, timeout=_STARTUP_TIMEOUT)
            if not_done or any(f.exception() is not None for f in done):
                _kill(pool)
                raise RuntimeError("grading worker processes failed to start")
            self._pool = pool
            # a second Ctrl-C exits without unwinding: the workers must not outlive this process
            self._forget_on_exit = on_hard_exit(lambda: _signal_all(pool, signal.SIGKILL))
        return self._pool

    def _restart(self) -> None:
        self.close(kill=True)
        self.restarts += 1

    def _deadline(self, n_items: int) -> float:
        margin = min(self.timeout, 1.0) if self.worker_timer else 0.0
        return time.monotonic() + self.timeout * n_items + margin

    def _run(self, pairs: list[Job]) -> list[Outcome | None]:
        results: list[Outcome | None] = [None] * len(pairs)
        if not pairs:
            return results
        size = self.chunk_size or max(1, min(_MAX_CHUNK, math.ceil(len(pairs) / (self.workers * 4))))
        queue: deque[list[int]] = deque(
            list(range(start, min(start + size, len(pairs)))) for start in range(0, len(pairs), size)
        )
        crashes: dict[int, int] = {}  # item -> times it was in a chunk whose worker died
        # at most one chunk per worker in flight, so a chunk's clock starts when its work does
        in_flight: dict[Future, tuple[list[int], float]] = {}
        while queue or in_flight:
            pool = self._ensure_pool()
            while queue and len(in_flight) < self.workers:
                chunk = queue.popleft()
                future = pool.submit(_work_chunk, [pairs[i] for i in chunk], self.timeout, self.worker_timer)
                in_flight[future] = (chunk, self._deadline(len(chunk)))
            next_deadline = min(deadline for _, deadline in in_flight.values())
            wait(list(in_flight), timeout=max(0.0, next_deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            broken = False
            for future in [f for f in in_flight if f.done()]:
                chunk, _ = in_flight.pop(future)
                try:
                    for i, verdict in zip(chunk, future.result(), strict=True):
                        results[i] = verdict
                except BrokenProcessPool:
                    # a worker died (killed, out of memory): we cannot tell which item did it
                    broken = True
                    for i in chunk:
                        crashes[i] = crashes.get(i, 0) + 1
                    retry = [i for i in chunk if crashes[i] < _MAX_CRASHES]
                    queue.extendleft([i] for i in reversed(retry))
            now = time.monotonic()
            expired = [f for f, (_, deadline) in in_flight.items() if deadline <= now]
            if expired or broken:
                for future in expired:
                    chunk, _ = in_flight.pop(future)
                    # retry items one at a time so only the culprit pays; a lone item stays False
                    if len(chunk) > 1:
                        queue.extendleft([i] for i in reversed(chunk))
                for chunk, _ in in_flight.values():
                    queue.appendleft(chunk)  # bystanders: run again as they were
                in_flight.clear()
                self._restart()
        return results


def _signal_all(pool: ProcessPoolExecutor, signum: int) -> None:
    """Send `signum` to a pool's worker processes (safe in a signal handler: no locks, no waiting)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.pid is not None:
            try:
                os.kill(process.pid, signum)
            except OSError:  # already gone
                pass


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's processes (they may be stuck in code that ignores signals) and discard it."""
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
