"""Compare two runs sample by sample: the 2x2 table of right/wrong, an exact McNemar test, the disagreements.

Only indices both runs finished are compared; how many were left out on each side is reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from inferencekit.errors import UserError
from inferencekit.results.lock import settle
from inferencekit.results.records import Record
from inferencekit.results.store import PREDICTIONS, RunStore

CELLS = ("both_right", "a_only", "b_only", "both_wrong")
LISTED = {"a_only": "A right, B wrong", "b_only": "A wrong, B right", "both_wrong": "both wrong"}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs b and c."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def load_records(run_dir: str | Path) -> dict[int, Record]:
    """A run folder's finished samples by index; `UserError` when it is not a run folder or holds none."""
    store = RunStore(run_dir)
    if not store.path.is_dir() or not (store.exists() or store.predictions_path.is_file()):
        raise UserError(f"{run_dir} is not a run folder (no config.yaml or {PREDICTIONS})")
    settle(store.path)  # an update a crash left half done is finished first
    records = {r.index: r for r in store.records()}
    if not records:
        raise UserError(f"{run_dir} holds no finished samples ({PREDICTIONS} is empty or missing)")
    return records


def _votes(records: list[Record]) -> list[str]:
    """Votes graded in every one of `records`, in the order the first record lists them."""
    common = set.intersection(*(set(r.correct) for r in records))
    return [v for v in records[0].correct if v in common]


def compare_runs(run_a: str | Path, run_b: str | Path, vote: str | None = None, show: int = 5) -> dict[str, Any]:
    """Cells, accuracies and McNemar p-value over the shared indices, and up to `show` samples per listed cell."""
    recs_a, recs_b = load_records(run_a), load_records(run_b)
    shared = sorted(set(recs_a) & set(recs_b))
    if not shared:
        raise UserError(f"{run_a} and {run_b} share no sample indices; nothing to compare")
    votes_a = _votes([recs_a[i] for i in shared])
    votes_b = set(_votes([recs_b[i] for i in shared]))
    both = [v for v in votes_a if v in votes_b]
    if vote is None:
        if not both:
            raise UserError(f"the runs have no vote in common (A: {', '.join(votes_a) or 'none'}, "
                            f"B: {', '.join(sorted(votes_b)) or 'none'})")
        vote = both[0]
    elif vote not in both:
        raise UserError(f"vote {vote!r} is not graded in both runs; accepted: {', '.join(both) or 'none'}")

    cells: dict[str, list[int]] = {c: [] for c in CELLS}
    for i in shared:
        ok_a, ok_b = bool(recs_a[i].correct[vote]), bool(recs_b[i].correct[vote])
        cell = "both_right" if ok_a and ok_b else "a_only" if ok_a else "b_only" if ok_b else "both_wrong"
        cells[cell].append(i)
    n = len(shared)
    b, c = len(cells["a_only"]), len(cells["b_only"])
    right_a, right_b = len(cells["both_right"]) + b, len(cells["both_right"]) + c
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "vote": vote,
        "shared": n,
        "only_in_a": len(set(recs_a) - set(recs_b)),
        "only_in_b": len(set(recs_b) - set(recs_a)),
        "cells": {k: len(v) for k, v in cells.items()},
        "accuracy_a": right_a / n,
        "accuracy_b": right_b / n,
        "mcnemar_p": mcnemar_exact(b, c),
        "samples": {
            cell: [_sample(recs_a[i], recs_b[i], vote) for i in cells[cell][: max(0, show)]] for cell in LISTED
        },
    }


def _sample(a: Record, b: Record, vote: str) -> dict[str, Any]:
    return {
        "index": a.index,
        "reference": a.reference,
        "answer_a": a.predictions.get(vote),
        "answer_b": b.predictions.get(vote),
        "input": a.input,
    }


def _cell(value: Any, width: int = 0) -> str:
    """A value as one markdown table cell: one line, pipes escaped, optionally shortened."""
    text = "-" if value is None else " ".join(str(value).split())
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("|", "\\|")


def format_markdown(result: dict[str, Any]) -> str:
    """The comparison as markdown: the 2x2 table, accuracies, p-value and the listed samples."""
    cells, n = result["cells"], result["shared"]
    lines = [
        f"# {result['run_a']} (A) vs {result['run_b']} (B), vote `{result['vote']}`",
        "",
        f"Compared on {n} shared samples."
        + (
            f" The runs cover different samples: compared on the intersection "
            f"({result['only_in_a']} only in A, {result['only_in_b']} only in B, left out)."
            if result["only_in_a"] or result["only_in_b"]
            else ""
        ),
        "",
        "| | B right | B wrong |",
        "|---|---:|---:|",
        f"| **A right** | {cells['both_right']} | {cells['a_only']} |",
        f"| **A wrong** | {cells['b_only']} | {cells['both_wrong']} |",
        "",
        f"Accuracy A {result['accuracy_a']:.1%}, B {result['accuracy_b']:.1%} "
        f"({result['accuracy_b'] - result['accuracy_a']:+.1%} B - A).",
        f"Exact McNemar test on the {cells['a_only'] + cells['b_only']} discordant samples: "
        f"p = {result['mcnemar_p']:.4g}.",
    ]
    for cell, title in LISTED.items():
        shown = result["samples"][cell]
        if not shown:
            continue
        lines += ["", f"## {title} ({len(shown)} of {cells[cell]} shown)", "",
                  "| index | reference | answer A | answer B | input |", "|---:|---|---|---|---|"]
        lines += [
            f"| {s['index']} | {_cell(s['reference'])} | {_cell(s['answer_a'])} | {_cell(s['answer_b'])} "
            f"| {_cell(s['input'], 100)} |"
            for s in shown
        ]
    return "\n".join(lines) + "\n"


def format_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n"
