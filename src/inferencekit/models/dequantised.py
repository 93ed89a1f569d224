"""GGUF files for the hf backend, dequantised once per machine.

transformers dequantises a GGUF file and converts its tokenizer on every load (tens of seconds for a
135M model, minutes for a 7B one). The first load saves the result as a plain checkpoint under
`cache_root()/dequantised/`, keyed by the file's path, size and modification time, the dtype and the
transformers version; later loads read that checkpoint like any local folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from inferencekit.cache import cache_root

logger = logging.getLogger(__name__)


def checkpoint_folder(gguf: Path, dtype: str) -> Path:
    """Where the dequantised copy of `gguf` in `dtype` lives (whether or not it exists yet)."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}\x00{stat.st_size}\x00{stat.st_mtime_ns}\x00{dtype}\x00{transformers.__version__}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return cache_root() / "dequantised" / f"{gguf.stem}-{dtype}-{digest}"


def dequantised_checkpoint(gguf: Path, dtype: str, model_kwargs: dict) -> Path:
    """A plain checkpoint of local GGUF file `gguf`, made now unless an earlier load made it.

    `model_kwargs` are the loading options (dtype, trust_remote_code); the copy is written to a temporary
    folder beside its place and renamed into it, so a crash never leaves a half-written checkpoint.
    """
    folder = checkpoint_folder(gguf, dtype)
    if (folder / "config.json").is_file():
        return folder
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=model_kwargs.get("trust_remote_code", False))
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF loading options, not part of a plain checkpoint
        del config.quantization_config
    plain = type(loaded)(config)  # a model loaded from GGUF refuses save_pretrained
    plain.load_state_dict(loaded.state_dict())
    plain.to(next(loaded.parameters()).dtype)
    plain.generation_config = loaded.generation_config  # its end-of-turn ids come from the GGUF's metadata
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if not folder.exists():  # else another process made it meanwhile
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
    logger.info("saved a dequantised copy of %s (%.1f GiB) to %s; later loads read it", gguf.name, size, folder)
    return folder
