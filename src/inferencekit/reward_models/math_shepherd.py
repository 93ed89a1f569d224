"""Math-Shepherd PRM (peiyi9979/math-shepherd-mistral-7b-prm): a causal LM predicting `+`/`-` at step tags."""

from __future__ import annotations

import torch

from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import Encoded, Marker, encode_marked, last_token_id
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel


@register_format("math_shepherd")
class MathShepherdPRM(TransformersRewardModel):
    """Causal LM; raw `question answer` text with ` ки` after each step; P(`+`) vs `-` at each tag.

    Steps stay joined by the step separator, each followed by the tag (as the model card's example and
    search-and-learn do); the logits at the tag token itself give the score.
    """

    def configure(self, step_tag: str = " ки", good_token: str = "+", bad_token: str = "-") -> None:
        self.step_tag = step_tag
        # as the model card: the ids of "+ -" without BOS, i.e. "+" and " -" for sentencepiece vocabularies
        self.candidates = self.tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
        if len(self.candidates) != 2:
            raise ValueError(f"{good_token!r} and {bad_token!r} must be one token each for this tokenizer")
        self.tag_ids = {
            last_token_id(self.tokenizer, step_tag),
            self.tokenizer.encode(step_tag.strip(), add_special_tokens=False)[-1],
        }

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        pieces: list[str | Marker] = [f"{question} "]
        for i, step in enumerate(steps):
            pieces += [self.step_separator + step if i else step, Marker(self.step_tag)]
        return encode_marked(self.tokenizer, pieces, self.tag_ids, add_special_tokens=True)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return self.candidate_logits(self.candidates, input_ids, attention_mask, position_ids).softmax(-1)[..., 0]
