"""Step-level beam search guided by a process reward model, batched across problems.

N = `n`, M = `beam_width`. Round 0 samples N first steps per problem. Each round the reward model
scores the new steps; finished paths (EOS, a final `\\boxed{}`, the token cap, `max_steps`) go to the
pool, the best N/M live paths are kept (fewer once the pool is filling: only enough to make the
paths still missing) and each is continued M ways. A problem stops at N finished paths or no live
ones. Options: `lookahead` (rank by a greedy rollout that many steps further) and
`filter_duplicates` (drop paths whose text repeats another's).
"""

from __future__ import annotations

from inferencekit.search.base import Candidate, Problem, register_method
from inferencekit.search.tree import Node, TreeSearch, next_beams, rank, top, unique


@register_method("beam_search")
class BeamSearch(TreeSearch):
    """Step-level beam search: keep the best N/M partial solutions by reward, expand each M ways."""

    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        n = self.config.n
        m = min(self.config.beam_width, n)
        roots = self.roots(problems)
        pools: list[list[Node]] = [[] for _ in problems]
        frontier = [kid for kids in self.expand(problems, roots, n) for kid in kids]
        while frontier:
            self.score(problems, frontier)
            self.lookahead(problems, frontier)
            beams = next_beams(pools, frontier, n, m, self.config.filter_duplicates)
            frontier = [kid for kids in self.expand(problems, beams, m) for kid in kids]
        finished = [unique(rank(pool)) if self.config.filter_duplicates else pool for pool in pools]
        return [[self.to_candidate(node) for node in top(pool, n)] for pool in finished]
