"""Reward models: process (per-step) and outcome reward models in the formats seen in the field.

rm = load_reward_model("qwen2.5-math-prm-7b")            # a preset, or a folder / hub id with format=
rm.score(questions, solutions)   # per question, per solution, per step: a float (NaN: no score)
"""

from __future__ import annotations

# the format modules register themselves on import
from inferencekit.reward_models import (  # noqa: F401
    concurrent,  # installs the batcher every shared reward model uses
    llm_judge,
    math_shepherd,
    orm,
    qwen_prm,
    rlhflow_prm,
    self_certainty,
    skywork_prm,
    token_classification,
)
from inferencekit.reward_models.base import RewardModel, RewardModelSettings, ScoreItem, split_steps
from inferencekit.reward_models.loading import (
    RewardModelSpec,
    infer_format,
    list_reward_models,
    load_reward_model,
    resolve_reward_model,
)
from inferencekit.reward_models.registry import FORMATS, format_names, register_format

__all__ = [
    "FORMATS",
    "RewardModel",
    "RewardModelSettings",
    "RewardModelSpec",
    "ScoreItem",
    "format_names",
    "infer_format",
    "list_reward_models",
    "load_reward_model",
    "register_format",
    "resolve_reward_model",
    "split_steps",
]
