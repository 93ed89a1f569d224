"""Outcome reward models: a sequence classifier scoring the whole solution (Skywork-Reward-Llama-3.1-8B)."""

from __future__ import annotations

import torch

from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import Encoded
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel


@register_format("orm")
class OutcomeRM(TransformersRewardModel):
    """Sequence classifier; one score for the whole solution, returned as a list of one step score.

    Input: the chat template over (user: question, assistant: steps joined by the separator) when the
    tokenizer has one, else `question\\n solution`. A 1-label head gives sigmoid(logit) (`sigmoid=False`:
    the raw logit), so scores lie in (0, 1) like PRM scores; a 2-label head gives softmax class 1.
    """

    auto_class = "AutoModelForSequenceClassification"
    # left padding puts every row's last token at the last column, which the pooled head reads (below)
    padding_side = "left"

    def setup_model(self) -> None:
        super().setup_model()
        config = self.model.config.get_text_config()
        if config.pad_token_id is None:  # transformers refuses batches without one, though it is unused here
            config.pad_token_id = self.pad_id

    def configure(self, chat_template: bool = True, sigmoid: bool = True) -> None:
        self.use_chat = chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.sigmoid = sigmoid

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        solution = self.step_separator.join(steps)
        if self.use_chat:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = self.tokenizer.encode(f"{question}\n{solution}")
        return Encoded(ids, [(len(ids) - 1, len(ids))])

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        # Passing embeddings makes transformers pool the last column instead of guessing each row's end
        # from pad ids, which goes wrong when a text ends with the pad token (often pad == eos).
        embeds = self.model.get_input_embeddings()(input_ids)
        logits = self.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits.float()
        if logits.shape[-1] == 1:
            score = logits[:, 0].sigmoid() if self.sigmoid else logits[:, 0]
        else:
            score = logits.softmax(-1)[:, 1]
        out = torch.full(input_ids.shape, float("nan"), device=score.device)
        out[:, -1] = score
        return out
