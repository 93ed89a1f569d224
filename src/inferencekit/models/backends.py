"""The backend registry: backend name -> its generator class (imported only when that backend is used, since
each needs its own packages), and loading one in this process.

Backend modules import `models.base`, never this registry; `Generator.capable_backends` is this module's
lookup, installed here, so that `models/base.py` does not import the registry either.
"""

from __future__ import annotations

from collections.abc import Callable

from inferencekit.errors import UserError, first_line
from inferencekit.models.base import Generator, GeneratorSpec
from inferencekit.registry import Registry

# backend name -> the generator class, imported only when that backend is used (each needs its own packages)
BACKEND_CLASSES: Registry[Callable[[], type[Generator]]] = Registry("backend")


@BACKEND_CLASSES.register("hf")
def _hf() -> type[Generator]:
    from inferencekit.models.hf import HFGenerator

    return HFGenerator


@BACKEND_CLASSES.register("llamacpp")
def _llamacpp() -> type[Generator]:
    from inferencekit.models.llamacpp import LlamaCppGenerator

    return LlamaCppGenerator


@BACKEND_CLASSES.register("openai")
def _openai() -> type[Generator]:
    from inferencekit.models.openai import OpenAIGenerator

    return OpenAIGenerator


@BACKEND_CLASSES.register("vllm")
def _vllm() -> type[Generator]:
    from inferencekit.models.vllm import VLLMGenerator

    return VLLMGenerator


BACKENDS = tuple(BACKEND_CLASSES)


def capable_backends(capability: str) -> list[str]:
    """Names of the registered backends whose generator declares `capability` (each imported to ask it)."""
    able = []
    for name in BACKEND_CLASSES.names():
        try:
            if getattr(BACKEND_CLASSES.get(name)(), capability):
                able.append(name)
        except ImportError:  # its packages are not installed here: it cannot score here either
            continue
    return able


Generator.capable_backends = staticmethod(capable_backends)  # see `Generator.capable_backends`


def load_engine(spec: GeneratorSpec) -> Generator:
    """The spec's backend loaded in this process; a model that fails to load raises `UserError` saying why."""
    try:
        generator_class = BACKEND_CLASSES.get(spec.backend)()
    except ImportError as exc:  # an optional backend (vllm) whose packages are not installed
        raise UserError(first_line(exc)) from None
    try:
        return generator_class(spec)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load model {spec.path!r} ({spec.backend}): {first_line(exc)}") from None
