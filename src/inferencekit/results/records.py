"""One line of `predictions.jsonl` as a type: a finished sample (`Record`) and its candidates (`CandidateRecord`).

`Record.from_dict` is the one reader and `Record.to_dict` the one writer of the on-disk form that
DESIGN.md fixes (`index`, `input`, `reference`, `candidates` with `text`, `answer`, `step_scores`,
`tokens`, then `predictions`, `correct`, `usage`). Fields added later (a candidate's `finish_reason`,
`unclosed_think`, `usage` share, `correct`; a record's `style`, `prompt`, `failed`, `error`) are optional:
a run folder written before them still loads, and what an old line lacks is not invented when it is
written back. Keys this version does not know are kept (`extra`) and written back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferencekit.redact import redact


@dataclass
class CandidateRecord:
    """One stored candidate: its text and scores, and what grading found in it."""

    text: str
    tokens: int = 0
    step_scores: list[float | None] = field(default_factory=list)
    answer: str | None = None  # the extracted answer (set by grading)
    correct: bool | None = None  # graded against the reference; None before grading
    finish_reason: str | None = None  # stop, length or error; None in runs written before it was recorded
    unclosed_think: bool | None = None  # a <think> block left open (set by grading)
    usage: dict[str, float] | None = None  # its share of the problem's cost (set by attach_costs)
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateRecord:
        _check_types(data, _CANDIDATE_TYPES, "candidate")
        scores = data.get("step_scores") or []
        if any(isinstance(x, bool) or not isinstance(x, (int, float, type(None))) for x in scores):
            raise ValueError("candidate step_scores must be numbers")
        known = {k: data[k] for k in _CANDIDATE_KEYS if k in data}
        return cls(
            text=known.pop("text", ""),
            tokens=known.pop("tokens", 0) or 0,
            step_scores=list(known.pop("step_scores", None) or []),
            meta=dict(known.pop("meta", None) or {}),
            **known,
            extra={k: v for k, v in data.items() if k not in _CANDIDATE_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "tokens": self.tokens, "step_scores": self.step_scores,
                               "answer": self.answer}
        _put(out, "finish_reason", self.finish_reason)
        if self.meta:
            out["meta"] = self.meta
        _put(out, "usage", self.usage)
        _put(out, "correct", self.correct)
        _put(out, "unclosed_think", self.unclosed_think)
        return {**out, **self.extra}


_CANDIDATE_KEYS = ("text", "tokens", "step_scores", "answer", "correct", "finish_reason", "unclosed_think", "usage",
                   "meta")
_CANDIDATE_TYPES = {"text": (str,), "tokens": (int,), "step_scores": (list, type(None)), "answer": (str, type(None)),
                    "correct": (bool, type(None)), "finish_reason": (str, type(None)),
                    "unclosed_think": (bool, type(None)), "usage": (dict, type(None)), "meta": (dict, type(None))}


@dataclass
class Record:
    """One finished sample: its problem, candidates, votes (vote name -> answer / right) and usage.

    A failed problem (`failed`, with `error` in one line) has no candidates and counts in no accuracy.
    """

    index: int
    input: str = ""
    reference: Any = None
    candidates: list[CandidateRecord] = field(default_factory=list)
    predictions: dict[str, str | None] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    style: str | None = None  # the answer style it was graded with; None in old runs
    prompt: str | None = None
    failed: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record a line holds; `ValueError` when a field has the wrong type (a corrupt line: skipped, redone)."""
        _check_types(data, _RECORD_TYPES, "record")
        if "index" not in data or data["index"] < 0:
            raise ValueError("a record needs an index >= 0")
        return cls(
            index=data["index"],
            input=data.get("input", ""),
            reference=data.get("reference"),
            candidates=[CandidateRecord.from_dict(c) for c in data.get("candidates") or []],
            predictions=dict(data.get("predictions") or {}),
            correct=dict(data.get("correct") or {}),
            usage=dict(data.get("usage") or {}),
            style=data.get("style"),
            prompt=data.get("prompt"),
            failed=bool(data.get("failed", False)),
            error=data.get("error"),
            extra={k: v for k, v in data.items() if k not in _RECORD_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        _put(out, "style", self.style)
        out.update(input=self.input, reference=self.reference)
        _put(out, "prompt", self.prompt)
        out.update(candidates=[c.to_dict() for c in self.candidates], predictions=self.predictions,
                   correct=self.correct, usage=self.usage)
        if self.failed:
            out["failed"] = True
            out["error"] = redact(self.error or "")  # a server may echo a key in its error
        return {**out, **self.extra}

    def to_line(self) -> str:
        """The record as one line of `predictions.jsonl` (newline included)."""
        return json.dumps(self.to_dict(), ensure_ascii=False) + "\n"

    @classmethod
    def from_line(cls, line: str | bytes) -> Record:
        return cls.from_dict(json.loads(line))

    @property
    def has_scores(self) -> bool:
        """Every candidate carries step scores."""
        return all(c.step_scores for c in self.candidates)

    def mark_failed(self, error: str) -> None:
        """No candidates, no votes, the error in one line: a resumed run redoes it."""
        self.candidates, self.predictions, self.correct = [], {}, {}
        self.failed, self.error = True, error


_RECORD_KEYS = ("index", "input", "reference", "candidates", "predictions", "correct", "usage", "style", "prompt",
                "failed", "error")
_RECORD_TYPES = {"index": (int,), "input": (str,), "candidates": (list, type(None)), "predictions": (dict, type(None)),
                 "correct": (dict, type(None)), "usage": (dict, type(None)), "style": (str, type(None)),
                 "prompt": (str, type(None)), "failed": (bool,), "error": (str, type(None))}


def _check_types(data: Any, types: dict[str, tuple[type, ...]], what: str) -> None:
    """`ValueError` unless `data` is a mapping whose known keys hold values of the expected types.

    Strict on purpose (no int() of 0.9, no str() of a list): a line written by this toolkit always passes, and
    anything else is a corrupt line to redo rather than a guess.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a {what} must be a JSON object")
    for key, allowed in types.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ValueError(f"{what} field {key!r} has the wrong type ({type(value).__name__})")


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


def graded_style(records: Sequence[Record], dataset: str) -> str:
    """The answer style a stored run is graded with: the one its records carry, else the dataset's."""
    from inferencekit.grading.style import answer_style

    return answer_style(dataset, declared=next((r.style for r in records if r.style), None))


def lines(records: Sequence[Record]) -> str:
    """`predictions.jsonl`'s text for `records`, in the given order."""
    return "".join(r.to_line() for r in records)
