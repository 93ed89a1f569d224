"""String normalisation of answers: the cheap layer before symbolic comparison.

``canonical_form`` produces a grouping key for voting and for the exact-match short-circuit of
``is_equiv``. ``clean_for_parsing`` does the lighter clean-up that math-verify needs. Nothing here
evaluates the answer; all work is regular expressions and ``fractions.Fraction`` on digit strings.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Unit words dropped after a number ("18 dollars", "5 square feet"). Single letters (m, g, s) are
# left out on purpose: they are usually variables.
_UNIT_WORDS = (
    "dollars?|cents?|euros?|pounds?|lbs?|ounces?|oz|units?|percent|degrees?|radians?"
    "|meters?|metres?|cm|mm|km|inch(?:es)?|in|feet|foot|ft|yards?|yd|miles?|mph|kph|km/h"
    "|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?"
    "|grams?|kg|kilograms?|liters?|litres?|ml|gallons?|quarts?|cups?"
    "|people|persons?|students?|apples?|books?|cookies?|eggs?|pieces?|items?|times|ways"
)
_PLAIN_UNITS_RE = re.compile(
    rf"(?<=[\d}}])\s+(?:(?:square|sq\.?|cubic)\s+)?(?:{_UNIT_WORDS})(?:\^\{{?[23]\}}?)?"
    rf"(?:\s+per\s+[a-z]+)?\.?\s*(?=$|[,;)\]]|\\\}})",
    re.IGNORECASE,
)
# A trailing \text{...} made of words after some content: "5\text{ cm}^2", "18 \mbox{ dollars}".
_TEXT_UNITS_RE = re.compile(
    r"(?<=\S)\s*\\(?:text|textbf|textit|mbox|textnormal|mathrm|textrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
    r"(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
_TEXT_WRAP_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|texttt|mathrm|mathbf|mathit|mbox|operatorname)"
    r"\s*\{([^{}]*)\}"
)
_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
# a spacing command, or a "\\\\" line break (matched so its second backslash is not read as "\\ ")
_SPACING_RE = re.compile(r"(\\\\)|\\(?:[,;:! ]|q?quad(?![A-Za-z]))")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_PERCENT_RE = re.compile(r"\\?%")
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
_VAR_PREFIX_RE = re.compile(r"^(?:[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?|\\[A-Za-z]+)(?:=|\\in(?![A-Za-z]))")
_CHOICE_RE = re.compile(r"^\(([A-Z])\)$")
_THOUSANDS_RE = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL_RE = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)$")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH_RE = re.compile(r"^(-?\d+)/(-?\d+)$")
_COMMAND_SPACE_RE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_WORD_RE = re.compile(r"^[A-Za-z]{2,}$")
_LIST_COMMA_RE = re.compile(r",\s+")  # "12, 345" is a list of two numbers, never 12345
_LIST_MARK = "\x01"
# 0.\overline{3}, 1.2\overline{34}, .\overline{6}: repeating decimals (math-verify reads only the digits)
_REPEATING_RE = re.compile(r"(-?)(\d*)\.(\d*)\s*\\overline\s*\{\s*(\d+)\s*\}")
# a plain number: "-1,234.5", "18", ".5", "3/4", "\frac{3}{4}" (no units, percent or degrees)
_PLAIN_NUMBER_RE = re.compile(r"^(-?)(?:([1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.(\d+))?|\.(\d+))$")
_ROMAN_CONSTANT_RE = re.compile(r"\\math(?:rm|it)\s*\{\s*([ei])\s*\}")
_TRIG_DEGREES_RE = re.compile(
    r"\\(sin|cos|tan|sec|csc|cot)\s*(?:\\left)?\(?\s*(\d+(?:\.\d+)?)\s*\^\s*\{?\s*\\circ\s*\}?\s*(?:\\right)?\)?"
)
_PYTHON_POWER_RE = re.compile(r"(?<=[\w)}])\*\*(?=[\w({])")
_E_NOTATION_RE = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d{1,4})$")
_CHOICE_LETTERS = "ABCDEFGHIJ"
_CHOICE_PREFIX_RE = re.compile(r"^\(([A-J])\)\s*(.*)$", re.DOTALL)
_CHOICE_COLON_RE = re.compile(r"^([A-J])(?:\)|:|\.)\s+(.+)$", re.DOTALL)
_CHOICE_NAMED_RE = re.compile(r"^([A-J])\s+([A-Z][a-z]+)$")  # "C Cecile": an option letter and its name


def strip_math_delimiters(s: str) -> str:
    """Remove one pair of enclosing math delimiters (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``)."""
    s = s.strip()
    for left, right in _MATH_DELIMS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : len(s) - len(right)]
            if left == "$" and "$" in inner.replace("\\$", ""):
                continue  # "$1$ and $2$" is not one enclosed expression
            return inner.strip()
    return s


def strip_units(s: str) -> str:
    """Drop trailing unit words after a number: ``"18 dollars"`` -> ``"18"``, ``"5\\text{ cm}^2"`` -> ``"5"``."""
    previous = None
    while previous != s:
        previous = s
        s = _TEXT_UNITS_RE.sub("", s).strip()
        s = _PLAIN_UNITS_RE.sub("", s).strip()
    return s


def repeating_decimals(s: str) -> str:
    """``0.\\overline{3}`` -> ``\\frac{1}{3}``, ``1.1\\overline{6}`` -> ``\\frac{7}{6}`` (exact digit arithmetic)."""
    if "overline" not in s:
        return s

    def to_fraction(m: re.Match[str]) -> str:
        sign, whole, fixed, repeat = m.groups()
        if len(fixed) + len(repeat) > 50:
            return m.group(0)
        value = Fraction(int(whole or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
        value += Fraction(int(repeat), 10 ** len(fixed) * (10 ** len(repeat) - 1))
        text = str(value.numerator) if value.denominator == 1 else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
        return f"{sign}{text}"

    return _REPEATING_RE.sub(to_fraction, s)


def roman_constants(s: str) -> str:
    """``\\mathrm{e}`` / ``\\mathrm{i}`` -> ``e`` / ``i`` (math-verify's unit stripping cuts them off)."""
    return _ROMAN_CONSTANT_RE.sub(r"\1", s) if "\\math" in s else s


def clean_for_parsing(answer: str) -> str:
    """Light clean-up before math-verify: delimiters, plain ``$`` signs, repeating decimals, trailing unit words.

    Percent signs, degrees and ``\\text{}`` are left for math-verify, which understands them.
    """
    s = strip_math_delimiters(answer)
    s = _UNESCAPED_DOLLAR_RE.sub("", s)
    s = roman_constants(repeating_decimals(s))
    s = _TRIG_DEGREES_RE.sub(r"\\\1(\\frac{\2\\pi}{180})", s)  # math-verify reads sin 60^\circ in radians
    s = _E_NOTATION_RE.sub(r"\1\\times 10^{\2}", s)  # math-verify reads "3e-2" as 3*e - 2
    s = _PYTHON_POWER_RE.sub("^", s)  # "3*s**2", as programs and some models write powers
    return strip_units(s).strip()


def plain_number(answer: str) -> Fraction | None:
    """The exact value of an answer that is only a number (``"$1,234.50"``, ``"-3"``, ``"3/4"``, ``"\\frac34"``).

    Anything else (units, percent, degrees, lists such as ``"12, 345"``, expressions) gives ``None``.
    """
    s = strip_math_delimiters(str(answer)).replace("\\$", "").replace("$", "")
    s = s.replace("{,}", ",").replace(",\\!", ",").replace("\\!", "").strip().rstrip(".").strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if len(s) > 60:
        return None
    try:
        if _PLAIN_NUMBER_RE.match(s):
            return Fraction(s.replace(",", ""))
        if m := _SLASH_RE.match(s):
            return Fraction(int(m.group(1)), int(m.group(2)))
        frac = re.sub(r"\\frac(\d)(\d)$", r"\\frac{\1}{\2}", s)
        if m := _FRAC_RE.match(frac):
            return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_collection(answer: str) -> bool:
    """An interval, tuple, set or matrix of two or more entries (never equal to a single number).

    ``(1, 2)``, ``[0, 1)``, ``\\{1, 2\\}``, ``(0,1) \\cup (2,3)``, ``\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}``.
    """
    s = strip_math_delimiters(str(answer)).replace("\\left", "").replace("\\right", "").strip()
    if s.startswith("\\begin{") and ("\\\\" in s or "&" in s):
        return True
    if "\\cup" in s:
        return True
    if s.startswith("\\{"):
        s = "{" + s[2:]
    if not s or s[0] not in "([{":
        return False
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return False  # the first bracket closed before any comma at its level
        elif ch == "," and depth == 1:
            return True
    return False


def choice_letter(answer: str) -> tuple[str | None, str]:
    """A multiple-choice letter and the value written beside it: ``"\\textbf{(C) }7"`` -> ``("C", "7")``.

    Recognised: ``(C)``, ``(C) 7``, ``C``, ``C) 7``, ``C: 7``, each possibly inside ``\\text{}``/``\\textbf{}``.
    No letter gives ``(None, answer)``.
    """
    s = strip_math_delimiters(str(answer))
    if len(s) > 200:  # an option is a letter and perhaps a short value
        return None, str(answer)
    previous = None
    while previous != s:
        previous = s
        s = _TEXT_WRAP_RE.sub(r"\1", s).strip()
    s = s.replace("\\ ", " ").replace("~", " ").strip().rstrip(".").strip()
    if len(s) == 1 and s in _CHOICE_LETTERS:
        return s, ""
    if m := _CHOICE_PREFIX_RE.match(s):
        return m.group(1), m.group(2).strip()
    if m := _CHOICE_COLON_RE.match(s) or _CHOICE_NAMED_RE.match(s):
        return m.group(1), m.group(2).strip()
    return None, str(answer)


def _unwrap_boxed(s: str) -> str:
    for command in ("\\boxed", "\\fbox"):
        if s.startswith(command) and s.endswith("}"):
            rest = s[len(command) :].lstrip()
            if rest.startswith("{") and closing_brace(rest, 0) == len(rest) - 1:
                return rest[1:-1].strip()
    return s


def closing_brace(s: str, start: int) -> int | None:
    """Index of the brace closing the one at ``start``; escaped braces do not count."""
    depth = 0
    i = start
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _rational_key(s: str) -> str | None:
    """Exact rationals ("18.0", "0.5", "2/4", "\\frac{1}{2}") as "18" or "\\frac{p}{q}"."""
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    try:
        if _DECIMAL_RE.match(s):
            value = Fraction(s)
        elif m := _FRAC_RE.match(s):
            value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        elif m := _SLASH_RE.match(s):
            value = Fraction(int(m.group(1)), int(m.group(2)))
        else:
            return None
    except (ValueError, ZeroDivisionError):  # zero denominator, or past Python's int digit limit
        return None
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def canonical_form(answer: str | None) -> str:
    """A normalised string under which equal-looking answers group together (for voting).

    Removes math delimiters, an enclosing ``\\boxed{}``, whitespace, ``\\left``/``\\right``, spacing
    commands, ``\\text{}`` wrappers, trailing units, ``$``, ``%`` and degree marks, and a leading
    ``x=`` / ``x \\in``; ``\\dfrac``/``\\tfrac`` become ``\\frac``; ``\\frac12``/``\\sqrt2`` get braces;
    ``(C)`` becomes ``C``; words are lower-cased. Exact rationals share one key: ``"1/2"``,
    ``"\\frac{2}{4}"`` and ``"0.5"`` all give ``\\frac{1}{2}``; ``"18.00"``, ``"$18"`` and ``"18 dollars"``
    give ``"18"``; thousands separators in a lone number are dropped.
    It is a key, not a proof: different keys may still be equivalent (``is_equiv`` decides that).
    ``None`` gives ``""``.
    """
    if answer is None:
        return ""
    s = strip_math_delimiters(str(answer))
    s = _unwrap_boxed(s)
    s = repeating_decimals(s).replace("{, }", "{,}")
    s = _LIST_COMMA_RE.sub("," + _LIST_MARK, s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r",\s*\\!\s*", ",", s).replace("{,}", ",")
    s = _SPACING_RE.sub(lambda m: m.group(1) or " ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = strip_units(s)
    previous = None
    while previous != s:
        previous = s
        s = _TEXT_WRAP_RE.sub(r"\1", s)
    # keep one space between a command and a following letter ("\cot x"), drop all other whitespace
    s = _COMMAND_SPACE_RE.sub(lambda m: m.group(1) + "\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    s = s.rstrip(".")
    if s.count("=") == 1 or "\\in" in s:
        s = _VAR_PREFIX_RE.sub("", s, count=1)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d|[A-Za-z](?![A-Za-z]))", r"\\sqrt{\1}", s)
    if m := _CHOICE_RE.match(s):
        return m.group(1)
    if (key := _rational_key(s)) is not None:
        return key
    s = s.replace(_LIST_MARK, "")
    if _WORD_RE.match(s):
        return s.lower()
    return s
