"""Loading a transformers model: a local folder, a hub id, or a GGUF file (through its dequantised copy)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inferencekit.errors import first_line as _one_line
from inferencekit.hub import is_hub_id
from inferencekit.models.base import GeneratorSpec
from inferencekit.models.dequantised import dequantised_checkpoint
from inferencekit.models.torch_options import torch_dtype

logger = logging.getLogger(__name__)


def resolve_source(path: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """Return (folder or hub id, GGUF file name, is_local); raise FileNotFoundError for missing local paths.

    A path to a `.gguf` file is split into its folder and file name.
    """
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix == ".gguf" and gguf_file is None:
            return str(local.parent), local.name, True
        raise FileNotFoundError(f"model path {path} is a file, not a model folder (or a .gguf file)")
    if local.is_dir():
        if gguf_file is not None and not (local / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file} not found in model folder {path}")
        return str(local), gguf_file, True
    if not is_hub_id(path, allow_bare=True):
        raise FileNotFoundError(f"model path not found: {path}")
    return path, gguf_file, False


def _dtype_kwarg(dtype: str) -> dict:
    value = torch_dtype(dtype)
    import transformers
    from packaging.version import Version

    # transformers renamed torch_dtype= to dtype= in 4.56
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: value}


def _plain_checkpoint(gguf: Path, spec: GeneratorSpec) -> tuple[str, str | None]:
    """(folder, None) of the dequantised copy of local file `gguf`, or (its folder, its name) to load it
    directly when no copy can be made (noted once)."""
    options = dict(_dtype_kwarg(spec.dtype), trust_remote_code=spec.trust_remote_code)
    try:
        return str(dequantised_checkpoint(gguf, spec.dtype, options)), None
    except (OSError, ValueError, RuntimeError) as e:
        logger.warning("loading %s without a saved dequantised copy (%s)", gguf.name, _one_line(e))
        return str(gguf.parent), gguf.name



def load_checkpoint(spec: GeneratorSpec) -> tuple[Any, Any]:
    """(tokenizer, model) of `spec`: on CUDA when there is one and no `device_map` says otherwise."""
    source, gguf_file, is_local = resolve_source(spec.path, spec.gguf_file)
    if gguf_file is not None and is_local:
        source, gguf_file = _plain_checkpoint(Path(source) / gguf_file, spec)
    common: dict = {"trust_remote_code": spec.trust_remote_code}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    model_kwargs = dict(common, **_dtype_kwarg(spec.dtype))
    device_map = spec.device_map
    if device_map is None and torch.cuda.is_available():
        device_map = "cuda"
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    if spec.attn_implementation is not None:
        model_kwargs["attn_implementation"] = spec.attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except OSError as error:
        if is_local:
            raise OSError(f"cannot load model from {source}: {_one_line(error)}") from None
        raise OSError(
            f"cannot load model {spec.path!r}: no such local folder, and the hub could not provide it "
            f"({_one_line(error)})"
        ) from None
    return tokenizer, model
