"""Where inferencekit's grader and plain math-verify disagree on a run's candidates.

``inferencekit evaluate RUN --grader ...`` prints this so a user sees, on their own outputs, what the
choice of grader changes (lighteval and lm-eval grade with plain math-verify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inferencekit.config import config_from_dict
from inferencekit.grading.pool import Grader
from inferencekit.results.records import Record, graded_style
from inferencekit.results.store import CONFIG, RunStore


@dataclass(frozen=True)
class Disagreement:
    """One candidate graded differently: each grader's extracted answer and verdict."""

    index: int  # the sample's index in the run
    candidate: int  # which of its candidates
    gold: str
    ours: str | None
    ours_correct: bool
    plain: str | None
    plain_correct: bool


def grader_disagreements(
    records: Sequence[Record], style: str, box_match: str = "last", grader: Grader | None = None
) -> list[Disagreement]:
    """Every candidate of ``records`` that the two graders judge differently, in run order.

    Both gradings go through the same worker pool and time limits (``grader``, or a new default pool).
    Failed samples (no candidates) are skipped.
    """
    owners = [(r, k) for r in records for k in range(len(r.candidates))]
    items = [(r.candidates[k].text, str(r.reference), style) for r, k in owners]
    pool = grader if grader is not None else Grader()
    try:
        ours = pool.extract_and_grade_many(items, box_match, engine="inferencekit")
        plain = pool.extract_and_grade_many(items, box_match, engine="math-verify")
    finally:
        if grader is None:
            pool.close()
    return [
        Disagreement(r.index, k, str(r.reference), a, ok, b, plain_ok)
        for (r, k), (a, ok), (b, plain_ok) in zip(owners, ours, plain, strict=True)
        if ok != plain_ok
    ]


def format_disagreements(found: Sequence[Disagreement], n_samples: int, show: int = 5) -> str:
    """A few lines: how many samples the graders disagree on, then the first ``show`` candidates."""
    samples = len({d.index for d in found})
    lines = [f"graders disagree on {samples} of {n_samples} samples ({len(found)} candidates): "
             "inferencekit vs math-verify"]
    for d in found[:show]:
        lines.append(
            f"  sample {d.index} candidate {d.candidate}: inferencekit {_short(d.ours)} ({_mark(d.ours_correct)}), "
            f"math-verify {_short(d.plain)} ({_mark(d.plain_correct)}), gold {_short(d.gold)}"
        )
    if len(found) > show:
        lines.append(f"  ... and {len(found) - show} more")
    return "\n".join(lines)


def report_disagreements(run_dir: str | Path, box_match: str | None = None, show: int = 5) -> str:
    """Read a run folder, grade its candidates both ways, and format where the graders differ."""
    store = RunStore(run_dir)
    config = config_from_dict(store.read_config(), f"{store.path}/{CONFIG}")
    records = [r for r in store.records() if not r.failed]
    style = graded_style(records, config.dataset)
    with Grader(workers=config.grading_workers, timeout=config.grading_timeout) as grader:
        found = grader_disagreements(records, style, box_match or config.box_match, grader)
    return format_disagreements(found, len(records), show)


def _short(answer: str | None, width: int = 40) -> str:
    if answer is None:
        return "(none)"
    text = " ".join(answer.split())
    return "'" + (text if len(text) <= width else text[: width - 3] + "...") + "'"


def _mark(correct: bool) -> str:
    return "right" if correct else "wrong"
