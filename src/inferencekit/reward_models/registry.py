"""The registry of reward model formats: each format class registers itself by name with a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from inferencekit.errors import unknown

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel

FORMATS: dict[str, type[RewardModel]] = {}

T = TypeVar("T", bound="type[RewardModel]")


def register_format(*names: str) -> Callable[[T], T]:
    """Class decorator: make a `RewardModel` subclass loadable under each of `names`."""

    def decorate(cls: T) -> T:
        for name in names:
            if name in FORMATS and FORMATS[name] is not cls:
                raise ValueError(f"reward model format {name!r} is already registered by {FORMATS[name].__name__}")
            FORMATS[name] = cls
        cls.format_name = names[0]
        return cls

    return decorate


def format_class(name: str) -> type[RewardModel]:
    """The class of format `name`; `UserError` naming the accepted formats when there is none."""
    try:
        return FORMATS[name]
    except KeyError:
        raise unknown("reward model format", name, FORMATS) from None


def format_names() -> list[str]:
    """All registered format names, aliases included."""
    return sorted(FORMATS)
