"""Settings shared by everything that runs a torch model (the hf generator, transformers reward models):
the dtype names users may give, and the attention kernels to use on GPU."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from inferencekit.errors import unknown

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype | str:
    """The torch dtype (or "auto") named `name`; `UserError` naming the accepted names."""
    if name not in DTYPES:
        raise unknown("dtype", name, DTYPES)
    return DTYPES[name]


def attention_without_cudnn(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, keep torch's scaled-dot-product attention off its cuDNN backend for this block.

    cuDNN attention (chosen for half precision on recent GPUs) builds a plan for every new input shape,
    and both decoding (a new length every step) and reward scoring (a new shape nearly every batch) keep
    meeting new shapes. Measured on an H200: generation at 20 vs 110-130 tokens/s at batch 1 (torch 2.11),
    and a small bf16 PRM scoring 64 solutions in 2.5 s with it vs 0.12 s without. Flash and
    memory-efficient kernels have no such cost. Elsewhere (CPU, torch < 2.3) this does nothing.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def model_context_length(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: config.max_position_embeddings, else the tokenizer's limit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    length = getattr(config, "max_position_embeddings", None)
    if not length:
        limit = getattr(tokenizer, "model_max_length", None)
        length = limit if limit and limit < 10**8 else 4096
    return int(length)
