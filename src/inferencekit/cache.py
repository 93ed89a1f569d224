"""Where inferencekit keeps what it can compute once per machine: `$INFERENCEKIT_CACHE_DIR`, by default
`~/.cache/inferencekit` (file hashes, dequantised GGUF checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "INFERENCEKIT_CACHE_DIR"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path("~/.cache/inferencekit").expanduser())
