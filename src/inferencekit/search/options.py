"""A method's typed options, declared beside its code: they make the run config's fields, the `run` flags, their
`--help` and `inferencekit list methods`.

A method declares `class Options(MethodOptions)` in its own file, pydantic fields with a default, bounds and a
`description` (the flag's help), and sets it as the method's `Options`. Field names are flat run-config keys
(config.yaml, sweep specs, `--config` files), so they carry the method's prefix: `mcts_c_puct` is the key and
`--mcts-c-puct` the flag. A field belongs to the class that declares it; methods sharing options inherit it.
`RunConfig` subclasses every registered method's options class, so it stays one validated object.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from inferencekit.search.base import SearchMethod

# Upper bounds on sizes: far above any real use, low enough that a typo cannot write a 32 MB line per problem.
MAX_SAMPLES = 4096  # n, beam width, traces per problem
MAX_STEPS = 100_000  # search iterations and steps, retries of a method
MAX_TOKENS = 1 << 20  # tokens per generation
MAX_WORKERS = 4096  # problems in flight, batch size, processes and actors


class MethodOptions(BaseModel):
    """Base of every method's options class (a method without options has this one, which declares none)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def own_fields(cls: type[MethodOptions]) -> dict[str, FieldInfo]:
    """The fields `cls` itself declares (not those it inherits), in declaration order."""
    own = cls.__dict__.get("__annotations__", {})
    return {name: info for name, info in cls.model_fields.items() if name in own}


def options_classes(methods: dict[str, type[SearchMethod]]) -> list[type[MethodOptions]]:
    """Every class that declares options of one of `methods` (bases before subclasses, in registration order)."""
    out: list[type[MethodOptions]] = []
    for method in methods.values():
        for cls in reversed(method.Options.__mro__):
            if isinstance(cls, type) and issubclass(cls, MethodOptions) and own_fields(cls) and cls not in out:
                out.append(cls)
    return out


def users(cls: type[MethodOptions], methods: dict[str, type[SearchMethod]]) -> list[str]:
    """The names of the methods whose options include `cls`'s."""
    return [name for name, method in methods.items() if issubclass(method.Options, cls)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """The annotation without `| None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else annotation
    return annotation


def add_flags(group: Any, fields: dict[str, FieldInfo]) -> None:
    """One `run` flag per option: a number's type, a switch for a bool, text for the rest (the config validates).

    No default: a flag not given is None, so the config file and presets below it still apply.
    """
    for name, info in fields.items():
        kind = _plain(info.annotation)
        help_text = (info.description or "").replace("%", "%%")
        if kind is bool:
            group.add_argument(flag(name), action="store_true", default=None, help=help_text)
        else:
            group.add_argument(flag(name), type=kind if kind in (int, float) else str, help=help_text)


def add_method_flags(parser: argparse.ArgumentParser, methods: dict[str, type[SearchMethod]]) -> None:
    """An argument group per options class, titled by the methods that use it."""
    for cls in options_classes(methods):
        add_flags(parser.add_argument_group("method options: " + ", ".join(users(cls, methods))), own_fields(cls))


def option_lines(method: type[SearchMethod]) -> Iterator[str]:
    """`--flag: help` for each option of `method` (for `inferencekit list methods`)."""
    for name, info in method.Options.model_fields.items():
        yield f"{flag(name)}: {info.description or ''}".rstrip(": ")
