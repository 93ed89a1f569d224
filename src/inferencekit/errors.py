"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for (unknown name, missing file, bad value)."""


def unknown(kind: str, value: object, accepted: Iterable[str]) -> UserError:
    """`UserError` for a name that is not one of `accepted`."""
    return UserError(f"unknown {kind} {value!r}; accepted: {', '.join(sorted(accepted))}")
