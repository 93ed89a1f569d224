"""One registry type for everything chosen by name: search methods, votes, reward model formats, datasets,
backends. Registering a taken name is an error; looking up an unknown one is a `UserError` naming the
accepted names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from inferencekit.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`kind` is how errors name it, e.g. "method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; `ValueError` when another entry already has that name."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered by {_label(self._entries[name])}")
        self._entries[name] = entry
        return entry

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated function or class under each of `names`."""

        def decorate(entry: T) -> T:
            for name in names:
                self.add(name, entry)
            return entry

        return decorate

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's temporary entry)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry `name`; `UserError` "unknown <kind> 'x'; accepted: ..." when there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):  # noqa: ANN201 - dict-like view
        return self._entries.items()


def _label(entry: object) -> str:
    return getattr(entry, "__qualname__", None) or repr(entry)
