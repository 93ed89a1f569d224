"""Search methods, one per module, registered by name."""

from inferencekit.search import (  # noqa: F401  (register methods)
    beam_search,
    budget_forcing,
    deepconf,
    dvts,
    mcts,
    particle_filter,
    rebase,
    sampling,
    self_consistency,
    self_refine,
    token_beam,
)
from inferencekit.search.base import Candidate, Problem, SearchMethod, get_method, method_names, register_method

__all__ = ["Candidate", "Problem", "SearchMethod", "get_method", "method_names", "register_method"]
