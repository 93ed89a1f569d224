"""Pull the final answer out of a model's output text.

Order of precedence, after dropping ``<think>`` reasoning: the last (or first) ``\\boxed{...}`` /
``\\fbox{...}``; a GSM8K ``#### 42`` line; a "The (final) answer is ..." / "Answer: ..." phrase;
for GSM8K style only, the last number in the text. MATH-style answers are free-form, so guessing
"the last number" would score unrelated numbers as answers: there the fallback is ``None``.
"""

from __future__ import annotations

import re

from inferencekit.grading.normalize import closing_brace, strip_math_delimiters
from inferencekit.grading.style import answer_style

BOX_MATCHES = ("last", "first", "any")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_BOX_ARG_RE = re.compile(r"[ \t]*([^\s${}]+)")
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE_RE = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
# "-$1,234.50", "1234", ".5": thousands groups or plain digits, optional decimals.
_NUMBER_RE = re.compile(r"(?<![\w.])(-?)(?:\\?\$\s?)?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")


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


def boxed_contents(text: str) -> list[str]:
    """Contents of every top-level ``\\boxed``/``\\fbox`` in order; nested braces are fine.

    ``\\boxed 5`` (no braces) gives ``"5"``; unclosed or empty boxes are skipped.
    """
    found: list[str] = []
    pos = 0
    while m := _BOX_RE.search(text, pos):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = closing_brace(text, i)
            if end is None:
                pos = i + 1
                continue
            content = text[i + 1 : end].strip()
            pos = end + 1
        else:
            bare = _BARE_BOX_ARG_RE.match(text, m.end())
            if bare is None:
                pos = m.end()
                continue
            content = bare.group(1).rstrip(".,;")
            pos = bare.end()
        while (inner := _whole_box(content)) is not None:
            content = inner
        if content:
            found.append(content)
    return found


def _whole_box(s: str) -> str | None:
    """The inside of ``s`` when ``s`` is exactly one box, else ``None``."""
    m = _BOX_RE.match(s)
    if m is None:
        return None
    rest = s[m.end() :].lstrip()
    if rest.startswith("{") and closing_brace(rest, 0) == len(rest) - 1:
        return rest[1:-1].strip()
    return None


def normalize_number(raw: str) -> str:
    """``"$1,234.00"`` -> ``"1234"``, ``"0.50"`` -> ``"0.5"``, ``"-3"`` -> ``"-3"``."""
    s = raw.replace(",", "").replace("\\$", "").replace("$", "").replace(" ", "")
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


def _phrase_answer(text: str) -> str | None:
    """What follows the last "the answer is" / "final answer:" phrase, up to the sentence end."""
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


def extract_answer(text: str, dataset: str = "math", box_match: str = "last") -> str | None:
    """The final answer in ``text``, or ``None`` when there is none.

    ``dataset`` is a style ("math", "gsm8k") or a dataset name (see ``answer_style``).
    ``box_match`` picks the ``"last"`` (default) or ``"first"`` box; ``"any"`` behaves like
    ``"last"`` here (use ``extract_all_answers`` or ``grade`` for any-box matching).
    In GSM8K style an answer that holds one number is reduced to it (``"$1,234.00"`` -> ``"1234"``),
    and the last number in the text is the fallback; in MATH style there is no fallback.
    """
    _check_box_match(box_match)
    gsm8k = answer_style(dataset) == "gsm8k"
    body = strip_think(text or "")
    boxes = boxed_contents(body)
    if boxes:
        answer = boxes[0] if box_match == "first" else boxes[-1]
        return _gsm8k_clean(answer) if gsm8k else answer
    hashes = [m.group(1).strip() for m in _HASHES_RE.finditer(body)]
    hashes = [h for h in hashes if h]
    if hashes:
        answer = hashes[-1]
        if gsm8k:
            numbers = _numbers(answer)
            return numbers[0] if numbers else answer
        return strip_math_delimiters(answer.rstrip("."))
    phrase = _phrase_answer(body)
    if gsm8k:
        if phrase is not None and (numbers := _numbers(phrase)):
            return numbers[0]
        numbers = _numbers(body)
        return numbers[-1] if numbers else None
    return phrase


def extract_all_answers(text: str, dataset: str = "math") -> list[str]:
    """Every boxed answer in order; without boxes, ``[extract_answer(text)]`` (or ``[]``)."""
    gsm8k = answer_style(dataset) == "gsm8k"
    boxes = boxed_contents(strip_think(text or ""))
    if boxes:
        return [_gsm8k_clean(b) for b in boxes] if gsm8k else boxes
    answer = extract_answer(text, dataset)
    return [] if answer is None else [answer]
