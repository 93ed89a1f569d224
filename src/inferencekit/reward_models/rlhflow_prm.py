"""RLHFlow PRMs (RLHFlow/Llama3.1-8B-PRM-Deepseek-Data): a chat LM answering `+`/`-` after each step."""

from __future__ import annotations

import torch

from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import SENTINEL, Encoded, chat_pieces, encode_marked
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel


@register_format("rlhflow_prm")
class RLHFlowPRM(TransformersRewardModel):
    """Chat template, one user turn per step (the first is question + step 1), assistant `+` after each.

    P(`+`) vs `-` is read from the logits just before each assistant `+`, all turns in one forward pass.
    """

    def configure(self, good_token: str = "+", bad_token: str = "-") -> None:
        self.good_token = good_token
        self.candidates = [self.tokenizer.encode(t, add_special_tokens=False)[-1] for t in (good_token, bad_token)]

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        messages = []
        for i, step in enumerate(steps):
            messages.append({"role": "user", "content": f"{question} {step}" if i == 0 else step})
            messages.append({"role": "assistant", "content": SENTINEL})
        pieces = chat_pieces(self.tokenizer, messages, self.good_token)
        return encode_marked(self.tokenizer, pieces, {self.candidates[0]}, add_special_tokens=False, shift=-1)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return self.candidate_logits(self.candidates, input_ids, attention_mask, position_ids).softmax(-1)[..., 0]
