"""Named presets shipped with the package: YAML files, one per name, under `presets/<kind>/`.

Users add their own by putting YAML files in a folder named by `INFERENCEKIT_PRESETS`
(`<folder>/<kind>/<name>.yaml`); those take precedence over the shipped ones.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from inferencekit.files import read_yaml_mapping

_SHIPPED = Path(__file__).parent


def _folders(kind: str) -> list[Path]:
    folders = [Path(p) / kind for p in os.environ.get("INFERENCEKIT_PRESETS", "").split(os.pathsep) if p]
    return [*folders, _SHIPPED / kind]


def preset_names(kind: str) -> list[str]:
    """Names of all presets of a kind (models, reward_models, datasets)."""
    names = {p.stem for folder in _folders(kind) if folder.is_dir() for p in folder.glob("*.yaml")}
    return sorted(names)


def load_preset(kind: str, name: str) -> dict[str, Any] | None:
    """The preset `name` of `kind`, or None when there is none."""
    for folder in _folders(kind):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return _read(str(path))
    return None


@cache
def _read(path: str) -> dict[str, Any]:
    return read_yaml_mapping(Path(path), "preset")
