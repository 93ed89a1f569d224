"""Generators: resolve a model name or path to a backend and load it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from inferencekit.errors import UserError, validation_message
from inferencekit.hub import is_hub_id
from inferencekit.models.backends import BACKEND_CLASSES, BACKENDS, load_engine
from inferencekit.models.base import Completion, Generator, GeneratorSpec, SamplingParams, Usage
from inferencekit.models.embedded import embedded_gguf_path
from inferencekit.presets import load_preset, preset_names

__all__ = [
    "BACKENDS",
    "Completion",
    "Generator",
    "GeneratorSpec",
    "SamplingParams",
    "Usage",
    "executor_args",
    "load_generator",
    "model_defaults",
    "model_label",
    "resolve_model",
]

_SPEC_FIELDS = set(GeneratorSpec.__dataclass_fields__) - {"name", "path", "backend", "extra"}
def model_defaults(name: str) -> dict[str, Any]:
    """Run-config defaults of a model preset (backend, step separator, generation settings)."""
    preset = load_preset("models", name)
    if preset is None:
        return {}
    return {"backend": preset.get("backend"), **preset.get("defaults", {})}


def model_label(name_or_path: str) -> str:
    """Short name of a model for run folder names: the preset name, or the path's last part."""
    if load_preset("models", name_or_path) is not None:
        return name_or_path
    path = Path(name_or_path)
    label = path.stem if path.suffix == ".gguf" else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label) or "model"


def resolve_model(name_or_path: str, backend: str | None = None, model_args: dict | None = None) -> GeneratorSpec:
    """Turn a preset name, a local path (HF folder or GGUF file) or a hub id into a `GeneratorSpec`."""
    model_args = dict(model_args or {})
    preset = load_preset("models", name_or_path)
    path = preset["path"] if preset else name_or_path
    if path == "embedded":
        path = str(embedded_gguf_path())
    # A served model's name means nothing locally: an explicit openai backend skips the path checks.
    backend = backend or (preset or {}).get("backend") or _infer_backend(path)
    BACKEND_CLASSES.get(backend)  # UserError naming the accepted backends
    unknown = set(model_args) - _SPEC_FIELDS
    if unknown:
        raise UserError(
            f"unknown model argument(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(_SPEC_FIELDS))}"
        )
    try:
        return TypeAdapter(GeneratorSpec).validate_python(
            {"name": model_label(name_or_path), "path": path, "backend": backend, **model_args}
        )
    except ValidationError as exc:
        raise UserError(validation_message(exc, "model argument", sorted(_SPEC_FIELDS))) from None


def _infer_backend(path: str) -> str:
    """The default backend for a model (README, "Which backend"): a GGUF file runs on llama.cpp (its own
    quantised weights, loaded in a second); a transformers checkpoint or hub id on vLLM where vLLM is installed
    and a GPU is visible, else on transformers (on a CPU, vLLM's minute-long start outweighs small jobs)."""
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"model file not found: {p}")
        return "llamacpp"
    if p.is_dir():
        if (p / "config.json").is_file():
            return transformers_backend()
        if list(p.glob("*.gguf")):
            return "llamacpp"
        raise UserError(f"model folder {p} holds neither config.json (transformers) nor a .gguf file")
    if is_hub_id(path):
        return transformers_backend()  # loaded from the hub (or its local cache)
    raise UserError(
        f"unknown model {path!r}: not a preset ({', '.join(preset_names('models'))}), "
        "a local folder, a .gguf file or a hub id (org/name)"
    )


def transformers_backend() -> str:
    """`vllm` for a transformers checkpoint when vLLM is installed and a CUDA GPU is visible, else `hf`."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "hf"
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def executor_args(config: Any) -> dict[str, Any]:
    """The scale-out settings of a run config that `load_generator` takes."""
    return {"executor": config.executor, "replicas": config.replicas, "ray_address": config.ray_address,
            "ray_num_gpus": config.ray_num_gpus}


def load_generator(
    spec: GeneratorSpec,
    executor: str = "local",
    replicas: int = 1,
    ray_address: str | None = None,
    ray_num_gpus: float = 0.0,
) -> Generator:
    """Build the generator for a spec; a model that fails to load raises `UserError` saying why.

    `executor="ray"` runs `replicas` copies of an in-process engine as Ray actors behind one pool
    (models/ray_executor.py); the openai backend is a pool of its servers already (models/openai.py).
    """
    if executor == "ray":
        if spec.backend == "openai":
            raise UserError("--executor ray runs in-process engines (llamacpp, hf); for servers list them "
                            "in --model-arg base_url=URL1,URL2")
        if spec.backend == "vllm":
            raise UserError("--executor ray runs llamacpp and hf engines; vLLM runs its own copies: "
                            "--model-arg data_parallel_size=K")
        from inferencekit.models.ray_executor import RayPool

        return RayPool(spec, replicas=replicas, address=ray_address, num_gpus=ray_num_gpus)
    return load_engine(spec)
