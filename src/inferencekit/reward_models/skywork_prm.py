"""Skywork o1 Open PRM (Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B, -7B): a value head on a causal LM."""

from __future__ import annotations

import json

import torch

from inferencekit.errors import UserError
from inferencekit.reward_models.base import ScoreItem
from inferencekit.reward_models.encoding import Encoded
from inferencekit.reward_models.registry import register_format
from inferencekit.reward_models.transformers_base import TransformersRewardModel

VALUE_HEAD = "v_head.summary."  # keys of the head in the checkpoint, as Skywork's PRM_MODEL saves it


def read_tensors(path: str, key_part: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint (folder or hub id) whose names contain `key_part`, keyed by the rest of the name."""
    from transformers.utils import cached_file

    def find(name: str) -> str | None:
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False)

    index = find("model.safetensors.index.json")
    if index:
        weight_map = json.loads(open(index).read())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if key_part in k})
    else:
        files = ["model.safetensors"] if find("model.safetensors") else ["pytorch_model.bin"]
    found: dict[str, torch.Tensor] = {}
    for name in files:
        local = find(name)
        if local is None:
            continue
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(local, framework="pt") as f:
                found.update({k.split(key_part)[-1]: f.get_tensor(k) for k in f.keys() if key_part in k})
        else:
            state = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
            found.update({k.split(key_part)[-1]: v for k, v in state.items() if key_part in k})
    return found


@register_format("skywork_prm")
class SkyworkPRM(TransformersRewardModel):
    """Causal LM + linear value head; BOS + problem + newline, each step then the step token; sigmoid of the value.

    Built as Skywork's `prepare_input`: the problem and each step are tokenized separately and the step
    token's id follows each step. The backbone loads with `AutoModel`; the head is the checkpoint's
    `v_head.summary.weight`/`bias`.
    """

    auto_class = "AutoModel"

    def load(self) -> None:
        super().load()
        head = read_tensors(self.settings.path, VALUE_HEAD)
        if "weight" not in head:
            raise UserError(f"{self.settings.path!r} holds no value head ({VALUE_HEAD}weight): not a Skywork PRM")
        self.head_weight = head["weight"].float().to(self.input_device)
        self.head_bias = head["bias"].float().to(self.input_device) if "bias" in head else None

    def configure(self, step_token: str = "\n") -> None:
        self.step_token_id = self.tokenizer.encode(step_token, add_special_tokens=False)[-1]
        self.bos = self.tokenizer.bos_token or ""

    def encode(self, item: ScoreItem) -> Encoded:
        question, steps = item.question, item.steps
        ids = self.tokenizer.encode(self.bos + question + "\n", add_special_tokens=False)
        spans = []
        for step in steps:
            ids += self.tokenizer.encode(step, add_special_tokens=False) + [self.step_token_id]
            spans.append((len(ids) - 1, len(ids)))
        return Encoded(ids, spans)

    def token_scores(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.forward(input_ids, attention_mask, position_ids).last_hidden_state.float()
        value = torch.nn.functional.linear(hidden.to(self.head_weight.device), self.head_weight, self.head_bias)
        return value.squeeze(-1).sigmoid()
