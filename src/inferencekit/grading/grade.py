"""Extract an answer from a model output and compare it with the gold answer."""

from __future__ import annotations

from inferencekit.grading.engine import ENGINES, plain_extract, plain_grade
from inferencekit.grading.equivalence import GradingTimeout, is_equiv, time_limit
from inferencekit.grading.extract import extract_candidates


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"grader must be one of {', '.join(ENGINES)}, got {engine!r}")


def grade_answer(
    text: str, gold: str, dataset: str = "math", box_match: str = "last", engine: str = "inferencekit"
) -> tuple[str | None, bool]:
    """The extracted answer and whether it is right, with no time limit (callers set one)."""
    check_engine(engine)
    if engine == "math-verify":
        return plain_extract(text), plain_grade(text, str(gold))
    candidates = extract_candidates(text, dataset, box_match)
    verdict = any(is_equiv(answer, gold, timeout=None) for answer in candidates)
    return (candidates[0] if candidates else None), verdict


def grade(
    text: str,
    gold: str,
    dataset: str = "math",
    box_match: str = "last",
    timeout: float = 5.0,
    engine: str = "inferencekit",
) -> bool:
    """True when the answer in ``text`` is equivalent to ``gold``.

    ``box_match="any"``: true when any boxed answer (or the single extracted one) is equivalent.
    ``engine="math-verify"`` grades with plain math-verify instead (see ``engine.plain_grade``).
    In the main thread extraction and comparison together get ``timeout`` seconds (``False`` past it).
    """
    try:
        with time_limit(timeout):
            return grade_answer(text, gold, dataset, box_match, engine)[1]
    except GradingTimeout:
        return False
