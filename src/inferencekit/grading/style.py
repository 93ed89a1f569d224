"""Which answer style a dataset uses: ``"math"`` (free-form LaTeX) or ``"gsm8k"`` (a number)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

AnswerStyle = Literal["math", "gsm8k"]

STYLES: tuple[AnswerStyle, ...] = ("math", "gsm8k")


def answer_style(dataset: str) -> AnswerStyle:
    """Map a style or dataset name (or a path to a dataset) to an answer style.

    ``"gsm8k"`` and any name, hub id or path component starting with ``gsm8k`` use GSM8K style;
    everything else (math500, aime24, amc23, unknown names) uses MATH style.
    """
    name = str(dataset).strip().lower()
    if name in STYLES:
        return name  # type: ignore[return-value]
    parts = PurePath(name.replace("\\", "/")).parts
    if any(part.startswith("gsm8k") for part in parts):
        return "gsm8k"
    return "math"
