#!/usr/bin/env python3
"""Regenerate the built-in `arith` dataset byte for byte: the GPT-3 paper's arithmetic tasks, and an easier rung.

Brown et al. 2020 (section 3.9.1; lm-eval's `arithmetic_2da`, `_2ds`, `_3da`, `_3ds`): add or subtract
two integers drawn uniformly from [0, 100) (2-digit) or [0, 1000) (3-digit), asked as
"What is 98 plus 45?". Below them, the same with one-digit integers ([0, 10): `1da`, `1ds`), where a
135M model is right some of the time, so sampling more shows what it buys. The tasks are interleaved,
so any first K problems mix all six.

    python scripts/make_arith.py            # writes src/inferencekit/presets/data/arith/test.jsonl
    python scripts/make_arith.py --check    # exit 1 if the shipped file differs from a fresh one
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20200528  # the GPT-3 paper's arXiv date
PER_TASK = 40
TASKS = (("1da", 10, "plus"), ("1ds", 10, "minus"), ("2da", 100, "plus"), ("2ds", 100, "minus"),
         ("3da", 1000, "plus"), ("3ds", 1000, "minus"))
OUT = Path(__file__).resolve().parents[1] / "src" / "inferencekit" / "presets" / "data" / "arith" / "test.jsonl"


def rows() -> list[dict]:
    rng = random.Random(SEED)
    per_task = []
    for task, bound, word in TASKS:
        items = []
        for _ in range(PER_TASK):
            a, b = rng.randrange(bound), rng.randrange(bound)
            answer = a + b if word == "plus" else a - b
            items.append({"question": f"What is {a} {word} {b}?", "answer": str(answer), "task": task})
        per_task.append(items)
    return [task_rows[i] for i in range(PER_TASK) for task_rows in per_task]


def text() -> str:
    return "".join(json.dumps(r, ensure_ascii=True, separators=(", ", ": ")) + "\n" for r in rows())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = text().encode("ascii")
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERS'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {len(data.splitlines())} problems to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
