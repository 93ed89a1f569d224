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

from inferencekit.search.base import Candidate, Problem, register_method
from inferencekit.search.tree import Node, TreeSearch, group, next_beams, rank, top, unique


def padded_widths(k: int, n: int) -> list[int]:
    """Children of each of `k` kept paths when `n` are made by taking the paths in turn (search-and-learn)."""
    return [len(range(i, n, k)) for i in range(k)]


def interleave(kids: list[list[Node]]) -> list[Node]:
    """Children in the order the padded list makes them: the first child of each path, then the second, ..."""
    return [row[j] for j in range(max(map(len, kids), default=0)) for row in kids if j < len(row)]


@register_method("beam_search")
class BeamSearch(TreeSearch):
    """Step-level beam search: keep the best N/M partial solutions by reward, grow them to N next steps."""

    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        n = self.config.n
        m = min(self.config.beam_width, n)
        roots = self.roots(problems)
        pools: list[list[Node]] = [[] for _ in problems]
        frontier = [kid for kids in self.expand(problems, roots, n) for kid in kids]
        reference = self.config.beam_pool == "reference"
        while frontier:
            self.score(problems, frontier)
            self.lookahead(problems, frontier)
            if reference:
                beams = self.keep_reference(pools, frontier, n, m)
                widths = [w for beams_i in group(beams, len(problems)) for w in padded_widths(len(beams_i), n)]
            else:
                beams = next_beams(pools, frontier, n, m, self.config.filter_duplicates)
                # N next steps while a problem keeps all N/M paths; M each once its pool limits them
                widths = [w for b in group(beams, len(problems)) for w in
                          (padded_widths(len(b), n) if len(b) == max(1, n // m) else [m] * len(b))]
            grown = self.expand_each(problems, beams, widths)
            frontier = [kid for kids in group_rows(beams, grown, len(problems)) for kid in interleave(kids)]
        if reference:
            return [[self.to_candidate(pool[j % len(pool)]) for j in range(n)] if pool else [] for pool in pools]
        finished = [unique(rank(pool)) if self.config.filter_duplicates else pool for pool in pools]
        return [[self.to_candidate(node) for node in top(pool, n)] for pool in finished]

    def keep_reference(self, pools: list[list[Node]], frontier: list[Node], n: int, m: int) -> list[Node]:
        """Finished nodes join their pool in order; the best N/M live ones are kept, in their order in the round."""
        beams: list[Node] = []
        for pool, nodes in zip(pools, group(frontier, len(pools)), strict=True):
            pool += [node for node in nodes if node.terminal]
            live = [node for node in nodes if not node.terminal]
            if self.config.filter_duplicates:
                live = unique(live)
            best = {id(node) for node in rank(live)[: max(1, n // m)]}
            beams += [node for node in live if id(node) in best]
        return beams


def group_rows(nodes: list[Node], rows: list[list[Node]], n_problems: int) -> list[list[list[Node]]]:
    """`rows` (one per node) split by the nodes' problem."""
    out: list[list[list[Node]]] = [[] for _ in range(n_problems)]
    for node, row in zip(nodes, rows, strict=True):
        out[node.problem].append(row)
    return out
