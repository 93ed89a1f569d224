"""Reward-free scores from the policy's own distributions: `self_certainty` (Kang et al. 2025) and `mean_logprob`.

- `self_certainty`: the KL divergence from the uniform distribution to the full next-token distribution,
  KL(U || p) = -(1/V) sum_j log(V p_j), averaged over every token of the response; one score per whole
  response, however steps split it (backprop07/Self-Certainty @ b3461b1, src/confidence_list.py and the
  README's formula). It needs full distributions: llama.cpp, transformers and vLLM give them
  (`Generator.certainty_text`); another backend is refused in one line.
- `mean_logprob`: exp(mean log-probability of each step's sampled tokens), per step (its_hub's signal
  of that name); any backend that returns log-probabilities of given text, or a transformers model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from inferencekit.errors import UserError
from inferencekit.models.base import Generator
from inferencekit.models.certainty import kl_uniform_rows
from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import Encoded
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel

# `Generator.score_text`: token log-probs of each continuation (a list of pieces) given its prompt, per piece
TextScorer = Callable[..., list[list[list[float]]]]
LOGITS_CHUNK = 1024  # positions (over the batch) whose full-vocabulary logits exist at once


def mean_prob(logprobs: list[float]) -> float:
    """exp(mean log-prob): the geometric-mean probability of the tokens; NaN for none."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else math.nan


@register_format("mean_logprob")
class MeanLogprob(TransformersRewardModel):
    """exp(mean log-prob) of each step's tokens given the question and the steps before it.

    The model: a transformers causal LM at `path`; else the generator's own `score_text` when it
    declares `can_score_text`; else the generator's in-process transformers model (`torch_model()`, hf).
    Scoring with the policy, the context is the policy's own prompt when the caller gives it (the
    search methods do); otherwise, and with a model at `path`, the question rendered as a user turn
    with the chat template (the generator's, else the tokenizer's, else raw text and the separator).
    """

    needs_weights = False
    uses_prompts = True  # with the policy itself (no `path`): steps are read after the policy's prompt

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
            backend = "no generator" if gen is None else f"backend {gen.backend!r}"
            raise UserError(
                f"{self.format_name} needs a causal LM: a path to one, or a generator that can score text or runs "
                f"a transformers model (llamacpp, hf); got {backend}"
            )

    def configure(self, system_prompt: str | None = None, chat_template: bool = True) -> None:
        self.system_prompt = system_prompt
        self.chat_template = chat_template

    def prompt(self, item: ScoreItem) -> tuple[str, bool]:
        """The text before the first step, and whether it is a rendered chat (which holds its own BOS).

        The policy's prompt for the item when the caller gave it and this scores with the policy itself
        (another model's template would not fit it), else the question as a user turn.
        """
        if item.prompt is not None and not self.settings.path:
            return item.prompt, True
        question = item.question
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        gen = self.settings.generator
        if self.chat_template and gen is not None and not self.settings.path:
            return gen.chat_prompt(messages), True
        tokenizer = getattr(self, "tokenizer", None)
        if self.chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return question + self.step_separator, False

    def encode(self, item: ScoreItem) -> Encoded:
        prompt, chat = self.prompt(item)
        steps = item.steps
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

    def score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        if self.text_scorer is None:
            return super().score_items(items)
        # each solution in one pass: its steps and separators as pieces, as encode() lays them out
        prompts = [self.prompt(item)[0] for item in items]
        continuations = [
            [piece for i, step in enumerate(item.steps) for piece in ([self.step_separator] if i else []) + [step]]
            for item in items
        ]
        logprobs = self.text_scorer(prompts, continuations, usage=self.usage)  # the work counts as ours
        return [[mean_prob(list(per_piece[2 * i])) for i in range(len(item.steps))]
                for item, per_piece in zip(items, logprobs, strict=True)]

    def close(self) -> None:
        if self.settings.path:  # a generator's model belongs to the generator
            super().close()


@register_format("self_certainty")
class SelfCertainty(MeanLogprob):
    """Kang et al. 2025: KL(uniform || next-token distribution), averaged over the response's tokens; one score.

    The whole solution is scored as one piece after the prompt (steps do not change it): `score` gives one
    float per solution. The model: a transformers causal LM at `path`; else the generator's own
    `certainty_text` (llama.cpp, hf, vllm). A backend without full distributions (openai) is refused.
    """

    def load(self) -> None:
        gen = self.settings.generator
        self.text_scorer = None
        if self.settings.path:
            TransformersRewardModel.load(self)
        elif gen is not None and gen.can_score_certainty:
            self.certainty = gen.certainty_text
        else:
            backend = "no generator" if gen is None else f"backend {gen.backend!r}"
            capable = ", ".join(Generator.capable_backends("can_score_certainty"))
            raise UserError(
                f"self_certainty reads the full next-token distribution: give a causal LM path, or run on a backend "
                f"that exposes it ({capable}); got {backend} (--reward-model mean_logprob needs only log-probs)"
            )

    def score(
        self, questions: Sequence[str], solutions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[list[list[float]]]:
        """One score per solution (a list of one), from the whole solution text: step splits do not matter."""
        if isinstance(questions, str) or len(questions) != len(solutions):
            raise ValueError(f"got {len(questions)} questions and {len(solutions)} solution lists")
        if prompts is not None and len(prompts) != len(questions):
            raise ValueError(f"got {len(prompts)} prompts for {len(questions)} questions")
        given = list(prompts) if prompts is not None else [None] * len(questions)
        items = [ScoreItem(q, [s], prompt) for q, prompt, sols in zip(questions, given, solutions, strict=True)
                 for s in sols]
        flat = iter(self.score_items(items))
        return [[next(flat) for _ in sols] for sols in solutions]

    def encode(self, item: ScoreItem) -> Encoded:
        prompt, chat = self.prompt(item)
        ids = self.tokenizer.encode(prompt, add_special_tokens=not chat)
        start = len(ids)
        ids += self.tokenizer.encode(item.steps[0], add_special_tokens=False)
        return Encoded(ids, [(start, len(ids))])

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        # the certainty of token t's distribution comes from the logits at t - 1; the first token has none
        out = torch.full(input_ids.shape, float("nan"), device=input_ids.device)
        parts = self.hidden_and_head(input_ids, attention_mask, position_ids)
        if parts is None:
            logits = self.forward(input_ids, attention_mask, position_ids).logits[:, :-1]
            out[:, 1:] = kl_uniform_rows(logits).to(out.device)
            return out
        hidden, head = parts
        chunk = max(1, LOGITS_CHUNK // max(1, input_ids.shape[0]))
        for start in range(0, input_ids.shape[1] - 1, chunk):
            end = min(start + chunk, input_ids.shape[1] - 1)
            out[:, start + 1 : end + 1] = kl_uniform_rows(head(hidden[:, start:end])).to(out.device)
        return out

    def reduce(self, values: torch.Tensor) -> float:
        return float(values.mean()) if values.numel() else math.nan

    def score_items(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        if self.settings.path:
            return super().score_items(items)
        per_token = self.certainty([self.prompt(item)[0] for item in items], [item.steps[0] for item in items],
                                   usage=self.usage)  # the work counts as ours
        return [[sum(values) / len(values) if values else math.nan] for values in per_token]
