"""`inferencekit evaluate`: re-grade and re-vote a stored run from its candidates, without any model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferencekit.config import config_from_dict
from inferencekit.errors import UserError
from inferencekit.grading import Grader
from inferencekit.results.evaluate import check_votes, compute_metrics, grade_records
from inferencekit.results.store import RunStore, write_atomic


def reevaluate(
    run_dir: str | Path,
    votes: str | list[str] | None = None,
    aggregation: str | None = None,
    box_match: str | None = None,
    grader: str | None = None,
) -> dict[str, Any]:
    """Recompute answers, votes, correctness and metrics of a run; rewrite its predictions and metrics."""
    store = RunStore(run_dir)
    config = config_from_dict(store.read_config(), f"{store.path}/config.yaml")
    changes = {"votes": votes, "aggregation": aggregation, "box_match": box_match, "grader": grader}
    config = config_from_dict({**config.model_dump(), **{k: v for k, v in changes.items() if v is not None}})
    vote_list, aggregation, box_match = config.votes, config.aggregation, config.box_match
    records = store.records()
    if not records:
        raise UserError(f"{store.path} has no finished samples to evaluate")
    check_votes(vote_list, has_scores=all(c.get("step_scores") for r in records for c in r["candidates"]))
    style = records[0].get("style") or ("gsm8k" if "gsm8k" in config.dataset else "math")
    with Grader(workers=config.grading_workers, timeout=config.grading_timeout) as grader:
        grade_records(records, grader, style=style, votes=vote_list, aggregation=aggregation, box_match=box_match,
                      engine=config.grader)
    write_atomic(store.predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    metrics = compute_metrics(records, vote_list, aggregation, seed=config.seed)
    metrics["box_match"] = box_match
    metrics["grader"] = config.grader
    store.write_metrics(metrics)
    return metrics

