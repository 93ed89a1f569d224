"""Ctrl-C and SIGTERM: the first asks for a clean stop, a second one exits at once.

The CLI installs the handlers (`handle_signals`, main thread only). While a run generates it holds a
`StopRequest` (`stop_request()`): the first signal only marks it (every run's, when several run at once, as in
a sweep), and each run stops admitting problems,
saves those that finished, cancels the rest and raises `Interrupted`. Anywhere else the first signal
raises `Interrupted` where the main thread is, as Ctrl-C normally raises `KeyboardInterrupt`. A second
signal kills the child processes registered with `on_hard_exit` (grading workers) and exits at once.
Exit codes are the shell's 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    return 128 + signum


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `saved` finished problems were appended by this invocation first."""

    def __init__(self, signum: int = signal.SIGINT, saved: int | None = None, done: int | None = None,
                 total: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved, self.done, self.total = signum, saved, done, total

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)

    def message(self) -> str:
        """The one line the CLI prints."""
        what = f"interrupted ({signal.Signals(self.signum).name})"
        if self.saved is not None:
            what += f"; saved the {self.saved} problem(s) this run finished"
            if self.total is not None:
                what += f" ({self.done} of {self.total} done)"
        return what + "; rerun the same command to resume"


class StopRequest:
    """Set by the first signal while a run generates; the run polls it between problems."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.signalled: int | None = None  # the first signal received
        self.requests: list[StopRequest] = []  # the runs generating now (a sweep runs several at once)
        self.killers: list[Callable[[], None]] = []
        self.lock = threading.Lock()


_state = _State()


@contextmanager
def stop_request() -> Iterator[StopRequest]:
    """While inside, the first signal marks the yielded request instead of raising (see the module doc)."""
    request = StopRequest()
    with _state.lock:
        if _state.signalled is not None:  # a signal came just before: stop at once
            request.signum = _state.signalled
        _state.requests.append(request)
    try:
        yield request
    finally:
        with _state.lock:
            _state.requests.remove(request)


def on_hard_exit(kill: Callable[[], None]) -> Callable[[], None]:
    """Register `kill` (fast, signal-safe: e.g. SIGKILL child processes) to run before a second signal's exit.

    Returns the function that unregisters it.
    """
    with _state.lock:
        _state.killers.append(kill)

    def forget() -> None:
        with _state.lock:
            if kill in _state.killers:
                _state.killers.remove(kill)

    return forget


def _handler(signum: int, frame: object) -> None:
    if _state.signalled is not None:
        hard_exit(exit_code(signum))
    _state.signalled = signum
    requests = list(_state.requests)  # no lock: a handler must not wait (list() of a list is atomic under the GIL)
    for request in requests:
        request.signum = signum
    if not requests:
        raise Interrupted(signum)


def hard_exit(code: int) -> None:
    """Kill the registered child processes and leave now, without unwinding (the second signal)."""
    for kill in list(_state.killers):
        try:
            kill()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    try:
        sys.stderr.write("inferencekit: interrupted again; exiting now (rerun the same command to resume)\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(code)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the block (a no-op outside the main thread, or when nested)."""
    if _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state.installed, _state.signalled = True, None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.installed, _state.signalled = False, None


# Tests stop a run at a chosen moment with "K:SIGNAL[:STALL]": once the run has appended K problems it waits
# for the problems in flight to finish (so they are finished but not saved), then sends itself SIGNAL (INT or
# TERM); with STALL, saving them on the way out first waits STALL seconds (room for a second signal).
TEST_SIGNAL_ENV = "INFERENCEKIT_TEST_SIGNAL"


@dataclass(frozen=True)
class SignalHook:
    after: int
    signum: int
    stall_s: float = 0.0

    def fire(self, running: Iterable[Future]) -> None:
        wait(list(running), timeout=120)
        os.kill(os.getpid(), self.signum)

    def stall(self) -> None:
        time.sleep(self.stall_s)


def signal_hook() -> SignalHook | None:
    """The test hook set in `$INFERENCEKIT_TEST_SIGNAL`, if any."""
    raw = os.environ.get(TEST_SIGNAL_ENV)
    if not raw:
        return None
    after, name, *stall = raw.split(":")
    return SignalHook(int(after), signal.Signals[f"SIG{name}"], float(stall[0]) if stall else 0.0)
