"""Chain of thought and best-of-N: sample whole solutions, optionally score them with a reward model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferencekit.search.base import Candidate, Problem, SearchMethod, register_method

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel


@register_method("best_of_n")
class BestOfN(SearchMethod):
    """N independent samples per problem; votes pick the answer. A reward model, if given, scores each."""

    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        params = [self.sampling_params(p.seed) for p in problems]
        outputs = self.generator.generate([p.prompt for p in problems], params)
        candidates = [
            [Candidate(text=c.text, tokens=c.tokens, finish_reason=c.finish_reason) for c in completions]
            for completions in outputs
        ]
        if self.reward_model is not None:
            score_candidates(self.reward_model, problems, candidates)
        return candidates


@register_method("cot")
class ChainOfThought(BestOfN):
    """One solution per problem (greedy at temperature 0); with --n N it is self-consistency."""


def score_candidates(reward_model: RewardModel, problems: list[Problem], candidates: list[list[Candidate]]) -> None:
    """Fill each candidate's step scores with one batched reward-model call.

    The reward model splits solutions into steps at its step separator (the policy model's setting).
    """
    solutions = [[c.text for c in cands] for cands in candidates]
    scores = reward_model.score([p.question for p in problems], solutions, prompts=[p.prompt for p in problems])
    for cands, per_problem in zip(candidates, scores, strict=True):
        for cand, step_scores in zip(cands, per_problem, strict=True):
            cand.step_scores = [float(s) for s in step_scores]

