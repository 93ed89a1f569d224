"""Accuracy with a 95% interval, pass@k / maj@k curves, and usage totals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferencekit.results.records import Record

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 0) for n = 0."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(flags: Sequence[bool]) -> dict[str, Any]:
    n = len(flags)
    correct = sum(bool(f) for f in flags)
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else 0.0, "n": n, "correct": correct, "ci95": [round(lo, 6), round(hi, 6)]}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of n samples, c of them correct, hold one correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def powers_of_two(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def sum_usage(records: Sequence[Record]) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for record in records:
        for key, value in record.usage.items():
            if isinstance(value, (int, float)):
                totals[key] = totals.get(key, 0) + value
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in totals.items()}
