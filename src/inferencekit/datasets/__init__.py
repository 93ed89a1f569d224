"""Benchmarks: named datasets from a local data folder or the hub, and any local table file.

A dataset is a list of `Sample(index, input, reference)`. Named datasets are YAML presets under
`presets/datasets/` (add your own there or in `$INFERENCEKIT_PRESETS/datasets/`), or Python
classes registered with `register_dataset`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferencekit.errors import UserError, first_line
from inferencekit.grading.style import answer_style
from inferencekit.presets import load_preset, preset_names
from inferencekit.registry import Registry

DATA_DIR_ENV = "INFERENCEKIT_DATA_DIR"
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_INPUT_FIELDS = ("input", "question", "problem", "prompt")
_REFERENCE_FIELDS = ("reference", "answer", "gold", "target", "solution")


@dataclass
class Sample:
    """One benchmark problem: `input` is the problem text, `reference` the gold answer."""

    index: int
    input: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    samples: list[Sample]
    style: str = "math"  # answer style for grading: "math" or "gsm8k"
    shots: list[Sample] = field(default_factory=list)  # worked examples for k-shot prompts
    files: list[Path] = field(default_factory=list)  # the local files read (hashed in a run's provenance)
    hub: dict[str, Any] | None = None  # where on the hub it came from, when it did


DatasetLoader = Callable[..., Dataset]
LOADERS: Registry[DatasetLoader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a loader `fn(data_dir, split, num_shots) -> Dataset` under `name`."""
    return LOADERS.register(name)


def dataset_names() -> list[str]:
    return sorted(set(LOADERS) | set(preset_names("datasets")))


def dataset_label(name_or_path: str) -> str:
    """Name of a dataset for run folder names."""
    path = Path(name_or_path)
    return path.stem if path.suffix in TABLE_SUFFIXES else path.name


def gsm8k_reference(answer: str) -> str:
    """Gold answer of a GSM8K worked solution: the number after '####', without commas."""
    tail = answer.split("####")[-1].strip()
    return tail.replace(",", "").rstrip(".")


_REFERENCE_PARSERS: dict[str, Callable[[str], str]] = {"gsm8k": gsm8k_reference}


def load_dataset(
    name_or_path: str,
    *,
    data_dir: str | None = None,
    split: str = "test",
    input_field: str | None = None,
    reference_field: str | None = None,
    num_shots: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load a named dataset or a local file; the first `limit` samples when given."""
    if name_or_path in LOADERS:
        dataset = LOADERS[name_or_path](data_dir=data_dir, split=split, num_shots=num_shots)
    elif (preset := load_preset("datasets", name_or_path)) is not None:
        dataset = _from_preset(name_or_path, preset, data_dir, split, input_field, reference_field, num_shots)
    elif Path(name_or_path).suffix in TABLE_SUFFIXES or Path(name_or_path).exists():
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"dataset file not found: {path}")
        rows = read_table(path)
        style = answer_style(str(path), reference=str(rows[0].get(reference_field or "answer", "")) if rows else "")
        parser = gsm8k_reference if style == "gsm8k" else None
        samples = _to_samples(rows, input_field, reference_field, parser, str(path))
        dataset = Dataset(name=dataset_label(name_or_path), samples=samples, style=style, files=[path])
    else:
        raise UserError(
            f"unknown dataset {name_or_path!r}; accepted: {', '.join(dataset_names())}, "
            f"or a {'/'.join(TABLE_SUFFIXES)} file"
        )
    if num_shots > len(dataset.shots):
        raise UserError(f"dataset {dataset.name} has {len(dataset.shots)} worked examples; asked for {num_shots} shots")
    dataset.shots = dataset.shots[:num_shots]
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    return dataset


def _from_preset(name, preset, data_dir, split, input_field, reference_field, num_shots) -> Dataset:
    parser = _REFERENCE_PARSERS.get(preset.get("reference_parser", ""))
    fields = (input_field or preset.get("input_field"), reference_field or preset.get("reference_field"))
    rows, source = _preset_rows(name, preset, data_dir, split)
    samples = _to_samples(rows, *fields, parser, name)
    sources = [source]
    shots: list[Sample] = []
    if num_shots and preset.get("shots_split"):
        shot_rows, shot_source = _preset_rows(name, preset, data_dir, preset["shots_split"])
        shots = _to_samples(shot_rows[:num_shots], *fields, parser, name)
        sources.append(shot_source)
    files = [s for s in sources if isinstance(s, Path)]
    hub = next((s for s in sources if isinstance(s, dict)), None)
    style = answer_style(name, declared=preset.get("style"))
    return Dataset(name=name, samples=samples, style=style, shots=shots, files=files, hub=hub)


def _preset_rows(name: str, preset: dict, data_dir: str | None, split: str) -> tuple[list[dict], Path | dict]:
    """A preset's rows of one split, and where they came from (a file, or the hub's id and fingerprint)."""
    if preset.get("package_data"):  # shipped inside the package: needs no data folder
        data_dir, name = str(Path(__file__).parent.parent / "presets" / "data"), preset["package_data"]
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        folder = Path(data_dir).expanduser() / name
        for suffix in TABLE_SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                return read_table(folder / f"{split}{suffix}"), folder / f"{split}{suffix}"
        raise UserError(f"dataset {name}: no {split}.jsonl/.json/.csv/.parquet in {folder}")
    hub = preset.get("hub")
    if not hub:
        raise UserError(f"dataset {name} has no hub source; give --data-dir DIR (with {name}/{split}.jsonl)")
    return _hub_rows(name, hub, split)


def _hub_rows(name: str, hub: dict, split: str) -> tuple[list[dict], dict]:
    import datasets as hf_datasets

    hub_split = hub.get("split", split) if split == "test" else split
    try:
        table = hf_datasets.load_dataset(hub["path"], hub.get("name"), split=hub_split)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise UserError(
            f"dataset {name}: could not load {hub['path']} from the hub ({first_line(exc)}); "
            f"offline, give --data-dir DIR or set {DATA_DIR_ENV}"
        ) from None
    source = {"path": hub["path"], "name": hub.get("name"), "split": hub_split,
              "fingerprint": getattr(table, "_fingerprint", None)}
    return [dict(row) for row in table], source


def read_table(path: Path) -> list[dict]:
    """Rows of a .jsonl, .json (list of objects), .csv or .parquet file; `UserError` for a row that is no object."""
    rows = _read_rows(path)
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise UserError(f"dataset file {path}: row {bad} is a JSON {type(rows[bad]).__name__}, not an object "
                        "with named fields")
    return rows


def _read_rows(path: Path) -> list[Any]:
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} or a single split
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            return list(data)
        if path.suffix in (".csv", ".parquet"):
            import datasets as hf_datasets

            kind = "csv" if path.suffix == ".csv" else "parquet"
            return [dict(r) for r in hf_datasets.load_dataset(kind, data_files=str(path), split="train")]
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise UserError(f"cannot read dataset file {path}: {exc}") from None
    raise UserError(f"unsupported dataset file {path}; accepted: {', '.join(TABLE_SUFFIXES)}")


def _to_samples(
    rows: list[dict],
    input_field: str | None,
    reference_field: str | None,
    parser: Callable[[str], str] | None,
    source: str,
) -> list[Sample]:
    if not rows:
        raise UserError(f"dataset {source} is empty")
    if not isinstance(rows[0], dict):
        raise UserError(f"dataset {source}: rows must be objects with named fields")
    keys = list(rows[0])
    input_field = input_field or next((k for k in _INPUT_FIELDS if k in keys), None)
    reference_field = reference_field or next((k for k in _REFERENCE_FIELDS if k in keys), None)
    for role, name in (("input", input_field), ("reference", reference_field)):
        if name is None or name not in keys:
            raise UserError(
                f"dataset {source}: no {role} field {name or ''!s} among {', '.join(keys)}; "
                f"name it with --{role}-field"
            )
    samples = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or input_field not in row or reference_field not in row:
            raise UserError(f"dataset {source}: row {i} lacks the field {input_field!r} or {reference_field!r}")
        reference = _answer_text(row[reference_field])
        meta = {k: v for k, v in row.items() if k not in (input_field, reference_field) and _jsonable(v)}
        if parser:  # keep the worked solution: k-shot prompts show it
            meta.setdefault("solution", str(row[reference_field]))
            reference = parser(reference)
        samples.append(Sample(index=i, input=str(row[input_field]), reference=reference, meta=meta))
    return samples


def _answer_text(value: Any) -> str:
    """Gold answers as text; integral floats (AMC's 27.0) lose their '.0'. Beyond 2**53 a float is no exact
    integer (1e23 is 99999999999999991611392 as one), so it keeps its own short form ("1e+23")."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return re.sub(r"\s+", " ", str(value)).strip()


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
