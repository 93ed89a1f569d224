"""Chain of thought and best-of-N: sample whole solutions, optionally score them with a reward model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult, register_method

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel


@register_method("best_of_n")
class BestOfN(SearchMethod):
    """N independent samples per problem; votes pick the answer. A reward model, if given, scores each."""

    def search(self, problem: Problem) -> SearchResult:
        (completions,) = self.generator.generate([problem.prompt], [self.sampling_params(problem.seed)])
        candidates = [Candidate(text=c.text, tokens=c.tokens, finish_reason=c.finish_reason) for c in completions]
        if self.reward_model is not None:
            score_candidates(self.reward_model, problem, candidates)
        return SearchResult(candidates)


@register_method("cot")
class ChainOfThought(BestOfN):
    """One solution per problem (greedy at temperature 0); with --n N it is self-consistency."""


def score_candidates(reward_model: RewardModel, problem: Problem, candidates: list[Candidate]) -> None:
    """Fill each candidate's step scores with one reward-model call.

    The reward model splits solutions into steps at its step separator (the policy model's setting).
    """
    (scores,) = reward_model.score([problem.question], [[c.text for c in candidates]], prompts=[problem.prompt])
    for cand, step_scores in zip(candidates, scores, strict=True):
        cand.step_scores = [float(s) for s in step_scores]
