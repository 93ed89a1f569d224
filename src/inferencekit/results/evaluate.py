"""Grade candidates, vote, and compute a run's metrics; the same code serves live runs and re-evaluation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

from inferencekit.grading import Grader, canonical_form
from inferencekit.results.accounting import compute_summary
from inferencekit.results.health import health, unclosed_think
from inferencekit.results.metrics import accuracy, pass_at_k, powers_of_two, sum_usage
from inferencekit.results.records import CandidateRecord, Record
from inferencekit.voting import needs_scores, vote, vote_names

CURVE_DRAWS = 256  # k-subsets per k for maj@k / weighted@k: all of them when there are at most this many


def grade_records(
    records: Sequence[Record],
    grader: Grader,
    *,
    style: str,
    votes: Sequence[str],
    aggregation: str,
    box_match: str = "last",
    engine: str = "inferencekit",
) -> None:
    """Fill, in place, each candidate's `answer` and `correct`, and each record's `predictions` and `correct`."""
    grade_candidates(records, grader, style=style, box_match=box_match, engine=engine)
    apply_votes(records, votes, aggregation)


def grade_candidates(
    records: Sequence[Record], grader: Grader, *, style: str, box_match: str = "last",
    engine: str = "inferencekit",
) -> None:
    """Fill each candidate's extracted `answer`, `unclosed_think` and `correct`, all from the grader's workers.

    `engine`: "inferencekit" (default) or "math-verify" (plain math-verify, the `grader` setting).
    """
    items = [(cand.text, record.reference, style) for record in records for cand in record.candidates]
    outcomes = iter(grader.extract_and_grade_many(items, box_match=box_match, engine=engine))
    for record in records:
        for cand in record.candidates:
            cand.answer, cand.correct = next(outcomes)
            cand.unclosed_think = unclosed_think(cand.text)


def apply_votes(records: Sequence[Record], votes: Sequence[str], aggregation: str) -> None:
    """Fill each record's `predictions` and `correct` per vote from its graded candidates (failed ones: none)."""
    for record in records:
        if record.failed:
            continue
        cands = record.candidates
        answers = [c.answer for c in cands]
        scores = [c.step_scores for c in cands]
        record.predictions = {v: vote(v, answers, scores, aggregation) for v in votes}
        # A vote returns one candidate's answer; its group's graded candidates say whether it is right
        # (under --box-match any, a candidate can be right through an earlier box).
        record.correct = {
            name: any(c.correct for c in cands if _same(c.answer, prediction))
            for name, prediction in record.predictions.items()
        }


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and canonical_form(a) == canonical_form(b)


def compute_metrics(
    records: Sequence[Record], votes: Sequence[str], aggregation: str, seed: int = 0
) -> dict[str, Any]:
    """Per-vote accuracy with 95% interval over the problems that ran (failed ones counted beside it),
    scaling curves for k = 1, 2, 4, ... <= N, truncation and failure counts, usage and compute totals."""
    ran = [r for r in records if not r.failed]
    failed = len(records) - len(ran)
    metrics: dict[str, Any] = {"n_samples": len(ran), "failed": failed, "aggregation": aggregation, "votes": {}}
    for name in votes:
        metrics["votes"][name] = {**accuracy([bool(r.correct.get(name)) for r in ran]), "failed": failed}
    n_min = min((len(r.candidates) for r in ran), default=0)
    if n_min > 1:
        metrics["curves"] = scaling_curves(ran, n_min, aggregation, seed)
    metrics["health"] = health(records)
    metrics["usage"] = sum_usage(records)  # failed problems' work was spent too
    n = len(ran) or 1
    metrics["usage"]["completion_tokens_per_sample"] = round(metrics["usage"].get("completion_tokens", 0) / n, 2)
    metrics["compute"] = compute_summary(metrics["usage"], len(ran))
    return metrics


def scaling_curves(records: Sequence[Record], n: int, aggregation: str, seed: int = 0) -> dict[str, Any]:
    """pass@k (exact unbiased estimator), maj@k and weighted@k (mean over the k-subsets of the N samples:
    every one when there are at most CURVE_DRAWS, else CURVE_DRAWS random ones)."""
    ks = powers_of_two(n)
    has_scores = all(c.step_scores for r in records for c in r.candidates[:n])
    curves: dict[str, dict[str, float]] = {"pass@k": {}, "maj@k": {}}
    if has_scores:
        curves["weighted@k"] = {}
    rng = random.Random(seed)
    for k in ks:
        pass_k, maj_k, weighted_k = [], [], []
        for record in records:
            cands = record.candidates[:n]
            pass_k.append(pass_at_k(n, sum(bool(c.correct) for c in cands), k))
            maj_k.append(_subset_vote_accuracy(cands, k, "majority", aggregation, rng))
            if has_scores:
                weighted_k.append(_subset_vote_accuracy(cands, k, "weighted", aggregation, rng))
        curves["pass@k"][str(k)] = _mean(pass_k)
        curves["maj@k"][str(k)] = _mean(maj_k)
        if has_scores:
            curves["weighted@k"][str(k)] = _mean(weighted_k)
    return curves


def _subset_vote_accuracy(
    cands: list[CandidateRecord], k: int, how: str, aggregation: str, rng: random.Random
) -> float:
    right = {canonical_form(c.answer) for c in cands if c.correct and c.answer is not None}
    if math.comb(len(cands), k) <= CURVE_DRAWS:
        subsets = list(itertools.combinations(range(len(cands)), k))  # exact, in candidate order
    else:
        subsets = [rng.sample(range(len(cands)), k) for _ in range(CURVE_DRAWS)]
    hits = 0
    for subset in subsets:
        picked = [cands[i] for i in subset]
        answer = vote(how, [c.answer for c in picked], [c.step_scores for c in picked], aggregation)
        hits += answer is not None and canonical_form(answer) in right
    return hits / len(subsets)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


def check_votes(votes: Sequence[str], has_scores: bool) -> None:
    """Unknown votes, and votes that need reward scores on a run without them, are refused."""
    from inferencekit.errors import UserError, unknown

    for name in votes:
        if name not in vote_names():
            raise unknown("vote", name, vote_names())
    missing = [v for v in votes if needs_scores(v)]
    if missing and not has_scores:
        raise UserError(f"vote(s) {', '.join(missing)} need step scores: give --reward-model")
