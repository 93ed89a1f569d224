"""LLM-as-judge: a generator asked whether each step is correct; the score is its probability of "Yes"."""

from __future__ import annotations

import math

from inferencekit.errors import UserError
from inferencekit.models.base import Completion, SamplingParams, Timer, UsageAccount
from inferencekit.reward_models.base import RewardModel, ScoreItem
from inferencekit.reward_models.registry import register_format

JUDGE_TEMPLATE = (
    "Problem:\n{question}\n\nSolution so far:\n{previous}\n\nNext step:\n{step}\n\n"
    "Is this step correct? Answer Yes or No."
)


def p_yes(completion: Completion) -> float:
    """P("Yes") from a one-token greedy answer and its log-prob.

    Only the chosen token's log-prob is known, so: exp(lp) when it says Yes, 1 - exp(lp) when it says
    No (all remaining mass counted as Yes), and 0.5 for anything else. An approximation: the exact
    value would need the probability of the "Yes" token when it is not the one chosen.
    """
    answer = completion.text.strip().lower()
    prob = math.exp(completion.logprobs[0]) if completion.logprobs else 1.0
    if answer.startswith("yes"):
        return prob
    if answer.startswith("no"):
        return 1.0 - prob
    return 0.5


@register_format("llm_judge")
class LLMJudge(RewardModel):
    """A generator asked "Is this step correct? Answer Yes or No." per step; P(Yes) from its first token.

    All steps of all solutions go to the generator in one `generate` call (greedy, one new token,
    logprobs on); the prompt is the `template` rendered as a user turn with the generator's chat template.
    """

    needs_weights = False

    def load(self) -> None:
        if self.settings.generator is None:
            raise UserError("reward model format 'llm_judge' needs a generator (generator=...)")
        self.generator = self.settings.generator

    def configure(self, template: str = JUDGE_TEMPLATE, system_prompt: str | None = None) -> None:
        self.template = template
        self.system_prompt = system_prompt

    def prompt(self, question: str, previous: list[str], step: str) -> str:
        """The chat prompt asking about `step`."""
        shown = self.step_separator.join(previous) if previous else "(none)"
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.template.format(question=question, previous=shown, step=step)})
        return self.generator.chat_prompt(messages)

    def score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        prompts = [self.prompt(item.question, item.steps[:i], step) for item in items
                   for i, step in enumerate(item.steps)]
        if not prompts:
            return [[] for _ in items]
        params = SamplingParams(temperature=0.0, max_new_tokens=1, logprobs=True)
        account = UsageAccount()  # this call's own work, whatever runs beside it
        with Timer() as timer:
            completions = self.generator.bind(account).generate(prompts, params)
        work = account.generator
        # The judge's calls are reward-model work: move them off the generator's account.
        self.generator._unrecord(work)
        work.calls, work.seconds = 1, timer.seconds
        self.usage.add(work)
        flat = iter(p_yes(c[0]) for c in completions)
        return [[next(flat) for _ in item.steps] for item in items]
