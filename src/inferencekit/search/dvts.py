"""Diverse verifier tree search (DVTS): N / M independent subtrees per problem, each greedy on the reward.

Round 0 samples N first steps per problem and deals them out, M to a subtree. N must be a multiple of M
(search-and-learn 6f81cac, src/sal/config.py, refuses it too); with N < M there is one subtree of N. Each
round every live subtree keeps its best node (by the reward model; `lookahead` applies) and continues it M
ways; a subtree stops when its best node is finished. A subtree only ever sees its own nodes, and seeds come
from tree positions, so subtrees do not influence each other. The candidates are each subtree's last M
siblings, its choice first (search-and-learn's output), so N per problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferencekit.search.base import Problem, SearchResult, register_method
from inferencekit.search.tree import TreeSearch, rank, require_multiple

if TYPE_CHECKING:
    from inferencekit.config import RunConfig


@register_method("dvts")
class DVTS(TreeSearch):
    """Diverse verifier tree search: N/M independent subtrees, each expanding its best node M ways."""

    @classmethod
    def check(cls, config: RunConfig) -> None:
        require_multiple(config.n, config.beam_width, "dvts deals the N first steps out M to a subtree")

    def search(self, problem: Problem) -> SearchResult:
        m = min(self.config.beam_width, self.config.n)
        subtrees = self.config.n // m
        tree = self.tree(problem)
        (first,) = tree.expand([tree.root], subtrees * m)
        groups = [first[s * m : (s + 1) * m] for s in range(subtrees)]
        live = [g for g, kids in enumerate(groups) if kids]
        while live:
            nodes = [node for g in live for node in groups[g]]
            tree.score(nodes)
            tree.lookahead(nodes)
            best = {g: rank(groups[g])[0] for g in live}
            live = [g for g in live if not best[g].terminal]
            for g, kids in zip(live, tree.expand([best[g] for g in live], m), strict=True):
                groups[g] = kids
        return tree.result(node for kids in groups for node in rank(kids))
