"""math-verify as the extraction engine, and plain math-verify as a grader of its own.

``engine_extract`` runs math-verify's extraction (its regular expressions for "final answer is",
"answer:", LaTeX spans and plain numbers/expressions, tried in its order of priority, each match
converted by its own parsers) and returns the text of the match that converted. It walks the
matches itself only because ``parse`` reports the text of the first match it *tried*, not of the
one it kept, and a grader that votes over answers needs the text.

``plain_grade`` is math-verify exactly as lighteval and lm-eval call it: gold parsed as ``$gold$``,
the output with the default extraction, ``verify`` with its defaults (time limits are ours).
No answer text is ever passed to ``eval``/``exec``/``sympify``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from itertools import groupby

from math_verify import ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig, parse, verify
from math_verify.parser import extract_match, get_extraction_regexes

from inferencekit.grading.normalize import repeating_decimals, roman_constants

ENGINES = ("inferencekit", "math-verify")
_CONFIGS = (LatexExtractionConfig(), ExprExtractionConfig())
_FINAL_PRIORITY = 50  # math-verify's "final answer ... is X" patterns (and its boxes) rank 0 and 50


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its own timeout is off; here that is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@lru_cache(maxsize=1)
def _priority_groups() -> list[tuple[int, list[tuple]]]:
    patterns = [
        (pattern, config, priority)
        for regexes, config in get_extraction_regexes(_CONFIGS)
        for pattern, priority in regexes
    ]
    patterns.sort(key=lambda p: p[2])
    return [
        (priority, [(pattern, config) for pattern, config, _ in group])
        for priority, group in groupby(patterns, key=lambda p: p[2])
    ]


def _match_text(match, config) -> str:
    """The answer text of a match: its LaTeX spans (joined as a list), or its number or expression."""
    groups = {k: v for k, v in match.groupdict().items() if v}
    if isinstance(config, LatexExtractionConfig):
        parts = []
        for prefix in ["first_"] + [f"next{i}_" for i in range(1, 6)]:
            latex = next((v for k, v in groups.items() if k.startswith(prefix + "latex")), None)
            if latex is not None:
                parts.append(latex.strip() + ("\\%" if groups.get(prefix + "percent") else ""))
        return ", ".join(parts)
    if "expr" in groups:
        return groups["expr"].strip().rstrip(".").strip()
    integer = next((v for k, v in groups.items() if k.startswith("integer")), "")
    decimal = next((v for k, v in groups.items() if k.startswith("decimal")), "")
    number = integer.replace(",", "").replace(" ", "") + decimal.replace(",", ".")
    return number + ("\\%" if groups.get("percent") else "")


def engine_extract(text: str, final_only: bool = False) -> str | None:
    """The answer math-verify's default extraction finds in ``text`` (the text of the match it keeps).

    ``final_only``: only its "final answer is X" patterns (priority 50 or better), none of its
    "answer: X" or bare-number ones.

    Repeating decimals are written as fractions first (math-verify cannot read ``0.\\overline{3}``),
    and ``\\mathrm{e}`` as ``e``.
    """
    text = roman_constants(repeating_decimals(text))
    for priority, group in _priority_groups():
        if final_only and priority > _FINAL_PRIORITY:
            break
        matches = [(m, config) for pattern, config in group for m in pattern.finditer(text)]
        matches.sort(key=lambda mc: (mc[0].end(), -mc[0].start()), reverse=True)  # rightmost first
        for match, config in matches:
            try:
                value, _ = extract_match(match, config)
            except Exception:  # a parser bug on odd input: try the next match, as parse does
                value = None
            if value is not None:
                return _match_text(match, config) or None
    return None


def choice_extract(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter an output picks, by math-verify's letter extraction ("the answer is C", "D. because")."""
    found = parse(text, [StringExtractionConfig(strings=tuple(letters))], parsing_timeout=None)
    return str(found[0]).upper() if found else None


def plain_extract(text: str) -> str | None:
    """What plain math-verify extracts from an output, as text (its fallback string), or ``None``."""
    found = parse(text, parsing_timeout=None)
    return str(found[-1]) if found else None


def plain_grade(text: str, gold: str) -> bool:
    """math-verify with its defaults: ``verify(parse(f"${gold}$"), parse(text))``."""
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(text, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
