"""User mistakes and how errors read: the one exception type the CLI reports in one line (exit 2), and
the helpers that turn any exception or validation failure into one line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """A mistake in what the user asked for (unknown name, missing file, bad value)."""


def unknown(kind: str, value: object, accepted: Iterable[str]) -> UserError:
    """`UserError` for a name that is not one of `accepted`."""
    return UserError(f"unknown {kind} {value!r}; accepted: {', '.join(sorted(accepted))}")


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message (a library's multi-line message cut to its summary);
    the exception's type name when it says nothing."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0].strip()
    return "" if isinstance(error, str) else type(error).__name__


def one_line(error: BaseException, limit: int = 500) -> str:
    """The whole message of an error on one line (whitespace runs joined), at most `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


def validation_message(exc: Any, source: str, accepted: Iterable[str]) -> str:
    """One line naming each bad key of a pydantic `ValidationError` and what is accepted."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "value"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r} (accepted: {', '.join(accepted)})")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid {source}: " + "; ".join(parts)
