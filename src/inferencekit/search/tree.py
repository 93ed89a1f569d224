"""The tree that step-level searches grow, and the batched operations every tree method shares.

A `Node` is a partial solution: the text generated so far for the problem. The operations work on
all the given nodes at once, so each search round costs one generator call (`expand`, `rollout`) and
one reward-model call (`score`):

- `expand`: "continue these prefixes until the step separator", k samples each;
- `score`: step scores of each node's path, and one aggregated score to rank by;
- `rollout`: a greedy continuation to a later step or to the end (lookahead, MCTS evaluation);
- `rank` / `top` / `unique`: deterministic selection; `to_candidate`: a node as a finished `Candidate`.

Sampling seeds come from the problem's seed and the node's position in its tree (`node_seed`), so a
search gives the same tree whatever else the engine runs beside it. `Tree` binds the operations to one
problem's search: its models, the run's settings, and the tokens it generated.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from inferencekit.errors import UserError, unknown
from inferencekit.models.base import Completion, Generator, SamplingParams, truncate_at_stop
from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult

if TYPE_CHECKING:
    from inferencekit.config import RunConfig
    from inferencekit.reward_models.base import RewardModel

log = logging.getLogger("inferencekit")


@dataclass(eq=False)
class Node:
    """A partial solution of the problem.

    `step` is the text this node adds; `text` the whole path's text (a non-terminal node's ends with
    the step separator); `path` the child indices from the root (the node's identity, and its seed);
    `tokens` the tokens generated along the path. `step_scores` are the reward model's scores of the
    path's steps and `score` the value the search ranks by (their aggregate, or a rollout's).
    `visits` / `value_sum` are MCTS statistics, `prior` its PUCT prior; `logprob` the sum of the
    path's token log-probabilities (token-level search).
    """

    parent: Node | None = None
    step: str = ""
    path: tuple[int, ...] = ()
    tokens: int = 0
    terminal: bool = False
    finish_reason: str = "stop"
    step_scores: list[float] | None = None
    score: float = math.nan
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    logprob: float = 0.0
    children: list[Node] = field(default_factory=list)
    rollout: Node | None = None  # leaf of a greedy rollout from here, when one was made
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = (self.parent.text if self.parent else "") + self.step

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def value(self) -> float:
        """Mean backed-up value; before any visit the node's own score (0 when it has none)."""
        if self.visits:
            return self.value_sum / self.visits
        return 0.0 if math.isnan(self.score) else self.score

    def backpropagate(self, value: float) -> None:
        """Add one visit with `value` to this node and every ancestor."""
        node: Node | None = self
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node = node.parent


def node_seed(seed: int, path: Sequence[int]) -> int:
    """A sampling seed from a problem's seed and a node's position: stable across runs and batches."""
    digest = hashlib.blake2b(repr((seed, tuple(path))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def has_final_answer(text: str) -> bool:
    """Whether `text` holds a complete `\\boxed{...}` answer."""
    # imported on use: grading loads sympy (seconds), and the config imports every method
    from inferencekit.grading.boxes import boxed_contents

    return "boxed" in text and bool(boxed_contents(text))


def expand(
    generator: Generator,
    problem: Problem,
    nodes: Sequence[Node],
    k: int,
    params: SamplingParams,
    *,
    separator: str | None,
    max_steps: int | None = None,
    attach: bool = True,
) -> list[list[Node]]:
    """Continue every (distinct) node `k` ways, in ONE generator call for all nodes.

    The prompt is the problem's prompt plus the node's text; a continuation stops at `separator`
    (None: none), and a path never exceeds `params.max_new_tokens` tokens in all. A child is terminal
    when it ends otherwise (EOS, a user stop string, the token cap), holds a final `\\boxed{}` answer,
    or reaches depth `max_steps`. Terminal nodes get no children.
    """
    todo = [node for node in nodes if not node.terminal and node.tokens < params.max_new_tokens]
    if not todo:
        return [[] for _ in nodes]
    stop = ((separator,) if separator else ()) + tuple(s for s in params.stop if s != separator)
    per_node = [
        params.replace(n=k, stop=stop, include_stop=False, max_new_tokens=params.max_new_tokens - node.tokens,
                       seed=node_seed(problem.seed, node.path))
        for node in todo
    ]
    outputs = generator.generate([problem.prompt + node.text for node in todo], per_node)
    made: dict[int, list[Node]] = {}
    for node, completions in zip(todo, outputs, strict=True):
        kids = []
        for j, c in enumerate(completions):
            at_separator = separator is not None and c.stop_reason == separator
            tokens = node.tokens + c.tokens
            capped = tokens >= params.max_new_tokens or c.finish_reason == "length"
            child = Node(
                parent=node, step=c.text + (separator if at_separator else ""),
                path=node.path + (j,), tokens=tokens,
            )
            deep = max_steps is not None and child.depth >= max_steps
            ended = not at_separator or capped
            child.terminal = ended or deep or has_final_answer(child.text)
            child.finish_reason = "length" if capped or (deep and not ended) else "stop"
            kids.append(child)
        if attach:
            node.children.extend(kids)
        made[id(node)] = kids
    return [made.get(id(node), []) for node in nodes]


def expand_tokens(
    generator: Generator, problem: Problem, nodes: Sequence[Node], k: int, params: SamplingParams
) -> list[list[Node]]:
    """Continue every live node by each of its `k` likeliest next tokens, in ONE generator call.

    A child's `logprob` adds its token's log-probability to the parent's. It is terminal at an
    end-of-sequence token, a stop string of `params` (cut off), a final `\\boxed{}` answer, or the
    token cap. A token that is part of a multi-byte character (no text of its own) is skipped:
    prompts are text, so a path can only hold whole characters.
    """
    todo = [node for node in nodes if not node.terminal and node.tokens < params.max_new_tokens]
    if not todo:
        return [[] for _ in nodes]
    one = params.replace(n=1, temperature=0.0, max_new_tokens=1, stop=(), logprobs=False, top_logprobs=k)
    outputs = generator.generate([problem.prompt + node.text for node in todo], one)
    made: dict[int, list[Node]] = {}
    for node, (c,) in zip(todo, outputs, strict=True):
        if c.top_logprobs is None:
            raise UserError(f"token-level search needs the top-k token log-probabilities, which the "
                            f"{generator.backend} backend did not return")
        kids = []
        for j, (piece, logprob) in enumerate(c.top_logprobs[0] if c.top_logprobs else []):
            if "\ufffd" in piece:
                continue
            text, stop = truncate_at_stop(node.text + piece, params.stop)
            child = Node(parent=node, step=text[len(node.text):], path=node.path + (j,),
                         tokens=node.tokens + 1, logprob=node.logprob + logprob)
            child.text = text  # a stop string may have begun in the parent's text
            capped = child.tokens >= params.max_new_tokens
            child.terminal = piece == "" or stop is not None or capped or has_final_answer(child.text)
            child.finish_reason = "length" if capped and not (piece == "" or stop is not None) else "stop"
            kids.append(child)
        node.children.extend(kids)
        made[id(node)] = kids
    return [made.get(id(node), []) for node in nodes]


def score(
    reward_model: RewardModel, problem: Problem, nodes: Iterable[Node], aggregation: str = "last"
) -> None:
    """Fill `step_scores` and `score` of the nodes not scored yet, in ONE reward-model call for all."""
    # imported on use: grading loads sympy (seconds), and the config imports every method
    from inferencekit.voting import aggregate

    todo = [node for node in nodes if node.step_scores is None]
    if not todo:
        return
    scores = reward_model.score([problem.question] * len(todo), [[n.text] for n in todo],
                                prompts=[problem.prompt] * len(todo))
    for node, (steps,) in zip(todo, scores, strict=True):
        node.step_scores = [float(s) for s in steps]
        node.score = aggregate(node.step_scores, aggregation)


def rollout(
    generator: Generator,
    problem: Problem,
    nodes: Sequence[Node],
    params: SamplingParams,
    *,
    separator: str,
    steps: int | None = None,
    max_steps: int | None = None,
) -> list[Node]:
    """Greedy continuations of the nodes, kept out of the tree: `steps` more steps, or to the end (None).

    To the end is one generator call (no separator stop); `steps` steps take one call per step.
    Each node's leaf is also stored in `node.rollout`; a terminal node is its own leaf.
    """
    greedy = params.replace(temperature=0.0)
    if steps is None:
        leaves = [kids[0] if kids else node for node, kids in zip(
            nodes, expand(generator, problem, nodes, 1, greedy, separator=None, attach=False), strict=True
        )]
    else:
        leaves = list(nodes)
        for _ in range(steps):
            grown = expand(generator, problem, leaves, 1, greedy, separator=separator, max_steps=max_steps,
                           attach=False)
            leaves = [kids[0] if kids else leaf for leaf, kids in zip(leaves, grown, strict=True)]
    for node, leaf in zip(nodes, leaves, strict=True):
        node.rollout = leaf
    return leaves


def _finite(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def rank(nodes: Iterable[Node]) -> list[Node]:
    """Nodes by score, best first (no score counts as worst); ties by tree position, so never by batch order."""
    return sorted(nodes, key=lambda n: (-_finite(n.score), n.path))


def top(nodes: Iterable[Node], k: int) -> list[Node]:
    """The `k` best nodes (see `rank`)."""
    return rank(nodes)[:k]


def unique(nodes: Iterable[Node]) -> list[Node]:
    """The nodes without repeats: the first node of each text (up to whitespace) is kept."""
    seen: set[str] = set()
    out = []
    for node in nodes:
        key = " ".join(node.text.split())
        if key not in seen:
            seen.add(key)
            out.append(node)
    return out


def next_beams(pool: list[Node], frontier: Iterable[Node], n: int, m: int, filter_duplicates: bool) -> list[Node]:
    """One beam-search selection: finished nodes join the pool, and the best live ones become the next beams.

    A pool that holds N (`n`) paths is done (no beams); otherwise the best N/M (`m` children per beam) live
    nodes go on, fewer as the pool fills: only enough to make the N - |pool| paths still missing.
    """
    ranked = unique(rank(frontier)) if filter_duplicates else rank(frontier)
    pool += [node for node in ranked if node.terminal]
    need = n - len(pool)
    if need <= 0:
        return []
    return [node for node in ranked if not node.terminal][: min(max(1, n // m), -(-need // m))]


def require_multiple(n: int, beam_width: int, why: str) -> None:
    """Refuse (one line) an N that is not a multiple of the width M (N < M means one group of N): no flooring."""
    m = min(beam_width, n)
    if n % m:
        raise UserError(f"{why}: --n {n} is not a multiple of --beam-width {m}; "
                        f"give --n {n - n % m} or {n + m - n % m}")


def to_candidate(node: Node, separator: str | None = None, **meta: Any) -> Candidate:
    """A node as a candidate: its path's text (trailing separator dropped), tokens and step scores."""
    text = node.text.removesuffix(separator) if separator else node.text
    finish = node.finish_reason if node.terminal else "length"  # an unfinished path was cut short
    return Candidate(text=text, tokens=node.tokens, step_scores=list(node.step_scores or []),
                     finish_reason=finish, meta=meta)


class TreeSearch(SearchMethod):
    """Base of the tree methods: each search grows a `Tree` of its problem (`self.tree(problem)`)."""

    needs_reward_model = True
    samples = True  # False: the method asks for top-k tokens instead of sampling

    def __init__(self, config: RunConfig, generator: Generator, reward_model: RewardModel | None = None) -> None:
        super().__init__(config, generator, reward_model)
        if config.temperature == 0 and self.samples:
            log.warning("%s samples several continuations per node: at temperature 0 they are all equal", self.name)

    def tree(self, problem: Problem) -> Tree:
        """A fresh tree of `problem`, grown with this method's models and settings."""
        return Tree(problem, self.generator, self.reward_model, self.config)


class Tree:
    """One problem's search tree in progress: the shared operations bound to the problem, the models and the
    run's settings, and `generated`, every token generated so far (pruned branches and rollouts too, shared
    prefixes once, which the candidates' path tokens do not show)."""

    def __init__(self, problem: Problem, generator: Generator, reward_model: Any, config: RunConfig) -> None:
        self.problem, self.generator, self.reward_model, self.config = problem, generator, reward_model, config
        self.root = Node()
        self.generated = 0
        self.params = config.sampling_params(0)

    def _count(self, nodes: Sequence[Node], grown: list[list[Node]]) -> None:
        for node, kids in zip(nodes, grown, strict=True):
            self.generated += sum(kid.tokens - node.tokens for kid in kids)

    def expand(self, nodes: Sequence[Node], k: int) -> list[list[Node]]:
        grown = expand(self.generator, self.problem, nodes, k, self.params, separator=self.config.step_separator,
                       max_steps=self.config.max_steps)
        self._count(nodes, grown)
        return grown

    def expand_each(self, nodes: Sequence[Node], ks: Sequence[int]) -> list[list[Node]]:
        """`expand` with a width per node (particle filter, REBASE)."""
        grown = expand_each(self.generator, self.problem, nodes, ks, self.params,
                            separator=self.config.step_separator, max_steps=self.config.max_steps)
        self._count(nodes, grown)
        return grown

    def expand_tokens(self, nodes: Sequence[Node], k: int) -> list[list[Node]]:
        grown = expand_tokens(self.generator, self.problem, nodes, k, self.params)
        self.generated += sum(bool(kids) for kids in grown)  # one token computed per node; its alternatives free
        return grown

    def score(self, nodes: Iterable[Node], aggregation: str | None = None) -> None:
        score(self.reward_model, self.problem, nodes, aggregation or self.config.aggregation)

    def rollout(self, nodes: Sequence[Node], steps: int | None = None) -> list[Node]:
        leaves = rollout(self.generator, self.problem, nodes, self.params, separator=self.config.step_separator,
                         steps=steps, max_steps=self.config.max_steps)
        self._count(nodes, [[leaf] for leaf in leaves])
        return leaves

    def lookahead(self, nodes: Sequence[Node]) -> None:
        """Rank live nodes by the score of a greedy rollout `config.lookahead` steps further."""
        live = [n for n in nodes if not n.terminal]
        if self.config.lookahead and live:
            leaves = self.rollout(live, self.config.lookahead)
            self.score(leaves)
            for node, leaf in zip(live, leaves, strict=True):
                node.score = leaf.score

    def to_candidate(self, node: Node, **meta: Any) -> Candidate:
        return to_candidate(node, self.config.step_separator, **meta)

    def result(self, nodes: Iterable[Node], **meta: Any) -> SearchResult:
        """The nodes as the search's candidates, with every token this tree generated."""
        return SearchResult([self.to_candidate(node, **meta) for node in nodes], self.generated)


# ---- primitives added for particle filtering, REBASE and DeepConf (issue 14) ----


def expand_each(
    generator: Generator,
    problem: Problem,
    nodes: Sequence[Node],
    ks: Sequence[int],
    params: SamplingParams,
    *,
    separator: str | None,
    max_steps: int | None = None,
) -> list[list[Node]]:
    """Continue node i `ks[i]` ways (0: not at all): `expand` once per distinct width.

    The nodes must be distinct (a node wanted twice is one node with a larger k): children are told
    apart by their index, which is their seed.
    """
    if len({id(node) for node in nodes}) != len(nodes):
        raise ValueError("expand_each needs distinct nodes; give a repeated node a larger k instead")
    out: list[list[Node]] = [[] for _ in nodes]
    for k in sorted({k for k in ks if k > 0}):
        picked = [i for i, kk in enumerate(ks) if kk == k]
        grown = expand(generator, problem, [nodes[i] for i in picked], k, params, separator=separator,
                       max_steps=max_steps)
        for i, kids in zip(picked, grown, strict=True):
            out[i] = kids
    return out


def resample(probs: Sequence[float], n: int, rng: np.random.Generator, how: str = "multinomial") -> list[int]:
    """`n` indices drawn with replacement in proportion to `probs` (which sum to 1), in ascending order.

    `multinomial`: n independent draws. `systematic`: one uniform u, then the points (j + u) / n on the
    cumulative weights, so index i is drawn floor(n p_i) or ceil(n p_i) times.
    """
    p = np.asarray(probs, dtype=float)
    cumulative = np.cumsum(p / p.sum())
    cumulative[-1] = 1.0
    if how == "systematic":
        points = (np.arange(n) + rng.uniform()) / n
    elif how == "multinomial":
        points = rng.uniform(size=n)
    else:
        raise unknown("resampling", how, ("multinomial", "systematic"))
    return sorted(int(i) for i in np.searchsorted(cumulative, points, side="right"))


def expand_chunk(
    generator: Generator, problem: Problem, nodes: Sequence[Node], params: SamplingParams, tokens: int
) -> list[tuple[Node, Completion] | None]:
    """Continue each live node by at most `tokens` more tokens (one sample), in ONE generator call.

    The child is terminal when the completion ended (EOS, a stop string) or the path reached
    `params.max_new_tokens`. A character cut between chunks is dropped and redone by the next chunk.
    Returns (child, completion) per node, None for a node that was already finished. Asks for what
    `params` asks (log-probabilities, top-k), so the caller can read each chunk's tokens.
    """
    todo = [node for node in nodes if not node.terminal and node.tokens < params.max_new_tokens]
    per_node = [
        params.replace(n=1, max_new_tokens=min(tokens, params.max_new_tokens - node.tokens),
                       seed=node_seed(problem.seed, node.path))
        for node in todo
    ]
    outputs = generator.generate([problem.prompt + node.text for node in todo], per_node) if todo else []
    made: dict[int, tuple[Node, Completion]] = {}
    for node, (c,) in zip(todo, outputs, strict=True):
        ended = c.finish_reason != "length"
        text = c.text if ended else c.text.rstrip("\ufffd")
        child = Node(parent=node, step=text, path=node.path + (0,), tokens=node.tokens + c.tokens)
        capped = child.tokens >= params.max_new_tokens
        child.terminal = ended or capped
        child.finish_reason = "stop" if ended else "length"
        node.children.append(child)
        made[id(node)] = (child, c)
    return [made.get(id(node)) for node in nodes]
