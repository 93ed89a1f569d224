"""`inferencekit evaluate`: re-grade and re-vote a stored run from its candidates, without any model.

A run folder always agrees with itself, so other settings are written beside it as a named
evaluation, `RUN/evaluations/<name>/`, laid out like a run folder (`config.yaml` with the changed
settings, `predictions.jsonl` re-graded, `metrics.json`, `evaluation.json` saying what changed), which
`report` lists and `compare` reads like any run. Only `in_place=True` re-grades the run itself: its
predictions, config and metrics are then rewritten as one change (`files.write_together`, finished by the
next command after a crash), holding the run folder's lock so that no `run` appends meanwhile.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inferencekit.config import RunConfig, config_from_dict
from inferencekit.errors import UserError
from inferencekit.files import write_atomic, write_together
from inferencekit.grading import Grader
from inferencekit.results.evaluate import check_votes, compute_metrics, grade_records
from inferencekit.results.lock import run_folder_lock, settle
from inferencekit.results.records import graded_style, lines
from inferencekit.results.store import (
    CONFIG,
    EVALUATIONS,
    METRICS,
    PREDICTIONS,
    RunStore,
)

EVALUATION = "evaluation.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._,=-]{0,99}")


@dataclass
class Evaluation:
    path: Path  # where it was written: the run itself (in place) or RUN/evaluations/<name>
    name: str | None
    changes: dict[str, Any]
    metrics: dict[str, Any]


def evaluation_name(changes: dict[str, Any]) -> str:
    """A folder name from the changed settings, e.g. `aggregation=last,votes=weighted`; `regrade` when none."""
    parts = []
    for key in sorted(changes):
        value = changes[key]
        text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}={text}")
    name = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", ",".join(parts)) or "regrade"
    return name[:100]


def evaluation_dirs(run_dir: str | Path) -> list[Path]:
    """A run's named evaluations (folders under `RUN/evaluations/` holding a config), by name."""
    root = Path(run_dir) / EVALUATIONS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / CONFIG).is_file())


def reevaluate(
    run_dir: str | Path,
    votes: str | list[str] | None = None,
    aggregation: str | None = None,
    box_match: str | None = None,
    grader: str | None = None,  # the grading engine, as the run-config key and `--grader` name it
    *,
    name: str | None = None,
    in_place: bool = False,
    **settings: Any,
) -> Evaluation:
    """Recompute answers, votes, correctness and metrics of a run with the given settings.

    `settings` are further run-config keys that grading reads (they pass through to the config, so
    an unknown key is a `UserError`). Without `in_place` the result goes to `RUN/evaluations/<name>`
    (name from the changed settings when not given) and the run's own files stay as they were.
    """
    if in_place and name:
        raise UserError("give either --in-place (re-grade the run itself) or --name (a separate evaluation)")
    if name is not None and not NAME_RE.fullmatch(name):
        raise UserError(f"evaluation name {name!r} must be letters, digits and . _ , = - (at most 100)")
    store = RunStore(run_dir)
    store.read_config()  # a UserError when it is no run folder, before any lock file is made in it
    settle(store.path)
    with run_folder_lock(store.path, "evaluate --in-place") if in_place else nullcontext():
        return _reevaluate(store, votes, aggregation, box_match, grader, name, in_place, settings)


def _reevaluate(store: RunStore, votes: Any, aggregation: str | None, box_match: str | None, engine: str | None,
                name: str | None, in_place: bool, settings: dict[str, Any]) -> Evaluation:
    old = config_from_dict(store.read_config(), f"{store.path}/{CONFIG}")
    asked = {"votes": votes, "aggregation": aggregation, "box_match": box_match, "grader": engine,
             **settings}
    config = config_from_dict({**old.model_dump(), **{k: v for k, v in asked.items() if v is not None}},
                              "evaluation settings")
    changes = {k: getattr(config, k) for k in asked if asked[k] is not None and getattr(config, k) != getattr(old, k)}
    records = store.records()
    if not records:
        raise UserError(f"{store.path} has no finished samples to evaluate")
    check_votes(config.votes, has_scores=all(r.has_scores for r in records))
    style = graded_style(records, config.dataset)
    with make_grader(config) as grader:  # the worker pool; `config.grader` names the engine
        grade_records(records, grader, style=style, votes=config.votes, aggregation=config.aggregation,
                      box_match=config.box_match, engine=config.grader)
    metrics = compute_metrics(records, config.votes, config.aggregation, seed=config.seed)
    metrics["box_match"] = config.box_match
    metrics["grader"] = config.grader
    text = lines(records)
    if in_place:
        # predictions, config and metrics change as one (a journal finishes it after a crash: files.recover)
        write_together(store.path, {PREDICTIONS: text, CONFIG: config.to_yaml(),
                                    METRICS: json.dumps(metrics, indent=2) + "\n"})
        return Evaluation(store.path, None, changes, metrics)
    name = name or evaluation_name(changes)
    out = RunStore(store.path / EVALUATIONS / name)
    out.path.mkdir(parents=True, exist_ok=True)
    write_atomic(out.path / PREDICTIONS, text)
    about = {"name": name, "of": "../..", "changes": changes,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_atomic(out.path / EVALUATION, json.dumps(about, indent=2) + "\n")
    write_together(out.path, {CONFIG: config.to_yaml(), METRICS: json.dumps(metrics, indent=2) + "\n"})
    return Evaluation(out.path, name, changes, metrics)


def make_grader(config: RunConfig) -> Grader:
    """The grader an evaluation uses (one place to pass grading settings through)."""
    return Grader(workers=config.grading_workers, timeout=config.grading_timeout)
