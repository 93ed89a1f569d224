"""A sweep's spec (DESIGN.md fixes the format): validated, expanded into one run config per cell, budget and seed.

A cell is a method and its settings over the spec's shared `settings`; a list value of a setting that is not
itself a list (`n: [1, 4, 16]`) is the cell's budget axis, one run per value. Each run is named
`<cell>-<key><value>-seed<S>` and is a normal run folder under `<work-dir>/<name>/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferencekit import errors
from inferencekit.config import RUNTIME_KEYS, RUNTIME_MODEL_ARGS, RunConfig, resolve_config
from inferencekit.errors import UserError
from inferencekit.files import read_yaml_mapping

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Set by the sweep for each run (or by the command line), never in a spec.
RESERVED = ("seed", "work_dir", "exp_name", "shard")
# Settings whose value is a list already: a list there is the value, not a budget axis.
LIST_SETTINGS = frozenset(k for k, f in RunConfig.model_fields.items() if "list[" in str(f.annotation))
# Spec keys that change neither generation nor grading: a resumed sweep may differ in these.
SPEC_RUNTIME_KEYS = ("baseline",)
SPEC = "sweep.yaml"  # the spec a sweep folder was run with


class Cell(BaseModel):
    """One cell: a name, optional seeds of its own, and run settings (any key of a run's config)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=_NAME)
    seeds: list[int] | None = Field(None, min_length=1)  # default: the spec's

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    settings: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    baseline: str | None = None
    cells: list[Cell] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedRun:
    """One (cell, budget, seed) of a sweep; `settings` are the spec's shared settings with the cell's over them."""

    cell: str
    budget_key: str
    budget: Any
    seed: int
    exp_name: str
    settings: dict[str, Any]

    def config(self, folder: Path, runtime: dict[str, Any] | None = None) -> RunConfig:
        """The run's config: its settings as a config file, the model preset below, the sweep's own keys above."""
        from inferencekit.models import model_defaults

        top = {**(runtime or {}), "seed": self.seed, "work_dir": str(folder), "exp_name": self.exp_name}
        try:
            return resolve_config(runtime=top, config_file=self.settings, preset_defaults=model_defaults)
        except UserError as exc:
            raise UserError(f"cell {self.cell!r} ({self.exp_name}): {exc}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; every mistake is a one-line `UserError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec not found: {path}")
    return parse_spec(read_yaml_mapping(path, "sweep spec"), str(path))


def parse_spec(data: dict[str, Any], source: str = "sweep spec") -> SweepSpec:
    try:
        spec = SweepSpec(**data)
    except ValidationError as exc:
        raise UserError(errors.validation_message(exc, f"sweep spec {source}", SweepSpec.model_fields)) from None
    _check(spec, source)
    return spec


def _check(spec: SweepSpec, source: str) -> None:
    def fail(message: str) -> UserError:
        return UserError(f"invalid sweep spec {source}: {message}")

    names = [c.name for c in spec.cells]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise fail(f"cell name(s) {', '.join(dupes)} used twice; each cell needs its own name")
    if spec.baseline is not None and spec.baseline not in names:
        raise fail(f"baseline {spec.baseline!r} is not a cell; accepted: {', '.join(names)}")
    accepted = ", ".join(k for k in RunConfig.model_fields if k not in RESERVED)
    for where, settings in [("settings", spec.settings), *((f"cell {c.name!r}", c.settings) for c in spec.cells)]:
        for key in settings:
            if key in RESERVED:
                raise fail(f"{where}: {key!r} is set by the sweep (seeds: in the spec; work dir, shard: flags)")
            if key not in RunConfig.model_fields:
                raise fail(f"{where}: unknown setting {key!r} (accepted: {accepted})")
    for key, value in spec.settings.items():
        if isinstance(value, list) and key not in LIST_SETTINGS:
            raise fail(f"settings: {key!r} is a list; budget axes belong in a cell")
    for cell in spec.cells:
        axes = _axes(cell.settings)
        if len(axes) > 1:
            raise fail(f"cell {cell.name!r}: one budget axis (list value) per cell, got {', '.join(axes)}; "
                       "make one cell per combination")
        for key in axes:
            values = cell.settings[key]
            if not values or len({repr(v) for v in values}) < len(values):
                raise fail(f"cell {cell.name!r}: {key} must list distinct values (got {values!r})")
    runs = [r.exp_name for r in plan(spec)]
    if twice := sorted({r for r in runs if runs.count(r) > 1}):
        raise fail(f"run name(s) {', '.join(twice)} would be made twice (repeated seeds, or cell names that "
                   "clash with another cell's budgets); rename a cell")


def _axes(settings: dict[str, Any]) -> list[str]:
    return [k for k, v in settings.items() if isinstance(v, list) and k not in LIST_SETTINGS]


def _merge(shared: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = dict(shared)
    for key, value in own.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else value
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """Every (cell, budget, seed) in spec order: cells, then budgets, then seeds."""
    runs = []
    for cell in spec.cells:
        settings = _merge(spec.settings, cell.settings)
        axes = _axes(cell.settings)
        key = axes[0] if axes else "n"
        values = cell.settings[key] if axes else [None]
        for value in values:
            for seed in cell.seeds or spec.seeds:
                budget = f"-{key}{value}" if axes else ""
                runs.append(PlannedRun(
                    cell=cell.name, budget_key=key, budget=value, seed=seed,
                    exp_name=_safe(f"{cell.name}{budget}-seed{seed}"),
                    settings=settings if value is None else {**settings, key: value},
                ))
    return runs


def changed_keys(old: SweepSpec, new: SweepSpec) -> list[str]:
    """What differs between two specs in keys that define results (`key: old -> new`), runtime keys left out."""
    a, b = _result_view(old), _result_view(new)
    return [f"{k}: {a.get(k, '(none)')!r} -> {b.get(k, '(none)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def _result_view(spec: SweepSpec) -> dict[str, Any]:
    """The spec as dotted keys (`settings.temperature`, `cells.beam.n`, `seeds`) minus what does not change results."""
    out: dict[str, Any] = {"seeds": spec.seeds}

    def add(prefix: str, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            if key in RUNTIME_KEYS or key in SPEC_RUNTIME_KEYS:
                continue
            if key == "model_args" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in RUNTIME_MODEL_ARGS}
            out[f"{prefix}.{key}"] = value

    add("settings", spec.settings)
    for cell in spec.cells:
        add(f"cells.{cell.name}", {**cell.settings, "seeds": cell.seeds})
    return out


def read_spec(folder: str | Path) -> SweepSpec:
    """The spec a sweep folder was run with."""
    path = Path(folder) / SPEC
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep folder (no {SPEC})")
    return parse_spec(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))
