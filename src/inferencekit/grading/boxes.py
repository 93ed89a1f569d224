"""Every ``\\boxed{...}`` / ``\\fbox{...}`` in a text, with its position, and runs of boxes that form one answer.

math-verify keeps only the last box of a text (it cannot tell where a box ends with a regular
expression); first/any box matching and answer sets need all of them, so they are found here with
one linear pass over the braces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_BOX_ARG_RE = re.compile(r"[ \t]*([^\s${}]+)")
# What may stand between two boxes of one answer: spaces, math delimiters, commas, "and"/"or",
# spacing commands, a short \text{...} ("\text{ for part (a) and }"), one word before "and"/"or"
# ("\boxed{1} papers and \boxed{2} bins") and a variable name ("$x = \boxed{2}$ and $y = \boxed{5}$").
_RUN_GAP_RE = re.compile(
    r"(?:\s|\$|\\[()\[\]]|[,;&]|\\q?quad(?![A-Za-z])|\\[,;:! ]|\b(?:[A-Za-z]+\s+)?(?:and|or)\b"
    r"|\\(?:text|mathrm|textrm)\s*\{[^{}$]{0,30}\}"
    r"|[A-Za-z](?:_\{?\w+\}?)?\s*=)*",
    re.IGNORECASE,
)
_MAX_GAP = 40


@dataclass(frozen=True)
class Box:
    start: int
    end: int  # index just past the box
    content: str


def closing_braces(text: str) -> dict[int, int]:
    """Map each ``{`` to the index of its closing ``}`` (escaped braces do not count); one pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def find_boxes(text: str) -> list[Box]:
    """Every top-level box in order; nested braces are fine, ``\\boxed 5`` gives ``"5"``.

    Unclosed and empty boxes are skipped; a box that holds exactly one box is unwrapped.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    pairs = closing_braces(text)
    found: list[Box] = []
    pos = 0
    while m := _BOX_RE.search(text, pos):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = pairs.get(i)
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
            found.append(Box(m.start(), pos, content))
    return found


def _whole_box(s: str) -> str | None:
    """The inside of ``s`` when ``s`` is exactly one box, else ``None``."""
    m = _BOX_RE.match(s)
    if m is None:
        return None
    rest = s[m.end() :].lstrip()
    if rest.startswith("{") and closing_braces(rest).get(0) == len(rest) - 1:
        return rest[1:-1].strip()
    return None


def box_runs(text: str, boxes: list[Box]) -> list[list[Box]]:
    """Group boxes that follow each other with only commas, "and"/"or" or ``x =`` between them."""
    runs: list[list[Box]] = []
    for box in boxes:
        if runs:
            gap = text[runs[-1][-1].end : box.start]
            if len(gap) <= _MAX_GAP and _RUN_GAP_RE.fullmatch(gap):
                runs[-1].append(box)
                continue
        runs.append([box])
    return runs


def run_answer(run: list[Box]) -> str:
    """One answer for a run: its single box, or the distinct contents joined as a list ``"2, 5"``."""
    contents: list[str] = []
    for box in run:
        if box.content not in contents:
            contents.append(box.content)
    return ", ".join(contents)


def boxed_contents(text: str) -> list[str]:
    """Contents of every top-level ``\\boxed``/``\\fbox`` in order (see ``find_boxes``)."""
    return [box.content for box in find_boxes(text)]
