"""REBASE, reward-balanced search (Wu et al. 2024, arXiv 2408.00724), over solution steps.

Budget: width N = `n`, the number of finished solutions it may produce. The root is expanded N ways.
At each depth the reward model scores the new nodes; each finished node (EOS, a final `\\boxed{}`, the
token cap, `max_steps`) goes to the pool and uses up one unit of the width. The remaining width W is
shared among the open nodes of that depth in proportion to exp(score / T) (`rebase_temperature`,
default 0.2), and each node is expanded by its share. Rounding (`rebase_widths`):
- `reference` (thu-wyz/inference_scaling rebase.py `select_softmax`): nodes best first, each gets
  ceil(W' e_j / S') of what is left, W' and S' then lose its width and weight, so the widths sum to W and
  the better nodes round up: [0.9, 0.8, 0.5], W = 16, T = 0.2 gives [10, 5, 1];
- `largest_remainder`: every node first gets the floor of its exact share W * w_i / sum(w); the units left
  over go one each to the nodes with the largest fractional parts (ties to the better-ranked node):
  [9, 6, 1] on the same example.
A node whose width is zero is dropped. The search ends when the width is used up; the candidates are the
pool, best first.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from inferencekit.search.base import Problem, SearchResult, register_method
from inferencekit.search.options import MethodOptions
from inferencekit.search.tree import Node, TreeSearch, rank


def softmax_weights(scores: list[float], temperature: float) -> list[float]:
    """exp(score / T) up to a common factor (NaN: 0; all NaN: equal weights)."""
    finite = [s for s in scores if not math.isnan(s)]
    if not finite:
        return [1.0] * len(scores)
    top = max(finite)
    return [0.0 if math.isnan(s) else math.exp((s - top) / temperature) for s in scores]


def reference_widths(scores: list[float], width: int, temperature: float) -> list[int]:
    """Split `width` as REBASE's reference does: in score order, ceil(left * w_j / weight left), summing to it.

    `scores` must be ranked best first (as `rank` gives them).
    """
    weights = softmax_weights(scores, temperature)
    left, rest, out = width, sum(weights), []
    for w in weights:
        k = min(left, math.ceil(left * w / rest - 1e-12)) if rest > 0 else 0
        out.append(k)
        left, rest = left - k, rest - w
    return out


def widths(scores: list[float], width: int, temperature: float) -> list[int]:
    """Split `width` among nodes in proportion to exp(score / T), largest remainders rounding, summing to it."""
    weights = softmax_weights(scores, temperature)
    total = sum(weights)
    shares = [width * w / total for w in weights]
    out = [math.floor(x) for x in shares]
    order = sorted(range(len(scores)), key=lambda i: -(shares[i] - out[i]))  # stable: better-ranked first on ties
    for i in order[: width - sum(out)]:
        out[i] += 1
    return out


class Options(MethodOptions):
    rebase_temperature: float = Field(0.2, gt=0, description="T in exp(reward / T) (default 0.2)")
    rebase_widths: Literal["reference", "largest_remainder"] = Field(
        "reference", description="reference (default; ceil in score order) | largest_remainder")


@register_method("rebase")
class Rebase(TreeSearch):
    """REBASE: the width left after finished paths is shared among open nodes by exp(reward / T)."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        width = self.config.n
        pool: list[Node] = []
        tree = self.tree(problem)
        (frontier,) = tree.expand([tree.root], self.config.n)
        split = reference_widths if self.config.rebase_widths == "reference" else widths
        while frontier:
            tree.score(frontier)
            done = [x for x in frontier if x.terminal]
            pool += done
            width -= len(done)
            live = rank(x for x in frontier if not x.terminal)
            nodes, ks = (live, split([x.score for x in live], width, self.config.rebase_temperature)) \
                if live and width > 0 else ([], [])
            frontier = [kid for kids in tree.expand_each(nodes, ks) for kid in kids]
        return tree.result(rank(pool))
