"""Helpers shared by the methods that sample whole solutions (self_consistency, deepconf, budget_forcing,
self_refine): the answer a sample gives, and reward scores for finished candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferencekit.grading.style import AnswerStyle
from inferencekit.search.base import Candidate, Problem

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel


def answer_key(text: str, style: AnswerStyle) -> str | None:
    """The sample's answer in canonical form (equivalent answers compare equal), None when it has none."""
    # imported on use: grading loads sympy (seconds), and the config imports every method
    from inferencekit.grading import canonical_form, extract_answer

    answer = extract_answer(text, style)
    return None if answer is None else canonical_form(answer)


def score_if_asked(reward_model: RewardModel | None, problem: Problem, candidates: list[Candidate]) -> None:
    """With a reward model, fill every candidate's step scores in one call (as best_of_n does)."""
    if reward_model is not None:
        from inferencekit.search.sampling import score_candidates

        score_candidates(reward_model, problem, candidates)
