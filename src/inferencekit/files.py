"""Files the toolkit reads and writes: YAML mappings read with one-line errors, and writes that a reader
never sees half of (write to a temporary file, sync, rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from inferencekit.errors import UserError, first_line


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty for an empty file); `UserError` in one line naming `what` it is."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a mapping of keys to values")
    return data


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
