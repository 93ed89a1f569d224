"""Token-classification PRMs trained with TRL's PRMTrainer (e.g. HuggingFaceH4's Qwen2.5-Math PRMs)."""

from __future__ import annotations

import torch

from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import Encoded
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel


@register_format("token_classification")
class TokenClassificationPRM(TransformersRewardModel):
    """2-label token classifier; BOS + question, then each step followed by the separator; softmax class 1.

    Tokenized piece by piece exactly as TRL's PRMTrainer builds its training rows, and read at the
    separator's last token, where TRL puts the step's label. `separator` defaults to the step separator.
    """

    auto_class = "AutoModelForTokenClassification"

    def configure(self, separator: str | None = None, add_bos: bool = True) -> None:
        self.separator_ids = self.tokenizer.encode(separator or self.step_separator, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        self.prefix = [bos] if add_bos and bos is not None else []

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        ids = self.prefix + self.tokenizer.encode(question, add_special_tokens=False)
        spans = []
        for step in steps:
            ids += self.tokenizer.encode(step, add_special_tokens=False) + self.separator_ids
            spans.append((len(ids) - 1, len(ids)))
        return Encoded(ids, spans)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return self.forward(input_ids, attention_mask, position_ids).logits.float().softmax(-1)[..., 1]
