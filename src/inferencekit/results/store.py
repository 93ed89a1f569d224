"""A run's folder: resolved config, predictions appended one line per finished sample, metrics, log.

Writes never lose finished work: predictions are appended and flushed (and fsynced) one line at a
time; config.yaml and metrics.json are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from inferencekit.errors import UserError, first_line
from inferencekit.files import write_atomic
from inferencekit.results.records import Record

CONFIG = "config.yaml"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
LOG = "run.log"
PROVENANCE = "provenance.json"
EVALUATIONS = "evaluations"
MERGED = "merged.json"  # written by merge: which shards the run folder's files came from


def run_dir_for(work_dir: str | Path, dataset: str, model: str, reward_model: str | None, exp_name: str) -> Path:
    """`<work_dir>/<dataset>/<model>+<reward_model or none>+<exp_name>/` (DESIGN.md)."""
    parts = [_safe(model), _safe(reward_model or "none"), _safe(exp_name)]
    return Path(work_dir) / _safe(dataset) / "+".join(parts)


def _safe(name: str) -> str:
    """`name` as one path component: no separators, and no leading dot (so never `.` or `..`, nor hidden)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lstrip(".") or "x"


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def read_config(self) -> dict[str, Any]:
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no {CONFIG})")
        try:
            data = yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise UserError(f"{self.path}/{CONFIG} cannot be read as a run configuration")
        return data

    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / CONFIG, text)

    def records(self) -> list[Record]:
        """Finished samples, one per index (the last record wins); a torn last line is skipped."""
        by_index: dict[int, Record] = {}
        for record in self._read_lines():
            by_index[record.index] = record
        return [by_index[i] for i in sorted(by_index)]

    def _read_lines(self) -> Iterator[Record]:
        if not self.predictions_path.is_file():
            return
        with self.predictions_path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-write: that sample is redone
                try:
                    record = Record.from_line(raw)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    logging.getLogger("inferencekit").warning("skipping a corrupt line in %s", self.predictions_path)
                    continue
                yield record

    def repair(self) -> None:
        """Cut a torn last line off the predictions file so appends start on a fresh line."""
        path = self.predictions_path
        if not path.is_file() or path.stat().st_size == 0:
            return
        with os.fdopen(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Record) -> None:
        """Append one finished sample and make it durable before returning."""
        line = record.to_line().encode("utf-8")
        fd = os.open(self.predictions_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:  # never through a symbolic link (a received folder's)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_atomic(self.path / METRICS, json.dumps(metrics, indent=2) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        path = self.path / METRICS
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{path} is not valid JSON ({first_line(exc)}); delete it to have it recomputed") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold a JSON object; delete it to have it recomputed")
        return data

    def set_aside(self) -> Path | None:
        """Move old predictions, metrics, provenance and evaluations aside (for --no-resume); returns the
        backup folder."""
        old = [self.path / n for n in (PREDICTIONS, METRICS, PROVENANCE, EVALUATIONS) if (self.path / n).exists()]
        if not old:
            return None
        k = 1
        while (self.path / f"previous-{k}").exists():
            k += 1
        backup = self.path / f"previous-{k}"
        backup.mkdir()
        for p in old:
            os.replace(p, backup / p.name)
        return backup
