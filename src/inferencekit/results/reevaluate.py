"""`inferencekit evaluate`: re-grade and re-vote a stored run from its candidates, without any model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferencekit.config import RunConfig
from inferencekit.errors import UserError
from inferencekit.grading import Grader
from inferencekit.results.evaluate import check_votes, compute_metrics, grade_records
from inferencekit.results.store import RunStore, write_atomic
from inferencekit.voting import AGGREGATIONS, vote_names


def reevaluate(
    run_dir: str | Path,
    votes: str | list[str] | None = None,
    aggregation: str | None = None,
    box_match: str | None = None,
) -> dict[str, Any]:
    """Recompute answers, votes, correctness and metrics of a run; rewrite its predictions and metrics."""
    store = RunStore(run_dir)
    config = RunConfig(**store.read_config())
    vote_list = RunConfig(votes=votes).votes if votes is not None else config.votes
    aggregation = aggregation or config.aggregation
    box_match = box_match or config.box_match
    for name in vote_list:
        if name not in vote_names():
            raise UserError(f"unknown vote {name!r}; accepted: {', '.join(vote_names())}")
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; accepted: {', '.join(AGGREGATIONS)}")
    if box_match not in ("last", "any"):
        raise UserError(f"unknown box match {box_match!r}; accepted: any, last")
    records = store.records()
    if not records:
        raise UserError(f"{store.path} has no finished samples to evaluate")
    check_votes(vote_list, has_scores=all(c.get("step_scores") for r in records for c in r["candidates"]))
    style = records[0].get("style") or ("gsm8k" if "gsm8k" in config.dataset else "math")
    with Grader(workers=config.grading_workers, timeout=config.grading_timeout) as grader:
        grade_records(records, grader, style=style, votes=vote_list, aggregation=aggregation, box_match=box_match)
    write_atomic(store.predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    metrics = compute_metrics(records, vote_list, aggregation, seed=config.seed)
    metrics["box_match"] = box_match
    store.write_metrics(metrics)
    return metrics

