"""Which answer style a data set uses: ``"math"`` (free-form LaTeX) or ``"gsm8k"`` (a number)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from inferencekit.errors import UserError

AnswerStyle = Literal["math", "gsm8k"]

STYLES: tuple[AnswerStyle, ...] = ("math", "gsm8k")


def answer_style(name: str, *, declared: str | None = None, reference: str | None = None) -> AnswerStyle:
    """The answer style that grades the data set ``name`` (a preset name, hub id or path), from the strongest
    evidence given (the one place that decides it):

    1. ``declared``: a style a dataset preset states, or one a run recorded with its samples;
    2. ``reference``: a gold answer read from a dataset file: GSM8K's ``#### N`` mark means GSM8K style,
       any other reference MATH style;
    3. the name: ``"gsm8k"`` and any name, hub id or path component starting with ``gsm8k`` use GSM8K
       style; everything else (math500, aime24, amc23, unknown names) uses MATH style.
    """
    if declared is not None:
        if str(declared).strip().lower() not in STYLES:
            raise UserError(f"unknown answer style {declared!r}; accepted: {', '.join(STYLES)}")
        return str(declared).strip().lower()  # type: ignore[return-value]
    if reference is not None:
        return "gsm8k" if "####" in str(reference) else "math"
    name = str(name).strip().lower()
    if name in STYLES:
        return name  # type: ignore[return-value]
    parts = PurePath(name.replace("\\", "/")).parts
    if any(part.startswith("gsm8k") for part in parts):
        return "gsm8k"
    return "math"


def is_gsm8k(style: str) -> bool:
    """Whether answers in ``style`` are read GSM8K's way; a ``ValueError`` for anything but a style
    (a data set's name goes through ``answer_style`` first)."""
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; accepted: {', '.join(STYLES)}")
    return style == "gsm8k"
