"""Extract an answer from a model output and compare it with the gold answer."""

from __future__ import annotations

from inferencekit.grading.equivalence import is_equiv
from inferencekit.grading.extract import extract_all_answers, extract_answer


def grade(text: str, gold: str, dataset: str = "math", box_match: str = "last", timeout: float = 5.0) -> bool:
    """True when the answer in ``text`` is equivalent to ``gold``.

    ``box_match="any"``: true when any boxed answer (or the single extracted one) is equivalent.
    """
    if box_match == "any":
        return any(is_equiv(a, gold, timeout) for a in extract_all_answers(text, dataset))
    return is_equiv(extract_answer(text, dataset, box_match), gold, timeout)
