"""Run configuration: one validated object, resolved from layered sources.

Precedence, highest first (the original design): runtime arguments > command-line generation
arguments > model arguments > config file > model preset defaults > built-in defaults.
The resolved `RunConfig` is what a run folder's `config.yaml` records.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferencekit import errors
from inferencekit.errors import UserError
from inferencekit.files import read_yaml_mapping
from inferencekit.models.base import SamplingParams
from inferencekit.search.base import METHODS  # importing the search package registers every method
from inferencekit.search.options import MAX_SAMPLES, MAX_STEPS, MAX_TOKENS, MAX_WORKERS, options_classes

# Keys that change neither generation nor grading: a resumed run may differ in these.
RUNTIME_KEYS = ("limit", "work_dir", "data_dir", "batch_size", "concurrency", "grading_workers", "votes",
                "shard", "executor", "replicas", "ray_address", "ray_num_gpus")
# Model arguments that say where or how fast a model runs, not what it computes.
RUNTIME_MODEL_ARGS = ("base_url", "api_key", "n_threads", "max_batch_sequences", "device_map", "kv_cache_mib",
                      "api_key_file", "max_retries", "retry_delay", "request_timeout", "connect_timeout",
                      "timeout_retries")
# Which layer a run setting given as its own flag belongs to (the rest are runtime arguments):
GENERATION_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")  # command-line generation arguments
MODEL_ARG_KEYS = ("dtype", "device_map", "attn_implementation", "trust_remote_code")  # shortcuts of --model-arg


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/K"` -> (I, K) with 1 <= I <= K; anything else is a `UserError`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard must be I/K with 1 <= I <= K, e.g. 2/4 (got {text!r})")
    return int(match[1]), int(match[2])


class RunSettings(BaseModel):
    """The settings of a run that no one method owns (`RunConfig` adds the methods' options)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = "smollm2-135m"
    backend: Literal["hf", "llamacpp", "openai", "vllm"] | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    step_separator: str = "\n\n"

    dataset: str = "gsm8k-mini"
    data_dir: str | None = None
    split: str = "test"
    input_field: str | None = None
    reference_field: str | None = None
    num_shots: int = Field(0, ge=0, le=MAX_SAMPLES)
    system_prompt: str | None = None
    prompt_template: str | None = None
    limit: int | None = Field(None, ge=1)

    method: str = "cot"
    n: int = Field(1, ge=1, le=MAX_SAMPLES)
    # tree search branching factor: children per expanded node (cli --help)
    beam_width: int = Field(4, ge=1, le=MAX_SAMPLES)
    reward_model: str | None = None
    reward_model_args: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["min", "last", "prod", "mean", "model"] = "last"
    votes: list[str] = Field(default_factory=lambda: ["majority"], min_length=1)
    # tree search (beam_search, dvts, mcts, token_beam)
    max_steps: int = Field(40, ge=1, le=MAX_STEPS)  # most steps in a path (not token_beam)
    lookahead: int = Field(0, ge=0, le=MAX_STEPS)  # beam_search/dvts: rank by a greedy rollout this many steps further
    filter_duplicates: bool = False  # beam_search/token_beam: drop paths repeating another's text
    box_match: Literal["last", "first", "any"] = "last"
    grader: Literal["inferencekit", "math-verify"] = "inferencekit"  # math-verify: plain math-verify grading

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(512, ge=1, le=MAX_TOKENS)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)

    work_dir: str = "results"
    exp_name: str = "default"
    batch_size: int = Field(8, ge=1, le=MAX_WORKERS)
    concurrency: int | None = Field(None, ge=1, le=MAX_WORKERS)  # problems in flight at once (default: 2 x batch_size)
    grading_workers: int | None = Field(None, ge=1, le=MAX_WORKERS)
    grading_timeout: float = Field(5.0, gt=0)

    # scale-out (results/shards.py, models/ray_executor.py): where the work runs, not what it computes
    shard: str | None = None  # "I/K": the I-th of K disjoint slices, in <run>/shard-I-of-K/
    executor: Literal["local", "ray"] = "local"
    replicas: int = Field(1, ge=1, le=MAX_WORKERS)  # --executor ray: actors, one engine each
    ray_address: str | None = None  # default $RAY_ADDRESS, else a local cluster
    ray_num_gpus: float = Field(0.0, ge=0)  # GPUs per actor

    @field_validator("shard")
    @classmethod
    def _shard_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            i, k = parse_shard(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return f"{i}/{k}"

    @field_validator("votes", mode="before")
    @classmethod
    def _split_votes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template_has_input(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            filled = value.format(input="\x00")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"must be a str.format template with only {{input}}; double literal braces ({exc})"
            ) from None
        if "\x00" not in filled:
            raise ValueError("must contain {input}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value



class RunConfig(*reversed(options_classes(dict(METHODS.items()))), RunSettings):  # type: ignore[misc]
    """Everything that defines a run: the run settings, and every method's options (flat keys, search/options.py).
    Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def sampling_params(self, seed: int, **changes: Any) -> SamplingParams:
        """This run's generation settings for one request (`n` samples) with `seed`; `changes` override."""
        base = SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, stop=tuple(self.stop), seed=seed)
        return base.replace(**changes) if changes else base

    def to_yaml(self) -> str:
        """The config as YAML, with any API key left out."""
        data = self.model_dump()
        if "api_key" in data["model_args"]:
            data["model_args"]["api_key"] = None
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def result_keys(self) -> dict[str, Any]:
        """The settings that determine results: a resumed run must match these."""
        data = {k: v for k, v in self.model_dump().items() if k not in RUNTIME_KEYS}
        data["model_args"] = {k: v for k, v in data["model_args"].items() if k not in RUNTIME_MODEL_ARGS}
        return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a mapping into a `RunConfig`; a bad key or value is a one-line `UserError`."""
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source)) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return read_yaml_mapping(path, "config file")


def validation_message(exc: ValidationError, source: str = "config") -> str:
    """One line naming each bad key of a run config and what is accepted."""
    return errors.validation_message(exc, source, RunConfig.model_fields)


def resolve_config(
    *,
    runtime: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    config_file: str | Path | dict[str, Any] | None = None,
    preset_defaults: Any = None,
) -> RunConfig:
    """Merge the layers in precedence order and validate.

    `config_file` is a YAML file's path, or its settings already read (a sweep spec's).

    `preset_defaults` is a callable `model_name -> dict` giving a model preset's defaults; the model
    name is decided first (runtime > config file > built-in) so its preset can slot in below the file.
    """
    runtime = {k: v for k, v in (runtime or {}).items() if v is not None}
    generation = {k: v for k, v in (generation or {}).items() if v is not None}
    file_layer = dict(config_file) if isinstance(config_file, dict) else load_config_file(config_file) if config_file \
        else {}
    model_name = runtime.get("model") or file_layer.get("model") or RunConfig.model_fields["model"].default
    preset = dict(preset_defaults(model_name)) if preset_defaults else {}

    merged: dict[str, Any] = {}
    for layer in (preset, file_layer):
        _merge(merged, layer)
    if model_args:
        merged["model_args"] = {**merged.get("model_args", {}), **model_args}
    _merge(merged, generation)
    _merge(merged, runtime)
    return config_from_dict(merged)


def resolve_flags(
    flags: dict[str, Any], *, config_file: str | Path | None = None, preset_defaults: Any = None
) -> RunConfig:
    """`resolve_config` for settings given as command-line flags (None: not given).

    Each flag goes to its layer here: `GENERATION_KEYS` are generation arguments, `MODEL_ARG_KEYS` model
    arguments (below the explicit `model_args`, which win), everything else a runtime argument.
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    generation = {k: flags.pop(k) for k in GENERATION_KEYS if k in flags}
    model_args = {k: flags.pop(k) for k in MODEL_ARG_KEYS if k in flags}
    model_args.update(flags.pop("model_args", None) or {})
    return resolve_config(runtime=flags, generation=generation, model_args=model_args, config_file=config_file,
                          preset_defaults=preset_defaults)


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value
