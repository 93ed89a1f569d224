"""Are two answers the same? A cheap string layer, then math-verify.

math-verify parses LaTeX with its own grammar (latex2sympy) and compares the results with sympy;
no answer text is ever passed to ``eval``/``exec``/``sympify`` here.
"""

from __future__ import annotations

import cmath
import contextlib
import ctypes
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import FrameType

from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Eq, Expr, Float, I, Rational, Symbol
from sympy.core.function import UndefinedFunction

import inferencekit.grading.engine  # noqa: F401  # quiets math-verify's "timeout disabled" warning
from inferencekit.grading.normalize import (
    canonical_form,
    choice_letter,
    clean_for_parsing,
    is_collection,
    plain_number,
)

# Answers that look like words but are maths; everything else made only of letters is compared
# as a word, because sympy reads "Evelyn" as the product E*v*e*l*y*n (equal to "Evelny").
_MATH_WORDS = frozenset({"pi", "infty", "infinity", "inf", "oo"})
_POINTS = (("0.37", "1.21", "-0.53"), ("1.73", "-0.29", "0.61"), ("-0.91", "0.47", "1.33"))
# math-verify's unit stripping also eats variables named like units ("2t" -> 2, "x + t" -> "x +");
# trailing unit words are dropped by clean_for_parsing instead, which leaves single letters alone.
_EXTRACTION = (
    LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    ),
    ExprExtractionConfig(),
)


class GradingTimeout(BaseException):
    """Raised inside a comparison that ran past its time limit.

    A ``BaseException`` so that math-verify's and sympy's ``except Exception`` blocks let it through.
    """


# The limit fires again this often after it ran out, this many times at most: Python ignores an exception raised
# inside a weakref callback or `__del__`, which the garbage collector runs anywhere, so one can be lost (a test
# once ground on past its limit for ten minutes that way).
_REFIRE_S = 0.1
_REFIRES = 50


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``GradingTimeout`` in the block after ``seconds``; nothing when ``seconds`` is ``None``.

    In the main thread by SIGALRM (an interval timer the caller had set, e.g. pytest-timeout's, is restored
    afterwards, minus the time spent); in any other thread (a search's worker thread) by a timer thread that
    raises it asynchronously in this one (see ``_thread_time_limit``). Either way it is raised again every
    0.1 s until the block is left, should it be lost, but never inside this limit's own cleanup.
    """
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        with _thread_time_limit(seconds):
            yield
        return
    started = time.monotonic()
    fired = 0

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired > _REFIRES:
            return
        fired += 1
        signal.setitimer(signal.ITIMER_REAL, _REFIRE_S)
        if not _leaving(frame):
            raise GradingTimeout()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


@contextmanager
def _thread_time_limit(seconds: float) -> Iterator[None]:
    """``time_limit`` off the main thread, where signals cannot reach: ``PyThreadState_SetAsyncExc``.

    CPython delivers the exception at this thread's next bytecode, so a long call into C code (one
    regular expression) ends first; the parsers math-verify runs are Python and do stop. A lock keeps
    the timer from firing after the block: a pending exception is taken back when leaving.
    """
    ident = threading.get_ident()
    lock = threading.Lock()
    left = threading.Event()
    state = {"fired": False}

    def fire_until_left() -> None:
        if left.wait(seconds):
            return
        for _ in range(_REFIRES + 1):
            with lock:
                if left.is_set():
                    return
                if not _leaving(sys._current_frames().get(ident)):
                    state["fired"] = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(GradingTimeout))
            if left.wait(_REFIRE_S):
                return

    timer = threading.Thread(target=fire_until_left, name="grading-time-limit", daemon=True)
    timer.start()
    try:
        yield
    finally:
        while True:  # one landing here before the timer saw this frame must not skip the disarming
            try:
                with lock:
                    left.set()
                    if state["fired"]:  # raised or still pending: a pending one must not escape the block
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
                break
            except GradingTimeout:
                continue


_LIMIT_CODES = (time_limit.__wrapped__.__code__, _thread_time_limit.__wrapped__.__code__)  # type: ignore[attr-defined]


def _leaving(frame: FrameType | None) -> bool:
    """Whether ``frame`` (where a time limit would raise) is the limit's own cleanup, leaving the block already."""
    return frame is not None and (frame.f_code in _LIMIT_CODES or frame.f_code.co_filename == contextlib.__file__)


def _choice_equiv(pred: str, gold: str) -> bool | None:
    """Multiple choice: a gold written as a letter (``(C)``, ``C``, ``\\text{(C) }7``) decides by letter.

    ``\\textbf{(C) }7`` matches gold ``(C)`` or ``C``; when the gold also gives the value (``(C) 7``),
    a prediction with no letter may match the value instead. ``None`` when the gold is no choice.
    """
    gold_letter, gold_value = choice_letter(gold)
    if gold_letter is None:
        return None
    pred_letter, pred_value = choice_letter(pred)
    if pred_letter is not None:
        return pred_letter == gold_letter
    if gold_value:
        return is_equiv(pred_value, gold_value)
    return False


def quick_equiv(pred: str | None, gold: str) -> bool | None:
    """The answer when string rules settle it, else ``None`` (math-verify must decide).

    Settled here: a missing answer, equal canonical forms, multiple-choice letters, two plain
    numbers (exactly; decimals that differ only past math-verify's rounding go on to it), a number
    against a collection of several entries, words.
    """
    if pred is None:
        return False
    gold = str(gold)
    pred_key, gold_key = canonical_form(pred), canonical_form(gold)
    if not pred_key or not gold_key:
        return False
    choice = _choice_equiv(pred, gold)
    if choice is not None:
        return choice
    if pred_key == gold_key:
        return True
    pred_value, gold_value = plain_number(pred), plain_number(gold)
    if pred_value is not None and gold_value is not None:
        if pred_value == gold_value:
            return True
        if abs(pred_value - gold_value) > 1e-4 * max(1, abs(gold_value)):
            return False
        return None
    if (pred_value is not None and is_collection(gold)) or (gold_value is not None and is_collection(pred)):
        return False  # one number against an interval, tuple, set or matrix of several entries
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


def _function_rhs(value: object) -> object | None:
    """The right side of ``y = ...`` or ``f(x) = ...`` (an equation that names a function), else ``None``."""
    if not isinstance(value, Eq):
        return None
    if isinstance(value.lhs, Symbol) or isinstance(getattr(value.lhs, "func", None), UndefinedFunction):
        return value.rhs
    return None


def _numeric_identity(gold: object, pred: object) -> bool:
    """Two expressions in the same variables agree at several points (trig identities, ``i`` as a symbol).

    math-verify reads ``i`` as a plain symbol and ``simplify`` misses some identities; agreement to
    1e-9 at three fixed points off any special value is the usual numeric check for those (1e-6
    when a side holds a decimal, as math-verify rounds decimals to 6 places).
    """
    if not isinstance(gold, Expr) or not isinstance(pred, Expr):
        return False
    tolerance = 1e-6 if gold.has(Float) or pred.has(Float) else 1e-9
    gold_names, pred_names = {str(x) for x in gold.free_symbols}, {str(x) for x in pred.free_symbols}
    names = sorted(gold_names | pred_names)
    if not names or len(names) > 3 or gold_names - {"i"} != pred_names - {"i"}:
        return False
    for point in _POINTS:
        values = {name: (I if name == "i" else Rational(point[k])) for k, name in enumerate(names)}
        a = complex(gold.subs({x: values[str(x)] for x in gold.free_symbols}).evalf(30))
        b = complex(pred.subs({x: values[str(x)] for x in pred.free_symbols}).evalf(30))
        if not (cmath.isfinite(a) and cmath.isfinite(b)) or abs(a - b) > tolerance * max(1.0, abs(a)):
            return False
    return True


def math_verify_equiv(pred: str, gold: str) -> bool:
    """math-verify's verdict on two bare answers, with no time limit of its own.

    When it says no: ``f(x) = ...`` against ``y = ...`` compares the right sides, and expressions
    in the same variables are compared numerically (``_numeric_identity``).
    """
    gold_parsed = _parse(str(gold))
    pred_parsed = _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(list(gold_parsed), list(pred_parsed), allow_set_relation_comp=True, timeout_seconds=None):
        return True
    gold_value, pred_value = gold_parsed[0], pred_parsed[0]
    gold_rhs, pred_rhs = _function_rhs(gold_value), _function_rhs(pred_value)
    if gold_rhs is not None and pred_rhs is not None:
        return bool(verify(gold_rhs, pred_rhs, timeout_seconds=None))
    try:
        return _numeric_identity(gold_value, pred_value)
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return False


def is_equiv(pred: str | None, gold: str, timeout: float | None = 5.0) -> bool:
    """True when the answer ``pred`` is mathematically equivalent to ``gold``.

    String rules settle what they can (``quick_equiv``); otherwise math-verify decides. In the main
    thread the whole comparison is limited to ``timeout`` seconds (``False`` past it; ``None``: no
    limit), in other threads too (see ``time_limit``); use ``Grader`` for untrusted output at scale.
    """
    try:
        with time_limit(timeout):
            quick = quick_equiv(pred, gold)
            if quick is not None:
                return quick
            return math_verify_equiv(str(pred), str(gold))
    except GradingTimeout:
        return False
