"""Grading speed and agreement: inferencekit's `Grader` vs math-verify called directly, offline.

Builds labelled (output, gold) pairs from the shipped MATH-500 and GSM8K answers: a gold against
itself (MATH-500's own solutions, GSM8K's own worked answers with `####`), against equivalent forms
written differently (\\dfrac, spacing, decimals for simple fractions, thousands separators and
currency, a "final answer" sentence with no box, `\\left(...\\right)`), and against wrong answers
(another problem's answer, an integer off by one, a fraction turned over). Grades every pair with
`Grader.grade_many` (the default worker pool, its start included) and with math-verify in this one
process (`verify(parse(f"${gold}$"), parse(output))`, as lighteval and lm-eval call it), and prints
both agreements with the labels and, last, `ratio=<our pairs per second / math-verify's>`.

    python benchmarks/grading.py [--pairs 5000] [--workers N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inferencekit.grading import Grader, canonical_form

Pair = tuple[str, str, str, bool]  # output, gold, dataset style, label

_INT_RE = re.compile(r"^-?\d+$")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")


def _data_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    for candidate in (root.parent / "shared" / "data", root.parents[1] / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    sys.exit("benchmarks/grading.py: ../shared/data (math500, gsm8k) not found beside the checkout")


def _rows(name: str) -> list[dict]:
    path = _data_dir() / name / "test.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _equivalent_forms(answer: str) -> list[str]:
    """The same answer written differently (each form is equal by construction)."""
    forms = [answer.replace("\\frac", "\\dfrac")]
    if not re.search(r"\d,\s*(?:\\!)?\s*\d{3}(?!\d)", answer):  # "58,500" is a number: a space would make it a list
        forms.append(re.sub(r",(?=\S)", ", ", answer))
    if _INT_RE.match(answer):
        value = int(answer)
        forms += [f"{value}.0", f"{value:,}" if abs(value) >= 1000 else f"{value}.00"]
    if (m := _FRAC_RE.match(answer)) and int(m.group(3)) in (2, 4, 5, 8, 10, 20, 25, 40, 50):
        forms.append(m.group(1) + repr(int(m.group(2)) / int(m.group(3))))
    if answer.startswith("(") and answer.endswith(")"):
        forms.append("\\left" + answer[:-1] + "\\right)")
    return [f for f in forms if f != answer] or [answer + " "]


def _wrong_forms(answer: str, others: list[str], rng: random.Random) -> list[str]:
    """Answers that are not equal to ``answer``."""
    wrong = []
    if _INT_RE.match(answer):
        wrong.append(str(int(answer) + rng.choice((-1, 1))))
    if (m := _FRAC_RE.match(answer)) and m.group(2) != m.group(3):
        wrong.append(f"{m.group(1)}\\frac{{{m.group(3)}}}{{{m.group(2)}}}")
    key = canonical_form(answer)
    for other in rng.sample(others, 5):
        if canonical_form(other) != key and other.strip() != answer.strip():
            wrong.append(other)
            break
    return wrong


def _wrap(answer: str, rng: random.Random) -> str:
    return rng.choice((
        f"Putting everything together, the answer is $\\boxed{{{answer}}}$.",
        f"Final Answer: The final answer is ${answer}$. I hope it is correct.",
        f"We simplify step by step.\n\nTherefore, the answer is \\boxed{{{answer}}}",
    ))


def build_pairs(n: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    math_rows, gsm_rows = _rows("math500"), _rows("gsm8k")
    math_golds = [str(r["answer"]) for r in math_rows]
    pairs: list[Pair] = []
    for row, gold in zip(math_rows, math_golds, strict=True):
        pairs.append((row["solution"], gold, "math", True))
        pairs += [(_wrap(form, rng), gold, "math", True) for form in _equivalent_forms(gold)]
        pairs += [(_wrap(form, rng), gold, "math", False) for form in _wrong_forms(gold, math_golds, rng)]
    gsm_golds = [r["answer"].split("####")[-1].strip().replace(",", "") for r in gsm_rows]
    for row, gold in zip(gsm_rows, gsm_golds, strict=True):
        value = int(gold) if _INT_RE.match(gold) else None
        pairs.append((row["answer"], gold, "gsm8k", True))
        if value is not None:
            pairs.append((f"So she pays ${value:,} in total.\n#### {value:,}", gold, "gsm8k", True))
            pairs.append((f"The answer is {value + rng.choice((-2, -1, 1, 10))}.", gold, "gsm8k", False))
    rng.shuffle(pairs)
    while len(pairs) < n:
        pairs += pairs[: n - len(pairs)]
    return pairs[:n]


def plain_math_verify(pairs: list[Pair]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse(f"${gold}$"), parse(text))) for text, gold, _, _ in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=None, help="grading processes (default: the Grader's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pairs = build_pairs(args.pairs, args.seed)
    labels = [label for *_, label in pairs]
    print(f"{len(pairs)} pairs ({sum(labels)} equal, {len(labels) - sum(labels)} not)")

    started = time.perf_counter()
    with Grader(workers=args.workers) as grader:
        ours = grader.grade_many([(text, gold, style) for text, gold, style, _ in pairs])
        workers = grader.workers
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    theirs = plain_math_verify(pairs)
    theirs_s = time.perf_counter() - started

    for name, verdicts, seconds in (("inferencekit Grader", ours, ours_s), ("math-verify direct", theirs, theirs_s)):
        agree = sum(v == label for v, label in zip(verdicts, labels, strict=True))
        print(f"{name:20} agreement {agree}/{len(pairs)} ({agree / len(pairs):.1%})  "
              f"{seconds:7.2f} s  {len(pairs) / seconds:8.1f} pairs/s")
    print(f"(Grader: {workers} worker processes, pool start included)")
    print(f"ratio={(len(pairs) / ours_s) / (len(pairs) / theirs_s):.2f}")


if __name__ == "__main__":
    main()
