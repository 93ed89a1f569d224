"""What runs in one process share: loaded engines, one grader, one wall clock.

`inferencekit run` makes a `Session` for its one run; `inferencekit sweep` makes one for all its runs, so
each distinct generator and reward model is loaded once and the runs' problems, all in flight at once,
fill the same engines. Everything here is safe to use from many threads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inferencekit.grading import Grader
from inferencekit.models import Generator, GeneratorSpec, executor_args, load_generator

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel
    from inferencekit.reward_models.concurrent import SharedRewardModel

log = logging.getLogger("inferencekit")


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


class Session:
    """Engines loaded on first use and kept until `close`; one grader and one clock for all runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held while loading: two runs never load the same model twice
        self._generators: dict[str, Generator] = {}
        self._reward_models: dict[str, tuple[Any, Any]] = {}
        self._grader: _LockedGrader | None = None
        self.clock = SharedClock()
        self.loads = 0  # generators and reward models loaded so far

    def generator(self, spec: GeneratorSpec, config: Any) -> Generator:
        """The generator for `spec` run the way `config` says (executor, replicas); loaded on first use."""
        key = _key(dataclasses.asdict(spec), executor_args(config))
        with self._lock:
            if key not in self._generators:
                log.info("loading model %s (%s)", spec.path, spec.backend)
                self._generators[key] = load_generator(spec, **executor_args(config))
                self.loads += 1
            return self._generators[key]

    def reward_model(
        self, config: Any, generator: Generator
    ) -> tuple[RewardModel, SharedRewardModel] | tuple[None, None]:
        """(reward model, its thread-safe batching wrapper) for `config`, scoring with `generator` where its
        format reads the policy; (None, None) without one."""
        if config.reward_model is None:
            return None, None
        from inferencekit.reward_models import load_reward_model

        key = _key(config.reward_model, config.reward_model_args, config.step_separator, id(generator))
        with self._lock:
            if key not in self._reward_models:
                log.info("loading reward model %s", config.reward_model)
                model = load_reward_model(config.reward_model, step_separator=config.step_separator,
                                          generator=generator, **config.reward_model_args)
                self._reward_models[key] = (model, model.shared())
                self.loads += 1
            return self._reward_models[key]

    @contextmanager
    def grader(self, config: Any) -> Iterator[Any]:
        """The grader: the session's one worker pool (made with the first run's settings), calls taken in turn."""
        with self._lock:
            if self._grader is None:
                self._grader = _LockedGrader(Grader(workers=config.grading_workers, timeout=config.grading_timeout))
        yield self._grader

    def close(self) -> None:
        """Close every reward model, generator and the grader (reward models first: some use a generator)."""
        with self._lock:
            for model, _ in self._reward_models.values():
                model.close()
            for generator in self._generators.values():
                generator.close()
            if self._grader is not None:
                self._grader.close()
            self._reward_models.clear()
            self._generators.clear()
            self._grader = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LockedGrader:
    """A `Grader` whose calls run one at a time (its pool restarts are not safe from several threads)."""

    def __init__(self, grader: Grader) -> None:
        self._grader = grader
        self._lock = threading.Lock()

    def extract_and_grade_many(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._grader.extract_and_grade_many(*args, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._grader.close()


class SharedClock:
    """Wall time shared among the problems in flight: each is charged dt / (problems running) for every dt.

    So the problems' seconds add up to the wall time however many run at once (of one run, or of all runs of
    a sweep), and throughput (tokens per second) read from the records stays right.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._last = time.perf_counter()
        self._per_problem = 0.0  # seconds charged to each problem running since the start

    def _tick(self) -> float:
        now = time.perf_counter()
        if self._running:
            self._per_problem += (now - self._last) / self._running
        self._last = now
        return self._per_problem

    @contextmanager
    def share(self) -> Iterator[_Seconds]:
        seconds = _Seconds()
        with self._lock:
            start = self._tick()
            self._running += 1
        try:
            yield seconds
        finally:
            with self._lock:
                seconds.value = self._tick() - start
                self._running -= 1


@dataclass
class _Seconds:
    value: float = 0.0
