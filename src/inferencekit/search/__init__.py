"""Search methods, one per module, registered by name: every module of this package is imported here, so a
method's `@register_method` and its options class are all it takes to run it."""

import importlib
import pkgutil

from inferencekit.search.base import (
    Candidate,
    Problem,
    SearchMethod,
    SearchResult,
    get_method,
    method_names,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Candidate", "Problem", "SearchMethod", "SearchResult", "get_method", "method_names", "register_method"]
