"""The registry of reward model formats: each format class registers itself by name with a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from inferencekit.registry import Registry

if TYPE_CHECKING:
    from inferencekit.reward_models.base import RewardModel

FORMATS: Registry[type[RewardModel]] = Registry("reward model format")

T = TypeVar("T", bound="type[RewardModel]")


def register_format(*names: str) -> Callable[[T], T]:
    """Class decorator: make a `RewardModel` subclass loadable under each of `names`."""

    def decorate(cls: T) -> T:
        FORMATS.register(*names)(cls)
        cls.format_name = names[0]
        return cls

    return decorate


def format_class(name: str) -> type[RewardModel]:
    """The class of format `name`; `UserError` naming the accepted formats when there is none."""
    return FORMATS.get(name)


def format_names() -> list[str]:
    """All registered format names, aliases included."""
    return FORMATS.names()
