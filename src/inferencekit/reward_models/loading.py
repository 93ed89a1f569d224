"""Resolve a reward model name (preset, format name, local folder or hub id) to a format and load it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferencekit.errors import UserError
from inferencekit.hub import is_hub_id
from inferencekit.models.base import Generator
from inferencekit.presets import load_preset, preset_names
from inferencekit.reward_models.base import RewardModel, RewardModelSettings
from inferencekit.reward_models.registry import FORMATS, format_class, format_names


@dataclass
class RewardModelSpec:
    """What a reward model name resolves to: a checkpoint (None for generator-only formats), format, options."""

    name: str
    path: str | None
    format: str
    options: dict[str, Any] = field(default_factory=dict)


def _accepted() -> str:
    return ", ".join(format_names())


def format_from_architectures(architectures: list[str], source: str) -> str:
    """The format of a checkpoint whose config lists `architectures`; `UserError` when none fits."""
    for arch in architectures:
        if "ProcessRewardModel" in arch:
            return "qwen_prm"
        if arch.endswith("ForTokenClassification"):
            return "token_classification"
        if arch.endswith("ForSequenceClassification"):
            return "orm"
    raise UserError(
        f"cannot infer the reward model format of {source} (architectures: {', '.join(architectures) or 'none'}); "
        f"pass format=, one of: {_accepted()}"
    )


def infer_format(path: str) -> str:
    """The format of a local folder or hub id, from the `architectures` of its config.json."""
    local = Path(path).expanduser()
    if local.is_dir():
        config_file: str | None = str(local / "config.json") if (local / "config.json").is_file() else None
    elif is_hub_id(path):
        from transformers.utils import cached_file

        try:
            config_file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
        except OSError:
            config_file = None
    else:
        raise UserError(
            f"unknown reward model {path!r}: not a preset ({', '.join(preset_names('reward_models'))}), "
            f"a format ({_accepted()}), a local folder or a hub id (org/name)"
        )
    if config_file is None:
        raise UserError(
            f"cannot infer the reward model format of {path} (no config.json); pass format=, one of: {_accepted()}"
        )
    architectures = json.loads(Path(config_file).read_text()).get("architectures") or []
    return format_from_architectures(architectures, path)


def resolve_reward_model(name_or_path: str, format: str | None = None) -> RewardModelSpec:
    """Resolve without loading: a preset, a weight-free format name, or a checkpoint (format given or inferred)."""
    preset = load_preset("reward_models", name_or_path)
    if preset is not None:
        if "format" not in preset:
            raise UserError(f"reward model preset {name_or_path!r} names no format")
        fmt = format or preset["format"]
        options = dict(preset.get("options") or {}) if fmt == preset["format"] else {}
        spec = RewardModelSpec(name_or_path, preset.get("path"), fmt, options)
    elif name_or_path in FORMATS and (format is None or format == name_or_path):
        if FORMATS[name_or_path].needs_weights:
            raise UserError(f"reward model format {name_or_path!r} needs a checkpoint: pass its path with format=")
        spec = RewardModelSpec(name_or_path, None, name_or_path)
    else:
        label = Path(name_or_path).name or name_or_path
        spec = RewardModelSpec(label, name_or_path, format or infer_format(name_or_path))
    format_class(spec.format)  # UserError naming the accepted formats
    return spec


def load_reward_model(
    name_or_path: str,
    format: str | None = None,
    *,
    step_separator: str = "\n\n",
    generator: Generator | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str = "auto",
    max_tokens_per_batch: int = 8192,
    max_length: int | None = None,
    **kwargs: Any,
) -> RewardModel:
    """Load a reward model: a preset name, a format name needing no weights, or a folder / hub id.

    `format` is taken from the preset, else from the folder's config.json, when not given. Extra
    keyword arguments are format options (they override a preset's). `device="auto"` spreads a large
    model over GPUs; `max_length` (default: the model's context) is where inputs get cut from the left.
    """
    spec = resolve_reward_model(name_or_path, format)
    cls = format_class(spec.format)
    settings = RewardModelSettings.validate(
        name=spec.name,
        path=spec.path,
        step_separator=step_separator,
        generator=generator,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
        max_tokens_per_batch=max_tokens_per_batch,
        max_length=max_length,
    )
    return cls(settings, **{**spec.options, **kwargs})


def list_reward_models() -> list[str]:
    """One printable line per format (aliases noted) and per preset."""
    lines = []
    for name in format_names():
        cls = FORMATS[name]
        alias = f" (alias of {cls.format_name})" if cls.format_name != name else ""
        lines.append(f"{name:<34} format{alias}: {cls.description()}")
    for name in preset_names("reward_models"):
        preset = load_preset("reward_models", name) or {}
        about = f" - {preset['description']}" if preset.get("description") else ""
        lines.append(f"{name:<34} preset: {preset.get('path')} ({preset.get('format')}){about}")
    return lines
