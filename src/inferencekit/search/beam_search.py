"""Step-level beam search guided by a process reward model, batched across problems.

N = `n`, M = `beam_width`. Round 0 samples N first steps per problem. Each round the reward model
scores the new steps; finished paths (EOS, a final `\\boxed{}`, the token cap, `max_steps`) go to the
pool and the best N/M live paths are kept. Options: `lookahead` (rank by a greedy rollout that many
steps further) and `filter_duplicates` (drop paths whose text repeats another's). `beam_pool`:
- `reference` (search-and-learn 6f81cac, src/sal/search/beam_search.py): every round keeps the best N/M
  live paths (in their order in the round) and continues them to N new steps, the kept paths taken in
  turn (N = 10, M = 4: 2 paths, 5 children each), until no path is live or `max_steps`; the candidates
  are the first N paths to finish, in the order they finished, repeated in turn up to N when fewer finished.
- `best`: as above, but fewer paths are kept as the pool fills (only enough to make the N - |pool| paths
  still missing, M children each), the search stops at N finished paths, and the candidates are the N
  best-scored finished paths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inferencekit.search.base import Problem, SearchResult, register_method
from inferencekit.search.options import MethodOptions
from inferencekit.search.tree import Node, TreeSearch, next_beams, rank, top, unique


def padded_widths(k: int, n: int) -> list[int]:
    """Children of each of `k` kept paths when `n` are made by taking the paths in turn (search-and-learn)."""
    return [len(range(i, n, k)) for i in range(k)]


def interleave(kids: list[list[Node]]) -> list[Node]:
    """Children in the order the padded list makes them: the first child of each path, then the second, ..."""
    return [row[j] for j in range(max(map(len, kids), default=0)) for row in kids if j < len(row)]


class Options(MethodOptions):
    beam_pool: Literal["reference", "best"] = Field(
        "reference", description="reference (default; search-and-learn's finished pool) | best")


@register_method("beam_search")
class BeamSearch(TreeSearch):
    """Step-level beam search: keep the best N/M partial solutions by reward, grow them to N next steps."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        n = self.config.n
        m = min(self.config.beam_width, n)
        tree = self.tree(problem)
        pool: list[Node] = []
        (frontier,) = tree.expand([tree.root], n)
        reference = self.config.beam_pool == "reference"
        while frontier:
            tree.score(frontier)
            tree.lookahead(frontier)
            if reference:
                beams = self.keep_reference(pool, frontier, n, m)
                widths = padded_widths(len(beams), n)
            else:
                beams = next_beams(pool, frontier, n, m, self.config.filter_duplicates)
                # N next steps while all N/M paths are kept; M each once the pool limits them
                widths = padded_widths(len(beams), n) if len(beams) == max(1, n // m) else [m] * len(beams)
            frontier = interleave(tree.expand_each(beams, widths))
        if reference:
            return tree.result([pool[j % len(pool)] for j in range(n)] if pool else [])
        finished = unique(rank(pool)) if self.config.filter_duplicates else pool
        return tree.result(top(finished, n))

    def keep_reference(self, pool: list[Node], frontier: list[Node], n: int, m: int) -> list[Node]:
        """Finished nodes join the pool in order; the best N/M live ones are kept, in their order in the round."""
        pool += [node for node in frontier if node.terminal]
        live = [node for node in frontier if not node.terminal]
        if self.config.filter_duplicates:
            live = unique(live)
        best = {id(node) for node in rank(live)[: max(1, n // m)]}
        return [node for node in live if id(node) in best]
