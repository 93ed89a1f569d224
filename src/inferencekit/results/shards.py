"""Shards: K disjoint slices of one experiment, run as separate jobs, merged into one run folder.

`--shard I/K` runs the problems at positions I-1, I-1+K, I-1+2K, ... of the dataset (after `--limit`)
into `<run>/shard-I-of-K/`, itself a complete run folder (config, predictions, metrics, log), so each
shard resumes on its own and K jobs on a shared file system never write the same file. `merge`
checks that all K shards are there, finished and run with the same settings, then writes the whole
experiment's `config.yaml`, `predictions.jsonl` and `metrics.json` in `<run>/`, where `evaluate`,
`compare` and `report` read it like any run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from inferencekit.config import RunConfig, config_from_dict, parse_shard
from inferencekit.errors import UserError
from inferencekit.files import write_together
from inferencekit.results.lock import run_folder_lock
from inferencekit.results.records import Record, lines
from inferencekit.results.store import CONFIG, MERGED, METRICS, PREDICTIONS, RunStore

_FOLDER = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_dir(run_dir: Path, shard: str | None) -> Path:
    """The folder a shard writes to (the run folder itself when not sharded)."""
    if shard is None:
        return run_dir
    i, k = parse_shard(shard)
    return run_dir / f"shard-{i}-of-{k}"


def select_shard(dataset, shard: str | None):
    """The dataset with only the shard's problems (every K-th, starting at I-1); unchanged when not sharded."""
    if shard is None:
        return dataset
    i, k = parse_shard(shard)
    return dataclasses.replace(dataset, samples=[s for pos, s in enumerate(dataset.samples) if pos % k == i - 1])


def merge(run_dir: str | Path) -> dict[str, Any]:
    """Merge a sharded experiment's shards into its run folder; return the whole experiment's metrics."""
    run_dir = Path(run_dir)
    shards = _find_shards(run_dir)
    with run_folder_lock(run_dir, "merge"):
        return _merge(run_dir, shards)


def _merge(run_dir: Path, shards: dict[int, RunStore]) -> dict[str, Any]:
    from inferencekit.datasets import load_dataset
    from inferencekit.results.evaluate import apply_votes, compute_metrics

    configs = {i: _config(store) for i, store in shards.items()}
    first = configs[1]
    for i, config in configs.items():
        _check_same(first, config, i, len(shards))
    if (run_dir / PREDICTIONS).exists() and not (run_dir / MERGED).exists():
        raise UserError(f"{run_dir} already holds an unsharded run; merge its shards into another experiment")

    dataset = load_dataset(
        first.dataset, data_dir=first.data_dir, split=first.split, input_field=first.input_field,
        reference_field=first.reference_field, num_shots=first.num_shots, limit=first.limit,
    )
    k = len(shards)
    records: list[Record] = []
    for i, store in shards.items():
        wanted = {s.index for s in select_shard(dataset, f"{i}/{k}").samples}
        finished = [r for r in store.records() if r.index in wanted and not r.failed]
        if len(finished) < len(wanted):
            raise UserError(
                f"shard {i}/{k} is unfinished ({len(finished)} of {len(wanted)} problems); "
                "rerun its command to resume it, then merge again"
            )
        records.extend(finished)
    records.sort(key=lambda r: r.index)

    whole = first.model_copy(update={"shard": None})
    apply_votes([r for r in records if set(whole.votes) - set(r.correct)], whole.votes, whole.aggregation)
    metrics = compute_metrics(records, whole.votes, whole.aggregation, seed=whole.seed)
    # one change (journal, files.recover): a crash part-way can neither mix files nor look like an unsharded run
    write_together(run_dir, {CONFIG: whole.to_yaml(), PREDICTIONS: lines(records),
                             METRICS: json.dumps(metrics, indent=2) + "\n",
                             MERGED: json.dumps({"shards": k, "problems": len(records)}) + "\n"})
    return metrics


def _find_shards(run_dir: Path) -> dict[int, RunStore]:
    found: dict[int, dict[int, RunStore]] = {}
    for path in sorted(run_dir.glob("shard-*-of-*")):
        match = _FOLDER.match(path.name)
        if match and (path / CONFIG).is_file():
            found.setdefault(int(match[2]), {})[int(match[1])] = RunStore(path)
    if not found:
        raise UserError(f"{run_dir} holds no shard folders (shard-I-of-K); run with --shard I/K first")
    if len(found) > 1:
        raise UserError(f"{run_dir} holds shards of different counts (K = {', '.join(map(str, sorted(found)))})")
    ((k, shards),) = found.items()
    missing = sorted(set(range(1, k + 1)) - set(shards))
    if missing:
        raise UserError(f"shard(s) {', '.join(f'{i}/{k}' for i in missing)} not run yet in {run_dir}")
    return dict(sorted(shards.items()))


def _config(store: RunStore) -> RunConfig:
    return config_from_dict(store.read_config(), source=str(store.path / CONFIG))


def _check_same(first: RunConfig, other: RunConfig, i: int, k: int) -> None:
    a, b = _merge_keys(first), _merge_keys(other)
    changed = sorted(key for key in a if a[key] != b.get(key))
    if changed:
        details = ", ".join(f"{key}: {a[key]!r} vs {b.get(key)!r}" for key in changed)
        raise UserError(f"shard {i}/{k} was run with other settings than shard 1/{k} ({details}); not merged")


def _merge_keys(config: RunConfig) -> dict[str, Any]:
    """Settings that must agree between shards: those defining results, and the problem set."""
    return {**config.result_keys(), "limit": config.limit}
