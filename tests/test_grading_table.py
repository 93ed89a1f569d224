"""The labelled table (tests/grading_cases.py) through `grade` and through plain math-verify.

Prints both agreements (run with -s to see them); `grade` must agree on every case but the known
exceptions below, and never do worse than plain math-verify.
"""

from __future__ import annotations

from collections import Counter

import pytest

from grading_cases import CASES
from inferencekit.grading import Grader, grade
from inferencekit.grading.engine import plain_grade
from inferencekit.grading.equivalence import GradingTimeout, time_limit

# (output, gold) pairs that `grade` is known to get wrong, each with the reason. None at present.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _style(kind: str) -> str:
    return "gsm8k" if kind == "gsm8k" else "math"


def _plain(text: str, gold: str) -> bool:
    try:
        with time_limit(10.0):
            return plain_grade(text, gold)
    except GradingTimeout:
        return False


def test_table_is_large_wide_and_has_near_misses() -> None:
    assert len(CASES) >= 300
    assert sum(1 for *_, ok, _ in CASES if not ok) >= 0.3 * len(CASES)
    kinds = Counter(kind for *_, kind in CASES)
    for kind in ("interval", "set", "tuple", "matrix", "units", "percent", "currency", "degrees", "text",
                 "equation", "negative", "choice", "answer-set", "repeating", "thousands", "final-answer",
                 "no-box", "think", "gsm8k", "complex", "trig", "scientific"):
        assert kinds[kind] >= 3, kind
    assert len({(text, gold) for text, gold, *_ in CASES}) == len(CASES)  # no case twice


@pytest.mark.timeout(1200)
def test_grade_agrees_with_the_labels_and_beats_plain_math_verify() -> None:
    ours = [grade(text, gold, _style(kind)) for text, gold, _, kind in CASES]
    plain = [_plain(text, gold) for text, gold, *_ in CASES]
    expected = [ok for *_, ok, _ in CASES]
    agree = sum(a == e for a, e in zip(ours, expected, strict=True))
    agree_plain = sum(a == e for a, e in zip(plain, expected, strict=True))
    print(f"\nlabelled table: {len(CASES)} cases; grade agrees on {agree}, plain math-verify on {agree_plain}")
    wrong = [(text, gold, ok) for (text, gold, ok, _), got in zip(CASES, ours, strict=True) if got != ok]
    for text, gold, ok in wrong:
        print(f"  grade disagrees: {text[-80:]!r} vs gold {gold!r} (expected {ok})")
    assert [(t, g) for t, g, _ in wrong if (t, g) not in KNOWN_EXCEPTIONS] == []
    assert agree >= agree_plain


def test_the_worker_pool_gives_the_same_verdicts() -> None:
    items = [(text, gold, _style(kind)) for text, gold, _, kind in CASES]
    with Grader(workers=2, timeout=10.0) as grader:
        verdicts = grader.grade_many(items)
        answers = grader.extract_and_grade_many(items)
    assert verdicts == [grade(*item) for item in items]
    assert [verdict for _, verdict in answers] == verdicts
