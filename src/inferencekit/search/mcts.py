"""Monte Carlo tree search over solution steps, batched across problems.

Each iteration, per problem: select a leaf by PUCT from the root (Q = mean backed-up value, a
child's own evaluation before its first visit; prior uniform or proportional to the reward); expand
it with M (`beam_width`) sampled next steps; evaluate each child by the reward model, or with
`mcts_rollout` by the reward of a greedy rollout to a final answer; back the values up (`mcts_backup`):
`mean` (default) backs the mean child value up to the leaf and every ancestor, one visit per iteration
(so the root's visits count the iterations); `each` backs each child's value up from the child itself,
as if each child were one simulation (M visits per iteration, as AlphaZero-style expansions that evaluate
every new child do).
A selected finished leaf is re-evaluated without generation. The leaves of all problems go to the
generator and the reward model in one call each. Budget: `mcts_iterations` (default `n`) and, per
problem, `mcts_token_budget` generated tokens.

The answer: walk from the root to a finished solution by visit count (or value, `mcts_select_by`).
Every finished node and rollout is a candidate, for voting; the chosen one comes first, with
`meta["chosen"]`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from inferencekit.search.base import Candidate, Problem, SearchResult, register_method
from inferencekit.search.options import MAX_SAMPLES, MAX_STEPS, MAX_TOKENS, MethodOptions
from inferencekit.search.tree import Node, Tree, TreeSearch, rank


class Options(MethodOptions):
    mcts_iterations: int | None = Field(None, ge=1, le=MAX_STEPS, description="iterations per problem (default n)")
    mcts_c_puct: float = Field(1.0, ge=0, description="exploration constant (default 1.0)")
    mcts_rollout: bool = Field(False, description="evaluate by rollout to the end")
    mcts_select_by: Literal["visits", "value"] = Field("visits", description="visits (default) | value")
    mcts_prior: Literal["uniform", "score"] = Field("uniform", description="uniform (default) | score")
    mcts_token_budget: int | None = Field(None, ge=1, le=MAX_TOKENS * MAX_SAMPLES,
                                          description="generated tokens per problem")
    mcts_backup: Literal["mean", "each"] = Field(
        "mean", description="mean (default; the new children's mean, one visit) | each")


@register_method("mcts")
class MCTS(TreeSearch):
    """Monte Carlo tree search: PUCT selection, M-way expansion, reward/rollout evaluation, backpropagation."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        tree = self.tree(problem)
        found = self.grow(tree)
        return SearchResult(self.candidates(tree, found), tree.generated)

    def grow(self, tree: Tree) -> list[Node]:
        """Run the iterations from `tree.root`; return the finished nodes and rollout leaves."""
        c = self.config
        finals: list[Node] = []  # finished nodes and rollout leaves
        budget = c.mcts_token_budget or math.inf
        for _ in range(c.mcts_iterations or c.n):
            if tree.generated >= budget:
                break
            leaf = self.select(tree.root)
            (kids,) = tree.expand([leaf], c.beam_width)
            tree.score(kids)
            if c.mcts_rollout:
                live = [kid for kid in kids if not kid.terminal]
                ends = tree.rollout(live)
                tree.score(ends)
                for kid, end in zip(live, ends, strict=True):
                    kid.score = end.score
                    finals.append(end)
            finals += [kid for kid in kids if kid.terminal]
            self.set_priors(kids)
            if c.mcts_backup == "each" and kids:
                for kid in kids:
                    kid.backpropagate(kid.value)
            else:
                leaf.backpropagate(sum(kid.value for kid in kids) / len(kids) if kids else leaf.value)
        return finals

    def select(self, root: Node) -> Node:
        """Descend by PUCT to a node without children (unexpanded, or finished); first child on ties."""
        node, c_puct = root, self.config.mcts_c_puct
        while node.children:
            explore = c_puct * math.sqrt(node.visits)
            node = max(node.children, key=lambda ch: ch.value + explore * ch.prior / (1 + ch.visits))
        return node

    def set_priors(self, kids: list[Node]) -> None:
        weights = [max(kid.value, 0.0) for kid in kids] if self.config.mcts_prior == "score" else []
        total = sum(weights)
        for i, kid in enumerate(kids):
            kid.prior = weights[i] / total if total > 0 else 1 / len(kids)

    def key(self, node: Node) -> tuple[float, float]:
        return (node.visits, node.value) if self.config.mcts_select_by == "visits" else (node.value, node.visits)

    def candidates(self, tree: Tree, found: list[Node]) -> list[Candidate]:
        """The chosen solution first, then every other finished one, best reward first."""
        def finished_below(node: Node) -> bool:
            return node.terminal or node.rollout is not None or any(map(finished_below, node.children))

        root = tree.root
        node: Node | None = root
        while node is not None and not node.terminal:
            options = [ch for ch in node.children if finished_below(ch)]
            if not options:
                node = node.rollout
                break
            node = max(options, key=self.key)
        if node is None:  # nothing finished: the most visited unfinished path
            node = root
            while node.children:
                node = max(node.children, key=self.key)
        others = [tree.to_candidate(x) for x in rank(found) if x is not node]
        return [tree.to_candidate(node, chosen=True), *others]
