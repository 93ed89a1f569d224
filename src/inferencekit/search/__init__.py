"""Search methods, one per module, registered by name."""

from inferencekit.search import sampling  # noqa: F401  (registers cot, best_of_n)
from inferencekit.search.base import Candidate, Problem, SearchMethod, get_method, method_names, register_method

__all__ = ["Candidate", "Problem", "SearchMethod", "get_method", "method_names", "register_method"]
