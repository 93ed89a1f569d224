"""Qwen2.5-Math-PRM (Qwen/Qwen2.5-Math-PRM-7B, -72B): a 2-class head read at `<extra_0>` after each step."""

from __future__ import annotations

import torch

from inferencekit.errors import UserError
from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import SENTINEL, Encoded, chat_pieces, encode_marked
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@register_format("qwen_prm")
class QwenPRM(TransformersRewardModel):
    """Chat template (system, user question, assistant steps each followed by `<extra_0>`); softmax class 1.

    The real checkpoint is `Qwen2ForProcessRewardModel` (remote code: pass trust_remote_code=True); its
    first output is [batch, tokens, 2] logits. Any checkpoint whose first output has that shape works,
    e.g. a `*ForTokenClassification` with 2 labels, which loads without remote code.
    """

    auto_class = "AutoModel"

    def choose_auto_class(self, path: str) -> str:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=self.settings.trust_remote_code)
        if any(a.endswith("ForTokenClassification") for a in config.architectures or ()):
            return "AutoModelForTokenClassification"
        return self.auto_class

    def configure(self, step_token: str = "<extra_0>", system_prompt: str | None = QWEN_MATH_SYSTEM) -> None:
        self.step_token = step_token
        token_id = self.tokenizer.convert_tokens_to_ids(step_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise UserError(f"step token {step_token!r} is not a token of {self.settings.path}'s tokenizer")
        self.step_token_ids = {token_id}
        self.system_prompt = system_prompt

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        messages = [
            *system,
            {"role": "user", "content": question},
            {"role": "assistant", "content": "".join(step + SENTINEL for step in steps)},
        ]
        pieces = chat_pieces(self.tokenizer, messages, self.step_token, add_generation_prompt=False)
        return encode_marked(self.tokenizer, pieces, self.step_token_ids, add_special_tokens=False)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        logits = self.forward(input_ids, attention_mask, position_ids)[0]
        return logits.float().softmax(-1)[..., 1]
