"""Self-certainty: a reward-free step score from the policy's own token log-probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from inferencekit.errors import UserError
from inferencekit.reward_models.encoding import Encoded
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel

# `Generator.score_text`: token log-probs of each continuation (a list of pieces) given its prompt, per piece
TextScorer = Callable[..., list[list[list[float]]]]
LOGITS_CHUNK = 1024  # positions (over the batch) whose full-vocabulary logits exist at once


def mean_prob(logprobs: list[float]) -> float:
    """exp(mean log-prob): the geometric-mean probability of the tokens; NaN for none."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else math.nan


@register_format("self_certainty", "mean_logprob")
class SelfCertainty(TransformersRewardModel):
    """exp(mean log-prob) of each step's tokens given the question and the steps before it.

    The model: a transformers causal LM at `path`; else the generator's own `score_text` when it
    declares `can_score_text`; else the generator's in-process transformers model (`torch_model()`, hf).
    Scoring with the policy, the context is the policy's own prompt when the caller gives it (the
    search methods do); otherwise, and with a model at `path`, the question rendered as a user turn
    with the chat template (the generator's, else the tokenizer's, else raw text and the separator).
    """

    needs_weights = False
    uses_prompts = True  # with the policy itself (no `path`): steps are read after the policy's prompt
    policy_prompts: dict[str, str] = {}  # question -> the policy's prompt during one score() call (replaced)

    def load(self) -> None:
        gen = self.settings.generator
        self.text_scorer: TextScorer | None = None
        if self.settings.path:
            super().load()
        elif gen is not None and gen.can_score_text:
            self.text_scorer = gen.score_text
        elif gen is not None and (own := gen.torch_model()) is not None:
            self.model, self.tokenizer = own
            self.setup_model()
        else:
            backend = "no generator" if gen is None else f"backend {gen.name!r}"
            raise UserError(
                f"self_certainty needs a causal LM: a path to one, or a generator that can score text or runs "
                f"a transformers model (llamacpp, hf); got {backend}"
            )

    def configure(self, system_prompt: str | None = None, chat_template: bool = True) -> None:
        self.system_prompt = system_prompt
        self.chat_template = chat_template

    def score(
        self, questions: Sequence[str], solutions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[list[list[float]]]:
        """As `RewardModel.score`; scoring with the policy itself, a step is read after the policy's own prompt."""
        own = prompts is not None and not self.settings.path  # another model's template would not fit
        self.policy_prompts = dict(zip(questions, prompts, strict=True)) if own else {}
        try:
            return super().score(questions, solutions)
        finally:
            self.policy_prompts = {}

    def prompt(self, question: str) -> tuple[str, bool]:
        """The text before the first step, and whether it is a rendered chat (which holds its own BOS).

        The policy's prompt for this question when the caller gave it, else the question as a user turn.
        """
        if question in self.policy_prompts:
            return self.policy_prompts[question], True
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        gen = self.settings.generator
        if self.chat_template and gen is not None and not self.settings.path:
            return gen.chat_prompt(messages), True
        tokenizer = getattr(self, "tokenizer", None)
        if self.chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return question + self.step_separator, False

    def encode(self, question: str, steps: list[str]) -> Encoded:
        prompt, chat = self.prompt(question)
        ids = self.tokenizer.encode(prompt, add_special_tokens=not chat)
        separator = self.tokenizer.encode(self.step_separator, add_special_tokens=False)
        spans = []
        for i, step in enumerate(steps):
            if i:
                ids += separator
            start = len(ids)
            ids += self.tokenizer.encode(step, add_special_tokens=False)
            spans.append((start, len(ids)))
        return Encoded(ids, spans)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        # log-prob of token t comes from the logits at t - 1; the first token has none
        out = torch.full(input_ids.shape, float("nan"), device=input_ids.device)
        targets = input_ids[:, 1:]
        parts = self.hidden_and_head(input_ids, attention_mask, position_ids)
        if parts is None:
            logits = self.forward(input_ids, attention_mask, position_ids).logits[:, :-1].float()
            out[:, 1:] = (logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)).to(out.device)
            return out
        hidden, head = parts
        # full-vocabulary logits a chunk of positions at a time, to bound memory
        chunk = max(1, LOGITS_CHUNK // max(1, input_ids.shape[0]))
        for start in range(0, input_ids.shape[1] - 1, chunk):
            end = min(start + chunk, input_ids.shape[1] - 1)
            logits = head(hidden[:, start:end]).float()
            picked = logits.gather(-1, targets[:, start:end, None].to(logits.device)).squeeze(-1)
            out[:, start + 1 : end + 1] = (picked - logits.logsumexp(-1)).to(out.device)
        return out

    def reduce(self, values: torch.Tensor) -> float:
        return math.exp(float(values.mean()))

    def score_items(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        if self.text_scorer is None:
            return super().score_items(items)
        # each solution in one pass: its steps and separators as pieces, as encode() lays them out
        prompts = [self.prompt(question)[0] for question, _ in items]
        continuations = [
            [piece for i, step in enumerate(steps) for piece in ([self.step_separator] if i else []) + [step]]
            for _, steps in items
        ]
        logprobs = self.text_scorer(prompts, continuations, usage=self.usage)  # the work counts as ours
        return [[mean_prob(list(per_piece[2 * i])) for i in range(len(steps))]
                for (_, steps), per_piece in zip(items, logprobs, strict=True)]

    def close(self) -> None:
        if self.settings.path:  # a generator's model belongs to the generator
            super().close()
