"""Run a sweep: every (cell, budget, seed) as a normal run, all at once through one session's engines.

Each run keeps its own problems in flight (its `concurrency`), and all runs go at the same time, so the
engines batch problems of many cells together and each distinct model is loaded once. The runs are
normal run folders: a rerun resumes each, and the recorded spec (`sweep.yaml`) refuses a changed one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferencekit.config import RunConfig, parse_shard
from inferencekit.errors import UserError
from inferencekit.runner import RunResult, check_resumable, check_run, run
from inferencekit.session import Session
from inferencekit.sweep.spec import SPEC, PlannedRun, SweepSpec, changed_keys, load_spec, plan, read_spec

# Runs in flight at once: with each run's own `concurrency` (default 16 problems) enough to fill an engine, yet
# few enough that each problem finishes soon (a stopped sweep loses only the problems in flight).
PARALLEL_RUNS = 4
log = logging.getLogger("inferencekit")


@dataclass
class SweepResult:
    folder: Path
    runs: list[RunResult]
    loads: int  # generators and reward models loaded
    seconds: float
    report: dict[str, Path] = field(default_factory=dict)  # frontier files (none for a shard)


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / SPEC).is_file()


def sweep(
    spec_path: str | Path,
    work_dir: str | Path = "results",
    shard: str | None = None,
    executor: str | None = None,
    replicas: int | None = None,
    show_progress: bool = True,
    parallel_runs: int = PARALLEL_RUNS,
) -> SweepResult:
    """Run (or resume) the sweep of `spec_path` in `<work_dir>/<name>/`; write the frontier files at the end.

    `parallel_runs` runs go at once (the next starts as one ends), their problems all in flight together.
    `shard="I/K"` runs the I-th of K slices of the sweep's runs (every K-th, in spec order); the frontier is
    then left to `inferencekit report SWEEP_DIR` once all K have finished.
    """
    spec = load_spec(spec_path)
    folder = Path(work_dir) / spec.name
    runtime = {k: v for k, v in {"executor": executor, "replicas": replicas}.items() if v is not None}
    _refuse_changed_spec(folder, spec)
    planned = _mine(_configs(spec, folder, runtime), shard)
    _record_spec(folder, spec)
    start = time.perf_counter()
    with Session() as session:
        results = _run_all(planned, session, show_progress, parallel_runs)
        loads = session.loads
    result = SweepResult(folder, results, loads, time.perf_counter() - start)
    if shard is None:
        from inferencekit.results.frontier import write_frontier

        result.report = write_frontier(folder)
    return result


def _configs(spec: SweepSpec, folder: Path, runtime: dict[str, Any]) -> list[tuple[PlannedRun, RunConfig]]:
    """Every run's config, checked before anything loads (a mistake names its cell)."""
    out = []
    for planned in plan(spec):
        config = planned.config(folder, runtime)
        try:
            check_run(config)
            check_resumable(config)  # a run folder with other settings: refused before hours of other runs
        except UserError as exc:
            raise UserError(f"cell {planned.cell!r}: {exc}") from None
        out.append((planned, config))
    return out


def _mine(runs: list[Any], shard: str | None) -> list[Any]:
    if shard is None:
        return runs
    i, k = parse_shard(shard)
    return runs[i - 1 :: k]


def _refuse_changed_spec(folder: Path, spec: SweepSpec) -> None:
    """Refuse a spec that changed since the sweep began, naming the keys."""
    if (folder / SPEC).is_file() and (changed := changed_keys(read_spec(folder), spec)):
        raise UserError(f"{folder} holds sweep {spec.name!r} run with another spec ({'; '.join(changed)}); "
                        "give the sweep another name or --work-dir to keep both")


def _record_spec(folder: Path, spec: SweepSpec) -> None:
    """Record the spec the sweep runs with (checked by `_refuse_changed_spec` first)."""
    path = folder / SPEC
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec.model_dump(), sort_keys=False, allow_unicode=True)
    # a temporary file of its own: the K jobs of a sharded sweep may write this file at the same time
    tmp = folder / f".{SPEC}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _run_all(planned: list[tuple[PlannedRun, RunConfig]], session: Session, show_progress: bool, parallel_runs: int
             ) -> list[RunResult]:
    """The runs, `parallel_runs` at once in threads sharing `session`; the first error is raised once the others
    are done."""
    if not planned:
        return []
    results: list[RunResult] = []
    errors: list[BaseException] = []
    if parallel_runs < 1:
        raise UserError(f"--parallel-runs must be at least 1 (got {parallel_runs})")
    with ThreadPoolExecutor(min(parallel_runs, len(planned)), thread_name_prefix="run") as pool:
        running: dict[Future, PlannedRun] = {pool.submit(run, c, True, False, session): p for p, c in planned}
        try:
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    planned_run = running.pop(future)
                    if (error := future.exception()) is not None:
                        errors.append(error)
                        continue
                    results.append(future.result())
                    if show_progress:
                        acc = {v: round(m["accuracy"], 3) for v, m in future.result().metrics["votes"].items()}
                        sys.stderr.write(f"[{len(results) + len(errors)}/{len(planned)}] {planned_run.exp_name}: "
                                         f"{acc}\n")
        except KeyboardInterrupt:
            # the runs' threads cannot be stopped; every finished problem is on disk already (a rerun resumes)
            sys.stderr.write("inferencekit: interrupted; rerun the same command to resume\n")
            sys.stderr.flush()
            os._exit(130)
    if errors:
        raise errors[0]
    return results
