"""Are two answers the same? A cheap string layer, then math-verify.

math-verify parses LaTeX with its own grammar (latex2sympy) and compares the results with sympy;
no answer text is ever passed to ``eval``/``exec``/``sympify`` here.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from inferencekit.grading.normalize import canonical_form, clean_for_parsing

# Answers that look like words but are maths; everything else made only of letters is compared
# as a word, because sympy reads "Evelyn" as the product E*v*e*l*y*n (equal to "Evelny").
_MATH_WORDS = frozenset({"pi", "infty", "infinity", "inf", "oo"})
_EXTRACTION = (
    LatexExtractionConfig(boxed_match_priority=0),
    ExprExtractionConfig(),
)


class GradingTimeout(BaseException):
    """Raised inside a comparison that ran past its time limit.

    A ``BaseException`` so that math-verify's and sympy's ``except Exception`` blocks let it through.
    """


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its own timeout is off; here that is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _raise_timeout(signum: int, frame: object) -> None:
    raise GradingTimeout()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``GradingTimeout`` in the block after ``seconds`` (SIGALRM; main thread only).

    Does nothing when ``seconds`` is ``None`` or when called outside the main thread. An interval
    timer the caller had set (e.g. pytest-timeout's) is restored afterwards, minus the time spent.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    started = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


def quick_equiv(pred: str | None, gold: str) -> bool | None:
    """The answer when string normalisation settles it, else ``None`` (math-verify must decide)."""
    if pred is None:
        return False
    pred_key, gold_key = canonical_form(pred), canonical_form(str(gold))
    if not pred_key or not gold_key:
        return False
    if pred_key == gold_key:
        return True
    for key in (pred_key, gold_key):
        if key.isalpha() and len(key) > 1 and key.lower() not in _MATH_WORDS:
            return False
    return None


@lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    # A bare answer goes into \boxed{} so that math-verify takes it whole; parsing is cached
    # because one gold answer is compared with many candidates.
    return tuple(
        parse(
            "\\boxed{" + clean_for_parsing(answer) + "}",
            extraction_config=_EXTRACTION,
            parsing_timeout=None,
        )
    )


def math_verify_equiv(pred: str, gold: str) -> bool:
    """math-verify's verdict on two bare answers, with no time limit of its own."""
    gold_parsed = _parse(str(gold))
    pred_parsed = _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def is_equiv(pred: str | None, gold: str, timeout: float = 5.0) -> bool:
    """True when the answer ``pred`` is mathematically equivalent to ``gold``.

    A canonical-string match short-circuits; otherwise math-verify decides. In the main thread the
    whole comparison is limited to ``timeout`` seconds (``False`` past it); in other threads signals
    are unavailable, so there is no limit: use ``Grader`` for untrusted output at scale.
    """
    quick = quick_equiv(pred, gold)
    if quick is not None:
        return quick
    assert pred is not None
    try:
        with time_limit(timeout):
            return math_verify_equiv(pred, str(gold))
    except GradingTimeout:
        return False
