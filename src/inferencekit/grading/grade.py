"""Extract an answer from a model output and compare it with the gold answer.

Beyond ``extract.py``'s order of precedence: a gold written as a whole solution (with a box or a
``####`` line) is reduced to its answer first, and for a multiple-choice gold (``C``, ``(C)``,
``\\textbf{(C) }7``) an output whose answer names no option letter is searched for the letter it
picks with math-verify's letter extraction ("so the right option is C").
"""

from __future__ import annotations

from inferencekit.grading.engine import ENGINES, choice_extract, plain_extract, plain_grade
from inferencekit.grading.equivalence import GradingTimeout, is_equiv, time_limit
from inferencekit.grading.extract import extract_candidates, gold_answer, strip_think
from inferencekit.grading.normalize import choice_letter
from inferencekit.grading.style import AnswerStyle, answer_style


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"grader must be one of {', '.join(ENGINES)}, got {engine!r}")


def grade_answer(
    text: str, gold: str, style: AnswerStyle = "math", box_match: str = "last", engine: str = "inferencekit"
) -> tuple[str | None, bool]:
    """The extracted answer and whether it is right, with no time limit (callers set one)."""
    check_engine(engine)
    if engine == "math-verify":
        return plain_extract(text), plain_grade(text, str(gold))
    gold = gold_answer(str(gold), style)
    candidates = extract_candidates(text, style, box_match)
    if needs_letter_search(candidates, str(gold)):
        gold_letter = choice_letter(str(gold))[0] or "E"
        letter = choice_extract(strip_think(text), "ABCDEFGHIJ"[: max(5, "ABCDEFGHIJ".index(gold_letter) + 1)])
        candidates += [letter] if letter else []
    verdict = any(is_equiv(answer, gold, timeout=None) for answer in candidates)
    return (candidates[0] if candidates else None), verdict


def needs_letter_search(candidates: list[str], gold: str) -> bool:
    """A multiple-choice gold and no option letter among the answers found: look for a letter in the text.

    When the gold also gives the option's value (``(A) 12``), only an output with no answer at all is
    searched for a letter, so that a wrong value is not rescued by a stray letter.
    """
    gold_letter, gold_value = choice_letter(gold)
    if gold_letter is None or any(choice_letter(c)[0] for c in candidates):
        return False
    return not candidates or not gold_value


def grade(
    text: str,
    gold: str,
    style: AnswerStyle = "math",
    box_match: str = "last",
    timeout: float = 5.0,
    engine: str = "inferencekit",
    *,
    dataset: str | None = None,
) -> bool:
    """True when the answer in ``text`` is equivalent to ``gold``.

    ``box_match="any"``: true when any boxed answer (or the single extracted one) is equivalent.
    ``engine="math-verify"`` grades with plain math-verify instead (see ``engine.plain_grade``).
    In the main thread extraction and comparison together get ``timeout`` seconds (``False`` past it).
    ``style`` and ``dataset=`` as ``extract_answer`` takes them (a data set's name is read as its answer style).
    """
    try:
        with time_limit(timeout):
            return grade_answer(text, gold, answer_style(style if dataset is None else dataset), box_match, engine)[1]
    except GradingTimeout:
        return False
