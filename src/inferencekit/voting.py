"""Pick one answer from many candidates: aggregation of step scores, then a vote.

Answers are grouped by `canonical_form`, so "\\frac12" and "\\frac{1}{2}" count together. Ties go to the
group that appears first among the candidates, so every vote is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from inferencekit.errors import unknown
from inferencekit.grading import canonical_form
from inferencekit.registry import Registry

AGGREGATIONS = ("min", "last", "prod", "mean", "model")


def aggregate(step_scores: Sequence[float] | None, how: str) -> float:
    """One score for a solution from its step scores; NaN when there is no usable score.

    `model` means the reward model scored the whole solution as one step: its (last) score is used.
    NaN step scores are skipped; a solution with none left gets NaN, which every vote ranks last.
    """
    scores = [s for s in (step_scores or []) if s is not None and not math.isnan(s)]
    if not scores:
        return math.nan
    if how in ("last", "model"):
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    raise unknown("aggregation", how, AGGREGATIONS)


VoteFn = Callable[[Sequence[str | None], Sequence[Sequence[float] | None], str], str | None]
VOTES: Registry[VoteFn] = Registry("vote")
_NEEDS_SCORES: set[str] = set()


def register_vote(name: str, needs_scores: bool = False) -> Callable[[VoteFn], VoteFn]:
    """Register `fn(answers, step_scores, aggregation) -> answer` as a vote named `name`."""

    def wrap(fn: VoteFn) -> VoteFn:
        VOTES.add(name, fn)
        if needs_scores:
            _NEEDS_SCORES.add(name)
        return fn

    return wrap


def vote_names() -> list[str]:
    return VOTES.names()


def needs_scores(name: str) -> bool:
    return name in _NEEDS_SCORES


def vote(
    name: str,
    answers: Sequence[str | None],
    step_scores: Sequence[Sequence[float] | None] | None = None,
    aggregation: str = "last",
) -> str | None:
    """The answer that vote `name` picks; None when no candidate has an answer."""
    fn = VOTES.get(name)
    scores = step_scores if step_scores is not None else [None] * len(answers)
    return fn(answers, scores, aggregation)


def _weighted_groups(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """Answer whose group has the largest total weight (first-seen group wins ties)."""
    totals: dict[str, float] = {}
    first: dict[str, str] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is None or math.isnan(weight):
            continue
        key = canonical_form(answer)
        totals[key] = totals.get(key, 0.0) + weight
        first.setdefault(key, answer)
    if not totals:
        return None
    return first[max(totals, key=totals.__getitem__)]  # max keeps the first of equal keys: first-seen wins


@register_vote("majority")
def majority(answers, step_scores, aggregation):
    return _weighted_groups(answers, [1.0] * len(answers))


@register_vote("weighted", needs_scores=True)
def weighted(answers, step_scores, aggregation):
    return _weighted_groups(answers, [aggregate(s, aggregation) for s in step_scores])


def best_index(scores: Sequence[float], eligible: Sequence[bool] | None = None) -> int | None:
    """Index of the highest score, the earliest on ties; NaN scores and ineligible ones skipped (None: none left)."""
    ranked = [(s, -i) for i, s in enumerate(scores) if not math.isnan(s) and (eligible is None or eligible[i])]
    return -max(ranked)[1] if ranked else None


def same_answer(answers: Sequence[str | None], answer: str | None) -> list[bool]:
    """Which of `answers` are equivalent to `answer` (the grouping every vote uses); all False for None."""
    key = None if answer is None else canonical_form(answer)
    return [a is not None and key is not None and canonical_form(a) == key for a in answers]


@register_vote("best", needs_scores=True)
def best(answers, step_scores, aggregation):
    scores = [aggregate(s, aggregation) for s in step_scores]
    i = best_index(scores, [a is not None for a in answers])
    return None if i is None else answers[i]


@register_vote("min_vote", needs_scores=True)
def min_vote(answers, step_scores, aggregation):
    return weighted(answers, step_scores, "min")


@register_vote("last_vote", needs_scores=True)
def last_vote(answers, step_scores, aggregation):
    return weighted(answers, step_scores, "last")


@register_vote("borda", needs_scores=True)
def borda(answers, step_scores, aggregation, power: float = 0.5):
    """Self-certainty Borda voting (Kang et al. 2025, arXiv 2502.18581).

    The N candidates with a score are ranked by it, best first (ties in candidate order); rank r
    (1-based) gives (N - r + 1) ** power votes (power 0.5) to its answer, summed per equivalent answer.
    """
    scores = [aggregate(s, aggregation) for s in step_scores]
    ranked = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: -scores[i])
    votes = [0.0] * len(answers)
    for r, i in enumerate(ranked, start=1):
        votes[i] = (len(ranked) - r + 1) ** power
    return _weighted_groups(answers, votes)
