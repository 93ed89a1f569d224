"""Self-Refine: answer, ask the model for feedback, revise (Madaan et al. 2023, arXiv 2303.17651).

Budget: `n` parallel chains per problem (Snell et al. 2024's parallel axis) of at most `refine_steps`
feedback-and-revise rounds each (the sequential axis). A chain starts with an answer to the problem's
prompt. Each round the model, shown the whole history (question, every draft and feedback so far, as
chat turns), gives feedback on its latest draft (FEEDBACK); a chain stops when the feedback says
"the solution is correct" (case and spacing ignored), else it writes a revision (REFINE). The
candidates are the chains' last drafts, voted over by `--vote`; `meta` holds the rounds and why the
chain stopped. The conversation is rebuilt from the question (with `system_prompt` and
`prompt_template`; worked examples of `--num-shots` only in the first answer's prompt). Tokens count
drafts and feedback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydantic import Field

from inferencekit.models.base import Message
from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult, register_method
from inferencekit.search.options import MAX_STEPS, MethodOptions
from inferencekit.search.samples import score_if_asked
from inferencekit.search.tree import node_seed

FEEDBACK = ("Review your solution above step by step and point out any mistake. "
            "If every step and the final answer are right, say exactly: The solution is correct.")
REFINE = ("Using this feedback, write an improved solution. Separate the steps with blank lines, and put "
          "your final answer within \\boxed{}.")
CORRECT = re.compile(r"\bthe solution is correct\b", re.IGNORECASE)


class Options(MethodOptions):
    refine_steps: int = Field(2, ge=0, le=MAX_STEPS, description="most feedback-and-revise rounds (default 2)")


@dataclass
class Chain:
    index: int
    turns: list[Message] = field(default_factory=list)  # assistant/user turns after the question
    draft: str = ""  # the latest answer
    feedbacks: int = 0
    tokens: int = 0
    finish_reason: str = "stop"
    stopped_by: str = "steps"


@register_method("self_refine")
class SelfRefine(SearchMethod):
    """Self-Refine: draft, self-feedback, revise until the feedback says correct; n chains and a vote."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        chains = [Chain(j) for j in range(self.config.n)]
        self.turn(problem, chains, [problem.prompt] * len(chains), draft=True)
        live = chains
        for _ in range(self.config.refine_steps):
            self.turn(problem, live, [self.render(problem, ch, FEEDBACK) for ch in live], draft=False)
            for ch in live:
                if CORRECT.search(ch.turns[-1]["content"]):
                    ch.stopped_by = "feedback"
            live = [ch for ch in live if ch.stopped_by != "feedback"]
            if not live:
                break
            self.turn(problem, live, [self.render(problem, ch, REFINE) for ch in live], draft=True)
        cands = [Candidate(text=ch.draft, tokens=ch.tokens, finish_reason=ch.finish_reason,
                           meta={"feedback_rounds": ch.feedbacks, "stopped_by": ch.stopped_by}) for ch in chains]
        score_if_asked(self.reward_model, problem, cands)
        return SearchResult(cands, sum(ch.tokens for ch in chains))

    def render(self, problem: Problem, chain: Chain, request: str) -> str:
        """The chat so far plus a new user turn, rendered with the model's template."""
        # imported on use: prompts loads the datasets and grading (sympy), and the config imports every method
        from inferencekit.prompts import DEFAULT_TEMPLATE

        messages: list[Message] = [{"role": "system", "content": self.config.system_prompt}] \
            if self.config.system_prompt else []
        question = (self.config.prompt_template or DEFAULT_TEMPLATE).format(input=problem.question)
        messages.append({"role": "user", "content": question})
        messages += chain.turns
        messages.append({"role": "user", "content": request})
        chain.turns.append({"role": "user", "content": request})
        return self.generator.chat_prompt(messages)

    def turn(self, problem: Problem, chains: list[Chain], prompts: list[str], draft: bool) -> None:
        """One assistant turn for every chain, in one generator call."""
        outs = self.generator.generate(prompts, [
            self.sampling_params(node_seed(problem.seed, (ch.index, len(ch.turns))), n=1) for ch in chains])
        for ch, (out,) in zip(chains, outs, strict=True):
            ch.turns.append({"role": "assistant", "content": out.text})
            ch.tokens += out.tokens
            if draft:
                ch.draft, ch.finish_reason = out.text, out.finish_reason
            else:
                ch.feedbacks += 1
