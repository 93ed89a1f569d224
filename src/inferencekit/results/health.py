"""Why outputs went wrong without being wrong: failed problems, truncated outputs, open reasoning, no answer.

A problem whose generation raised `GenerationError` (after the backend's own retries) is stored as a
failed record (`"failed": true`, `"error": "<one line>"`): it counts in no accuracy, and a resumed run
redoes it (the store keeps the last record per index). Truncated outputs are still graded; their rate
is reported beside the accuracy so a too small `--max-new-tokens` shows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferencekit.results.records import Record



def unclosed_think(text: str) -> bool:
    """True when a `<think>` block is left open: the last `<think>` comes after the last `</think>`."""
    opened = text.rfind("<think>")
    return opened != -1 and opened > text.rfind("</think>")


def health(records: Sequence[Record]) -> dict[str, Any]:
    """Counts and rates over the candidates of the problems that ran, and the failed problems."""
    ran = [r for r in records if not r.failed]
    cands = [c for r in ran for c in r.candidates]
    total = len(cands)
    counts = {
        "truncated": sum(c.finish_reason == "length" for c in cands),
        "unclosed_think": sum(bool(unclosed_think(c.text) if c.unclosed_think is None else c.unclosed_think)
                              for c in cands),
        "no_answer": sum(c.answer is None for c in cands),
        "errored": sum(c.finish_reason == "error" for c in cands),
    }
    out: dict[str, Any] = {"candidates": total, **counts}
    for key, value in counts.items():
        out[f"{key}_rate"] = round(value / total, 6) if total else 0.0
    out["failed_samples"] = len(records) - len(ran)
    return out
