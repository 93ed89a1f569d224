"""Pull the final answer out of a model's output.

The engine is math-verify's own extraction (``engine.engine_extract``): its patterns for "final
answer is", "answer:", LaTeX spans and plain numbers, in its order of priority. On top of it, only
what it lacks:

- ``<think>`` reasoning is dropped first (``strip_think``);
- every box is found with its position (math-verify keeps only the last), so ``box_match`` can pick
  the ``first`` or ``any`` box, and boxes joined only by commas or "and"/"or"
  (``\\boxed{2}, \\boxed{5}``; ``$x=\\boxed{3}$ and $y=\\boxed{4}$``) form one answer, the list ``"2, 5"``;
- GSM8K ``#### 42`` marks; in GSM8K style an answer holding one number is reduced to it
  (``"$1,234.00"`` -> ``"1234"``) and the last number in the text is the fallback.

Order of precedence (``box_match="last"``, the default), after dropping ``<think>``:

1. The explicit marks of a final answer are a box (or a run of boxes), a ``####`` line and a
   "final answer" phrase. **The one that comes last in the text wins**: an intermediate
   ``\\boxed{3}`` followed by "Final Answer: The final answer is $5$" gives 5, and a box written after
   a "final answer" phrase gives the box. A "final answer" phrase counts only when an answer can be
   read after it ("Final Answer: The smallest $k$ is 12." gives 12, the math in the sentence); after
   a box it must say "final answer ... is X" ("Final answer check: 3 cases" does not replace a box).
2. Without an explicit mark, math-verify's extraction over the whole text: "the answer is X" /
   "Answer: X", else the last math span or number ("... so the chance is 3/5." gives 3/5).
3. Without anything math-verify can read, the words after the last "the answer is" / "answer:"
   up to the end of the sentence ("The answer is (B)." gives "(B)"), else ``None``.

``box_match="first"`` takes the first box (or run) instead of rule 1's last mark when there is a box;
``"any"`` offers every box, every run and rule 1's answer (``extract_candidates``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from inferencekit.grading.boxes import Box, box_runs, boxed_contents, find_boxes, run_answer
from inferencekit.grading.engine import engine_extract
from inferencekit.grading.equivalence import GradingTimeout, time_limit
from inferencekit.grading.normalize import strip_math_delimiters
from inferencekit.grading.style import AnswerStyle, answer_style, is_gsm8k

__all__ = ["BOX_MATCHES", "boxed_contents", "extract_all_answers", "extract_answer", "extract_candidates"]

BOX_MATCHES = ("last", "first", "any")

_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_FINAL_RE = re.compile(r"\bfinal\s+answer\b", re.IGNORECASE)
_ANSWER_PHRASE_RE = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
# "-$1,234.50", "1234", ".5": thousands groups or plain digits, optional decimals.
# an optional exponent ("6.02e23", "2.5E-3") belongs to the number: without it "1e23" would read as "1"
_NUMBER_RE = re.compile(
    r"(?<![\w.])(-?)(?:\\?\$\s?)?((?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+(?![\w.]))?)(?!\d)"
)
_MAX_EXPONENT = 100
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_PHRASE_SPAN = 300  # characters after a "final answer" phrase in which its answer must be


def strip_think(text: str) -> str:
    """Keep what follows the last ``</think>``; drop an unterminated ``<think>`` and all after it.

    A ``<think>`` that never closes is unfinished reasoning (often a truncated output), so nothing
    inside it counts as a final answer.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text


def normalize_number(raw: str) -> str:
    """``"$1,234.00"`` -> ``"1234"``, ``"0.50"`` -> ``"0.5"``, ``"-3"`` -> ``"-3"``."""
    s = raw.replace(",", "").replace("\\$", "").replace("$", "").replace(" ", "")
    if "e" in s.lower():  # scientific notation, written out ("6.02e23" -> "602000000000000000000000")
        try:
            value = Decimal(s)
        except InvalidOperation:
            return raw
        if abs(value.adjusted()) > _MAX_EXPONENT:  # not written out: a typo must not make a huge string
            return s.lower()
        s = format(value, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s.startswith(".") or s.startswith("-."):
        s = s.replace(".", "0.", 1)
    negative = s.startswith("-")
    digits = s.lstrip("-")
    integer, dot, fraction = digits.partition(".")
    integer = integer.lstrip("0") or "0"
    out = integer + dot + fraction
    return "-" + out if negative and out != "0" else out


def _numbers(text: str) -> list[str]:
    return [normalize_number(sign + digits) for sign, digits in _NUMBER_RE.findall(text)]


def _gsm8k_clean(candidate: str) -> str:
    """A candidate holding exactly one number becomes that number ("18 dollars" -> "18")."""
    numbers = _numbers(candidate)
    if len(numbers) == 1 and not re.search(r"\d", _NUMBER_RE.sub("", candidate)):
        return numbers[0]
    return candidate


def _phrase_words(text: str) -> str | None:
    """What follows the last "the answer is" / "answer:" phrase, up to the end of its sentence."""
    matches = list(_ANSWER_PHRASE_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip(" \t\n*:")
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            close = rest.find(right, len(left))
            if close != -1:
                return rest[len(left) : close].strip() or None
    end = _SENTENCE_END_RE.search(rest)
    answer = rest[: end.start()] if end else rest
    answer = strip_math_delimiters(answer.strip().rstrip("*").strip().rstrip("."))
    return answer or None


def _check_box_match(box_match: str) -> None:
    if box_match not in BOX_MATCHES:
        raise ValueError(f"box_match must be one of {', '.join(BOX_MATCHES)}, got {box_match!r}")


@dataclass(frozen=True)
class _Mark:
    """An explicit final-answer mark: a run of boxes, a ``####`` line, or a "final answer" phrase."""

    start: int
    kind: str  # "box" | "hashes" | "final"
    answer: str | None  # known at once for boxes and ####; a phrase's is read when it is needed
    end: int = 0


def _marks(body: str, runs: list[list[Box]]) -> list[_Mark]:
    marks = [_Mark(run[0].start, "box", run_answer(run)) for run in runs]
    for m in _HASHES_RE.finditer(body):
        if answer := m.group(1).strip():
            marks.append(_Mark(m.start(), "hashes", answer))
    marks += [_Mark(m.start(), "final", None, m.end()) for m in _FINAL_RE.finditer(body)]
    return sorted(marks, key=lambda mark: mark.start)


def _clean(answer: str, kind: str, gsm8k: bool) -> str:
    if gsm8k:
        if kind == "hashes":
            numbers = _numbers(answer)
            return numbers[0] if numbers else answer
        return _gsm8k_clean(answer)
    if kind == "hashes":
        return strip_math_delimiters(answer.rstrip("."))
    return answer


def _phrase_answer(body: str, mark: _Mark, gsm8k: bool, after_mark: bool) -> str | None:
    """The math after a "final answer" phrase (words there are read only when no mark gives an answer).

    ``after_mark``: a box or ``####`` came before the phrase; to override it the phrase must read
    "final answer ... is X" (math-verify's own final-answer patterns), not just mention a number.
    """
    region = body[mark.start : mark.end + _PHRASE_SPAN]
    if gsm8k:
        if after_mark and not re.search(r"\bis\b", region[: _PHRASE_SPAN // 2]):
            return None
        numbers = _numbers(body[mark.end : mark.end + _PHRASE_SPAN])
        return numbers[0] if numbers else None
    return engine_extract(region, final_only=after_mark)


def _no_mark_answer(body: str, gsm8k: bool) -> str | None:
    if gsm8k:
        phrase = _phrase_words(body)
        if phrase is not None and (numbers := _numbers(phrase)):
            return numbers[0]
        numbers = _numbers(body)
        return numbers[-1] if numbers else None
    return engine_extract(body) or _phrase_words(body)


def _last_mark_answer(body: str, marks: list[_Mark], gsm8k: bool) -> str | None:
    for k in range(len(marks) - 1, -1, -1):
        mark = marks[k]
        if mark.kind == "final":
            answer = _phrase_answer(body, mark, gsm8k, after_mark=any(m.kind != "final" for m in marks[:k]))
        else:
            answer = _clean(mark.answer or "", mark.kind, gsm8k)
        if answer:
            return answer
    return _no_mark_answer(body, gsm8k)


def extract_answer(
    text: str, style: AnswerStyle = "math", box_match: str = "last", timeout: float | None = 5.0, *,
    dataset: str | None = None,
) -> str | None:
    """The final answer in ``text``, or ``None`` when there is none (see the module's order of precedence).

    ``style``: the answer style, ``"math"`` or ``"gsm8k"``; a data set's name (this entry point's documented
    ``dataset`` argument) is read as ``style.answer_style`` reads it.
    ``box_match``: ``"last"`` (default) or ``"first"`` box; ``"any"`` behaves like ``"last"`` here
    (``extract_candidates`` lists what ``grade`` tries under ``"any"``).
    ``None`` also when reading the text takes over ``timeout`` seconds (in any thread; see ``time_limit``).
    ``dataset=``: a data set's name, whose style is used (the keyword DESIGN.md fixes; it wins over ``style``).
    """
    try:
        with time_limit(timeout):
            return _extract(text, answer_style(style if dataset is None else dataset), box_match)
    except GradingTimeout:
        return None


def _extract(text: str, style: AnswerStyle, box_match: str) -> str | None:
    _check_box_match(box_match)
    gsm8k = is_gsm8k(style)
    body = strip_think(text or "")
    runs = box_runs(body, find_boxes(body))
    if box_match == "first" and runs:
        return _clean(run_answer(runs[0]), "box", gsm8k)
    return _last_mark_answer(body, _marks(body, runs), gsm8k)


def extract_candidates(text: str, style: AnswerStyle = "math", box_match: str = "last") -> list[str]:
    """The answers ``grade`` tries: one under ``"last"``/``"first"``; under ``"any"`` also every box and run."""
    answer = _extract(text, style, "last" if box_match == "any" else box_match)
    found = [] if answer is None else [answer]
    if box_match == "any":
        body = strip_think(text or "")
        boxes = find_boxes(body)
        found = _with_every_box(found, box_runs(body, boxes), boxes, is_gsm8k(style))
    return found


def _with_every_box(found: list[str], runs: list[list[Box]], boxes: list[Box], gsm8k: bool) -> list[str]:
    """``found``, then each run and each box not already in it (the candidates of ``box_match="any"``)."""
    found = list(found)
    for raw in [run_answer(run) for run in runs] + [box.content for box in boxes]:
        answer = _clean(raw, "box", gsm8k)
        if answer not in found:
            found.append(answer)
    return found


def quick_extract(text: str, style: AnswerStyle = "math", box_match: str = "last") -> tuple[bool, list[str]]:
    """Cheap extraction, no math-verify: ``(True, candidates)`` when a box or ``####`` settles the answer
    (always in GSM8K style, which needs no math-verify to extract).

    ``(False, [])`` when the answer depends on math-verify's extraction (a "final answer" phrase
    after the last box, or no mark at all): the worker processes must extract it.
    """
    _check_box_match(box_match)
    if is_gsm8k(style):  # GSM8K style reads numbers with regular expressions only
        return True, extract_candidates(text, style, box_match)
    gsm8k = False
    body = strip_think(text or "")
    boxes = find_boxes(body)
    runs = box_runs(body, boxes)
    marks = _marks(body, runs)
    if box_match == "first" and runs:
        return True, [_clean(run_answer(runs[0]), "box", gsm8k)]
    if not marks or marks[-1].kind == "final":
        return False, []
    found = [_clean(marks[-1].answer or "", marks[-1].kind, gsm8k)]
    return True, (_with_every_box(found, runs, boxes, gsm8k) if box_match == "any" else found)


def gold_answer(gold: str, style: AnswerStyle = "math") -> str:
    """A gold written as a whole solution (with a box or a ``####`` line) gives its final answer."""
    gold = str(gold)
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        return _extract(gold, style, "last") or gold
    return gold


def extract_all_answers(text: str, style: AnswerStyle = "math") -> list[str]:
    """Every boxed answer in order; without boxes, ``[extract_answer(text)]`` (or ``[]``)."""
    gsm8k = is_gsm8k(style)
    boxes = boxed_contents(strip_think(text or ""))
    if boxes:
        return [_gsm8k_clean(b) for b in boxes] if gsm8k else boxes
    answer = extract_answer(text, style)
    return [] if answer is None else [answer]
