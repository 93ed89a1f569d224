"""Search methods, one per module, registered by name."""

from inferencekit.search import beam_search, dvts, mcts, sampling, token_beam  # noqa: F401  (register methods)
from inferencekit.search.base import Candidate, Problem, SearchMethod, get_method, method_names, register_method

__all__ = ["Candidate", "Problem", "SearchMethod", "get_method", "method_names", "register_method"]
