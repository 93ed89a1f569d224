"""Tree search methods: hand-checked small trees, then real runs from the command line.

The hand-checked trees use two test doubles, pure functions of their input: a generator whose
continuations are looked up by prompt (one character = one token) and a reward model whose step
scores are looked up by step text. Real runs use a tiny random HF model with a tiny random PRM, and
the embedded llama.cpp model.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inferencekit.cli import main
from inferencekit.config import RunConfig
from inferencekit.models.base import Completion, Generator, Usage, per_prompt_params, truncate_at_stop
from inferencekit.reward_models import split_steps
from inferencekit.search import Problem, get_method
from inferencekit.search.tree import Node, expand, node_seed, rank, unique

SEP = "\n\n"


class ScriptedGenerator(Generator):
    """Sample j of a prompt continues with `script[prompt][j]` (cycled; `default` for unknown prompts).

    Stop strings cut the text as a backend does; one character is one token; a stop string or EOS
    costs one more token. With `top_logprobs` asked for, a prompt's next tokens are `tokens[prompt]`
    ((text, logprob) pairs, best first; "" is EOS; EOS alone for unknown prompts).
    """

    backend = "scripted"

    def __init__(self, script: dict[str, list[str]], default: str = "\\boxed{0}", tokens=None) -> None:
        super().__init__()
        self.script, self.default, self.tokens = script, default, tokens or {}
        self.calls: list[list[tuple[str, object]]] = []  # per call: (prompt, params)

    def generate(self, prompts, params):
        plist = per_prompt_params(prompts, params)
        self.calls.append(list(zip(prompts, plist, strict=True)))
        out = []
        for prompt, p in zip(prompts, plist, strict=True):
            if p.top_logprobs:
                top = self.tokens.get(prompt, [("", 0.0)])[: p.top_logprobs]
                out.append([Completion(top[0][0], 1, "stop" if top[0][0] == "" else "length", top_logprobs=[top])])
                continue
            options = self.script.get(prompt, [self.default])
            completions = []
            for j in range(p.n):
                text, stop = truncate_at_stop(options[j % len(options)], p.stop)
                if len(text) >= p.max_new_tokens and (len(text) > p.max_new_tokens or stop is None):
                    completions.append(Completion(text[: p.max_new_tokens], p.max_new_tokens, "length"))
                else:
                    completions.append(Completion(text, len(text) + 1, "stop", stop))
            out.append(completions)
        self._record(Usage(calls=1, completion_tokens=sum(c.tokens for cs in out for c in cs)))
        return out

    def chat_prompt(self, messages, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)

    def count_tokens(self, text):
        return len(text)

    def prompts(self, call: int) -> list[str]:
        return [prompt for prompt, _ in self.calls[call]]


class TableRewardModel:
    """Each step's score from `table[step text]` (`default` otherwise); records its calls."""

    def __init__(self, table: dict[str, float], default: float = 0.5) -> None:
        self.table, self.default = table, default
        self.calls: list[list[str]] = []
        self.prompts: list[list[str] | None] = []  # the policy's prompts passed along, per call
        self.usage = Usage()

    def score(self, questions, solutions, prompts=None):
        self.calls.append([s for sols in solutions for s in sols])
        self.prompts.append(prompts)
        self.usage.add(Usage(calls=1))
        return [[[self.table.get(step, self.default) for step in split_steps(s, SEP)] for s in sols]
                for sols in solutions]


def problem(i: int = 0) -> Problem:
    return Problem(index=i, question=f"question {i}", prompt=f"<P{i}>", seed=100 + i)


def method(name: str, script, table, tokens=None, **settings):
    config = RunConfig(method=name, n=4, beam_width=2, max_new_tokens=1000, temperature=1.0, **settings)
    gen, rm = ScriptedGenerator(script, tokens=tokens), TableRewardModel(table) if table is not None else None
    return get_method(name)(config, gen, rm), gen, rm


def grow(search, p: Problem):
    """An MCTS search's iterations on problem `p`: its root, the finished nodes and rollout leaves, the tree."""
    tree = search.tree(p)
    return tree.root, search.grow(tree), tree


def texts(candidates) -> list[str]:
    return [c.text for c in candidates]


# ---- the shared primitive ----


def test_expand_stops_at_the_separator_and_marks_finished_paths():
    p = problem()
    script = {p.prompt: ["s1\n\nnext", "ends by EOS", "has \\boxed{3}\n\nmore", "y" * 30, "abcSTOPdef"]}
    gen = ScriptedGenerator(script)
    base = RunConfig(max_new_tokens=20, temperature=1.0, stop=["STOP"])
    params = get_method("beam_search")(base, gen).sampling_params(0)
    root = Node()
    (kids,) = expand(gen, p, [root], 5, params, separator=SEP)
    assert root.children == kids and [k.path for k in kids] == [(0,), (1,), (2,), (3,), (4,)]
    assert [k.text for k in kids] == ["s1\n\n", "ends by EOS", "has \\boxed{3}\n\n", "y" * 20, "abc"]
    assert [k.terminal for k in kids] == [False, True, True, True, True]
    assert [k.finish_reason for k in kids] == ["stop", "stop", "stop", "length", "stop"]
    assert [k.tokens for k in kids] == [3, 12, 14, 20, 4]
    [[(prompt, sent)]] = gen.calls
    assert prompt == p.prompt and sent.n == 5 and sent.stop == (SEP, "STOP") and sent.max_new_tokens == 20
    assert sent.seed == node_seed(p.seed, ())
    # the child continues with its own seed, within what is left of the token cap; depth cap ends it
    (grand,) = expand(gen, p, [kids[0]], 1, params, separator=SEP, max_steps=2)
    assert gen.calls[1][0][0] == p.prompt + "s1\n\n"
    assert gen.calls[1][0][1].max_new_tokens == 17 and gen.calls[1][0][1].seed == node_seed(p.seed, (0,))
    assert grand[0].terminal and grand[0].depth == 2 and grand[0].text == "s1\n\n\\boxed{0}"
    assert expand(gen, p, [kids[1]], 2, params, separator=SEP) == [[]] and len(gen.calls) == 2


def test_rank_is_by_score_then_tree_position_and_unique_keeps_the_first():
    a, b, c, d = (Node(path=(i,), step=s) for i, s in enumerate(["x", "y", "x ", "z"]))
    a.score, b.score, c.score, d.score = 0.5, 0.9, 0.5, math.nan
    assert rank([d, c, b, a]) == [b, a, c, d]
    assert unique(rank([d, c, b, a])) == [b, a, d]


# ---- beam search ----

BEAM_SCRIPT = {
    "<P0>": ["a1\n\n", "a2\n\n", "a3\n\n", "a4\n\n"],
    "<P0>a1\n\n": ["b1 \\boxed{1}\n\nignored", "b2\n\n"],
    "<P0>a3\n\n": ["b3 \\boxed{3}", "b4 \\boxed{4}"],
    "<P0>a1\n\nb2\n\n": ["c1 \\boxed{5}", "c2 \\boxed{6}"],
    "<P1>": ["x \\boxed{7}"],
}
BEAM_TABLE = {"a1": 0.9, "a2": 0.2, "a3": 0.8, "a4": 0.5, "b1 \\boxed{1}": 0.7, "b2": 0.6, "b3 \\boxed{3}": 0.4,
              "b4 \\boxed{4}": 0.3, "c1 \\boxed{5}": 0.95, "c2 \\boxed{6}": 0.1}


def test_beam_search_keeps_exactly_the_top_beams():
    search, gen, rm = method("beam_search", BEAM_SCRIPT, BEAM_TABLE, beam_pool="best")
    result = search.search(problem(0))
    cands = result.candidates
    assert gen.prompts(0) == ["<P0>"] and gen.calls[0][0][1].n == 4
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a3\n\n"]  # top 2 of 4 by score, each expanded 2 ways
    assert [p.n for _, p in gen.calls[1]] == [2, 2]
    assert gen.prompts(2) == ["<P0>a1\n\nb2\n\n"]  # the only live beam; 3 finished of 4
    assert len(gen.calls) == 3 and len(rm.calls) == 3 and rm.prompts[0] == ["<P0>"] * 4  # the policy's prompt
    # 5 finished; the best 4 by score, with the step scores of their whole path
    assert texts(cands) == ["a1\n\nb2\n\nc1 \\boxed{5}", "a1\n\nb1 \\boxed{1}", "a3\n\nb3 \\boxed{3}",
                            "a3\n\nb4 \\boxed{4}"]
    assert cands[0].step_scores == [0.9, 0.6, 0.95] and cands[1].step_scores == [0.9, 0.7]
    assert cands[0].tokens == 3 + 3 + 13 and all(c.finish_reason == "stop" for c in cands)
    assert result.generated_tokens == gen.usage.completion_tokens == 80  # every expansion, pruned ones too


def test_beam_search_of_a_problem_is_independent_of_the_others():
    search, gen, rm = method("beam_search", BEAM_SCRIPT, BEAM_TABLE)
    both = [search.search(problem(1)).candidates, search.search(problem(0)).candidates]
    assert len(gen.calls) == 1 + 3 and len(rm.calls) == 1 + 3  # one call per round: P1 finishes in one
    assert gen.prompts(0) == ["<P1>"] and gen.prompts(1) == ["<P0>"]
    assert texts(both[0]) == ["x \\boxed{7}"] * 4
    alone, gen_alone, _ = method("beam_search", BEAM_SCRIPT, BEAM_TABLE)
    assert texts(alone.search(problem(0)).candidates) == texts(both[1])
    # seeds come from the problem seed and the node's position in its tree
    assert [p.seed for _, p in gen.calls[2]] == [node_seed(100, (0,)), node_seed(100, (2,))]
    assert [p.seed for _, p in gen.calls[2]] == [p.seed for _, p in gen_alone.calls[1]]


def test_beam_search_filters_duplicates():
    script = {"<P0>": ["a1\n\n", "a1\n\n", "a3\n\n", "a4\n\n"]}
    table = {"a1": 0.9, "a3": 0.8, "a4": 0.5}
    plain, gen, _ = method("beam_search", script, table, beam_pool="best")
    plain.search(problem())
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a1\n\n"]
    filtered, gen, _ = method("beam_search", script, table, filter_duplicates=True, beam_pool="best")
    cands = filtered.search(problem()).candidates
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a3\n\n"]
    assert len(set(texts(cands))) == len(cands) == 2  # a1 and a3 each end with the same default answer


def test_beam_search_lookahead_ranks_by_the_rollout():
    script = {"<P0>": ["a1\n\n", "a2\n\n", "a3\n\n", "a4\n\n"], "<P0>a4\n\n": ["great\n\n"]}
    table = {"a1": 0.9, "a2": 0.2, "a3": 0.8, "a4": 0.1, "great": 0.99}
    search, gen, _ = method("beam_search", script, table, lookahead=1, beam_pool="best")
    search.search(problem())
    # round 0, then one greedy step from each first step, then the kept beams: a4 (by its rollout) and a1
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a2\n\n", "<P0>a3\n\n", "<P0>a4\n\n"]
    assert all(p.temperature == 0 and p.n == 1 for _, p in gen.calls[1])
    assert gen.prompts(2) == ["<P0>a4\n\n", "<P0>a1\n\n"]


# ---- DVTS ----

DVTS_SCRIPT = {
    "<P0>": ["a1\n\n", "a2\n\n", "a3\n\n", "a4\n\n"],
    "<P0>a1\n\n": ["b1 \\boxed{1}", "b2 \\boxed{2}"],
    "<P0>a3\n\n": ["b3\n\n", "b4 \\boxed{4}"],
    "<P0>a3\n\nb3\n\n": ["c1 \\boxed{7}", "c2 \\boxed{8}"],
}
DVTS_TABLE = {"a1": 0.8, "a2": 0.7, "a3": 0.2, "a4": 0.1, "b1 \\boxed{1}": 0.5, "b2 \\boxed{2}": 0.6, "b3": 0.9,
              "b4 \\boxed{4}": 0.3, "c1 \\boxed{7}": 0.4, "c2 \\boxed{8}": 0.2}


def test_dvts_subtrees_are_greedy_and_independent():
    search, gen, _ = method("dvts", DVTS_SCRIPT, DVTS_TABLE)
    cands = search.search(problem()).candidates
    # subtree 0 holds a1, a2; subtree 1 holds a3, a4: each continues its own best (beam search would take a1, a2)
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a3\n\n"]
    assert gen.prompts(2) == ["<P0>a3\n\nb3\n\n"] and len(gen.calls) == 3
    assert texts(cands) == ["a1\n\nb2 \\boxed{2}", "a1\n\nb1 \\boxed{1}", "a3\n\nb3\n\nc1 \\boxed{7}",
                            "a3\n\nb3\n\nc2 \\boxed{8}"]
    # other scores in subtree 1 change nothing in subtree 0
    other, gen2, _ = method("dvts", DVTS_SCRIPT, {**DVTS_TABLE, "b4 \\boxed{4}": 0.95})
    cands2 = other.search(problem()).candidates
    assert texts(cands2)[:2] == texts(cands)[:2] and gen2.calls[1] == gen.calls[1]
    assert texts(cands2)[2:] == ["a3\n\nb4 \\boxed{4}", "a3\n\nb3"] and len(gen2.calls) == 2


def test_dvts_lookahead_picks_each_subtree_best_by_its_rollout():
    # a2's greedy next step scores 0.99: with lookahead 1, subtree 0 continues a2 instead of a1 (0.8 > 0.7 by
    # their own scores); subtree 1 keeps a3, whose rollout b3 (0.9) beats a4's (the default answer, 0.5).
    script = {**DVTS_SCRIPT, "<P0>a2\n\n": ["great\n\n"]}
    search, gen, _ = method("dvts", script, {**DVTS_TABLE, "great": 0.99}, lookahead=1)
    search.search(problem())
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a2\n\n", "<P0>a3\n\n", "<P0>a4\n\n"]  # one rollout each
    assert all(p.temperature == 0 and p.n == 1 for _, p in gen.calls[1])
    assert gen.prompts(2) == ["<P0>a2\n\n", "<P0>a3\n\n"]


# ---- MCTS ----

MCTS_SCRIPT = {
    "<P0>": ["a1\n\n", "a2\n\n"],
    "<P0>a1\n\n": ["b1 \\boxed{1}", "b2\n\n"],
    "<P0>a2\n\n": ["c1 \\boxed{2}", "c2 \\boxed{3}"],
}
MCTS_TABLE = {"a1": 0.8, "a2": 0.4, "b1 \\boxed{1}": 0.9, "b2": 0.5, "c1 \\boxed{2}": 0.3, "c2 \\boxed{3}": 0.1}


def test_backpropagation_updates_every_ancestor():
    root = Node()
    a = Node(parent=root, path=(0,))
    b = Node(parent=a, path=(0, 0))
    root.children, a.children = [a], [b]
    b.backpropagate(0.7)
    a.backpropagate(0.1)
    assert (root.visits, a.visits, b.visits) == (2, 2, 1)
    assert root.value_sum == pytest.approx(0.8) and a.value == pytest.approx(0.4) and b.value == pytest.approx(0.7)


@pytest.mark.parametrize(("c_puct", "expected"), [(1.0, 1), (0.1, 0)])
def test_puct_picks_the_expected_child(c_puct, expected):
    search, _, _ = method("mcts", {}, {}, mcts_c_puct=c_puct)
    root = Node()
    root.visits = 4
    visited = Node(parent=root, path=(0,), prior=0.5)
    visited.visits, visited.value_sum = 3, 1.8  # Q 0.6: 0.6 + c * 0.5 * 2 / 4
    fresh = Node(parent=root, path=(1,), prior=0.5)
    fresh.score = 0.3  # Q 0.3 (its own evaluation): 0.3 + c * 0.5 * 2 / 1
    root.children = [visited, fresh]
    assert search.select(root) is root.children[expected]


def test_mcts_visits_add_up_and_values_are_backed_up():
    search, gen, rm = method("mcts", MCTS_SCRIPT, MCTS_TABLE, mcts_iterations=4)
    root, _, _ = grow(search, problem())
    a1, a2 = root.children
    b1, b2 = a1.children
    # 1: expand root (value mean(.8, .4)); 2: a1 by PUCT (mean(.9, .5)); 3: a2, less visited (mean(.3, .1));
    # 4: a1 again, then its finished child b1, re-evaluated without generating
    assert root.visits == 4 and len(gen.calls) == 3 and len(rm.calls) == 3
    assert gen.prompts(1) == ["<P0>a1\n\n"] and gen.prompts(2) == ["<P0>a2\n\n"]
    assert (a1.visits, a2.visits, b1.visits, b2.visits) == (2, 1, 1, 0)
    assert root.value_sum == pytest.approx(0.6 + 0.7 + 0.2 + 0.9)
    assert a1.value_sum == pytest.approx(0.7 + 0.9) and a2.value == pytest.approx(0.2)

    def check(node: Node) -> None:  # one visit per iteration: own evaluations + the children's visits
        if node.children and not node.terminal:
            assert node.visits == 1 + sum(ch.visits for ch in node.children)
            for ch in node.children:
                check(ch)

    check(root)
    assert sum(ch.prior for ch in root.children) == pytest.approx(1)


@pytest.mark.parametrize("select_by", ["visits", "value"])
def test_mcts_answer_comes_first_and_every_finished_solution_is_kept(select_by):
    search, _, _ = method("mcts", MCTS_SCRIPT, MCTS_TABLE, mcts_iterations=4, mcts_select_by=select_by)
    cands = search.search(problem()).candidates
    assert texts(cands) == ["a1\n\nb1 \\boxed{1}", "a2\n\nc1 \\boxed{2}", "a2\n\nc2 \\boxed{3}"]
    assert cands[0].meta == {"chosen": True} and all(not c.meta for c in cands[1:])


def test_mcts_prior_by_score_follows_the_reward():
    # Uniform priors explore a2 at iteration 3 (test above). With priors proportional to the reward
    # (a1 0.8, a2 0.4: 2/3 and 1/3), PUCT at iteration 3 gives a1 0.7 + sqrt(2) * 2/3 / 2 = 1.17 and
    # a2 0.4 + sqrt(2) * 1/3 = 0.87, so a1 is followed again (its finished child b1, prior 0.9 / 1.4,
    # is re-evaluated), and at iteration 4 too (1.19 vs 0.98): a2 is never expanded.
    search, gen, _ = method("mcts", MCTS_SCRIPT, MCTS_TABLE, mcts_iterations=4, mcts_prior="score")
    root, _, _ = grow(search, problem())
    a1, a2 = root.children
    b1, b2 = a1.children
    assert (a1.prior, a2.prior) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert (b1.prior, b2.prior) == (pytest.approx(0.9 / 1.4), pytest.approx(0.5 / 1.4))
    assert len(gen.calls) == 2 and gen.prompts(1) == ["<P0>a1\n\n"] and not a2.children
    assert (a1.visits, b1.visits, a2.visits) == (3, 2, 0)


def test_mcts_rollout_evaluates_by_the_finished_rollout():
    script = {**MCTS_SCRIPT, "<P0>a1\n\n": ["b2\n\nend \\boxed{5}"], "<P0>a2\n\n": ["c1 \\boxed{2}"]}
    table = {**MCTS_TABLE, "end \\boxed{5}": 0.05}
    search, gen, _ = method("mcts", script, table, mcts_iterations=1, mcts_rollout=True)
    root, found, tree = grow(search, problem())
    a1, a2 = root.children
    assert gen.prompts(1) == ["<P0>a1\n\n", "<P0>a2\n\n"] and gen.calls[1][0][1].stop == ()  # one call to the end
    assert a1.rollout.text == "a1\n\nb2\n\nend \\boxed{5}" and a1.score == 0.05 and a2.score == 0.3
    assert tree.generated == gen.usage.completion_tokens  # rollouts count
    assert root.value_sum == pytest.approx((0.05 + 0.3) / 2) and found == [a1.rollout, a2.rollout]


def test_mcts_budget_of_tokens():
    search, gen, _ = method("mcts", MCTS_SCRIPT, MCTS_TABLE, mcts_iterations=10, mcts_token_budget=5)
    roots = [grow(search, problem(0))[0], grow(search, problem(1))[0]]
    # the first expansion spends 3 + 3 (P0) and 2 * 10 (P1, default answers): both budgets are spent
    assert len(gen.calls) == 2 and gen.prompts(0) == ["<P0>"] and gen.prompts(1) == ["<P1>"]
    assert [r.visits for r in roots] == [1, 1]


def test_beams_shrink_as_the_pool_fills():
    from inferencekit.search.tree import next_beams

    def node(path, score, terminal=False):
        made = Node(path=path, terminal=terminal)
        made.score = score
        return made

    live = [node((i,), 0.1 * i) for i in range(6)]
    pool: list[Node] = []
    assert next_beams(pool, live, 4, 2, False) == [live[5], live[4]]  # N/M = 2 best live
    pool = []
    done = [node((10 + i,), 1.0, terminal=True) for i in range(3)]
    assert next_beams(pool, live + done, 4, 2, False) == [live[5]]  # 3 finished: 1 path missing, 1 beam
    assert pool == done
    assert next_beams(pool, [node((20,), 0.0, terminal=True), *live], 4, 2, False) == []  # N finished


# ---- token-level ----


TOKENS = {
    "<P0>": [("a", -0.1), ("b", -0.5), ("c", -3.0)],
    "<P0>a": [("x", -2.0), ("y", -0.2)],
    "<P0>b": [("x", -0.1), ("", -0.3)],  # "" is EOS
}


def test_token_beam_keeps_the_likeliest_paths():
    search, gen, _ = method("token_beam", {}, None, TOKENS)
    result = search.search(problem())
    cands = result.candidates
    first = gen.calls[0][0][1]
    assert first.top_logprobs == 2 and first.max_new_tokens == 1 and first.temperature == 0 and first.n == 1
    assert gen.prompts(1) == ["<P0>a", "<P0>b"]
    # a-x -2.1, a-y -0.3, b-x -0.6, b-EOS -0.8 (finished): the best two live paths go on
    assert gen.prompts(2) == ["<P0>ay", "<P0>bx"] and len(gen.calls) == 3
    # the pool (both end at EOS next) ranked by log-probability per token
    assert texts(cands) == ["ay", "bx", "b"]
    assert [c.meta["logprob"] for c in cands] == [-0.3, -0.6, -0.8] and [c.tokens for c in cands] == [3, 3, 2]
    assert result.generated_tokens == 5  # one token computed per expanded path


def test_token_beam_reranks_by_the_reward_model_every_k_tokens():
    table = {"ax": 0.9, "ay": 0.1, "bx": 0.5}
    search, gen, rm = method("token_beam", {}, table, TOKENS, token_beam_chunk=2)
    cands = search.search(problem()).candidates
    assert rm.calls[0] == ["ax", "ay", "bx", "b"]  # after 2 tokens, not after 1
    assert gen.prompts(2) == ["<P0>ax", "<P0>bx"]  # the reward model's choice, not the likeliest
    assert texts(cands) == ["ax", "bx", "b"] and [c.step_scores for c in cands] == [[0.9], [0.5], [0.5]]


def test_expand_tokens_ends_paths_and_skips_partial_characters():
    from inferencekit.search.tree import expand_tokens

    p = problem()
    tokens = {"<P0>": [("ST", -0.1), ("\ufffd", -0.2), ("", -0.3), ("\\boxed{2}", -0.4), ("z", -0.5)],
              "<P0>ST": [("OP", -0.1)]}
    gen = ScriptedGenerator({}, tokens=tokens)
    params = get_method("token_beam")(RunConfig(max_new_tokens=2, stop=["STOP"]), gen).sampling_params(0)
    root = Node()
    (kids,) = expand_tokens(gen, p, [root], 5, params)
    assert [k.text for k in kids] == ["ST", "", "\\boxed{2}", "z"]  # the partial character is skipped
    assert [k.terminal for k in kids] == [False, True, True, False]
    assert [k.path for k in kids] == [(0,), (2,), (3,), (4,)]
    (grand,) = expand_tokens(gen, p, [kids[0]], 5, params)
    assert [(g.text, g.terminal, g.finish_reason) for g in grand] == [("", True, "stop")]  # the stop string is cut
    (cap,) = expand_tokens(gen, p, [kids[3]], 5, params)
    assert [(g.terminal, g.finish_reason, g.tokens) for g in cap] == [(True, "stop", 2)]  # EOS at the cap


@pytest.mark.parametrize("name", ["beam_search", "dvts", "mcts"])
def test_the_runner_refuses_a_step_search_without_a_reward_model(name, tmp_path, capsys):
    # refused before any model loads or any folder is written (token_beam runs without one: test below)
    args = ["run", "--method", name, "--vote", "majority", "--limit", "1", "--max-new-tokens", "4", "--no-progress",
            "--work-dir", str(tmp_path)]
    assert main(args) == 2
    assert f"method {name} needs --reward-model" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---- real models, from the command line ----

TINY_FLAGS = ["--n", "4", "--beam-width", "2", "--limit", "1", "--max-new-tokens", "48", "--temperature", "0.8",
              "--no-progress", "--vote", "majority,weighted,best"]


def run_cli(args: list[str], work: Path, name: str) -> list[dict]:
    assert main(["run", *args, "--work-dir", str(work), "--exp-name", name]) == 0
    (path,) = work.glob(f"*/*+{name}")
    rows = [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["index"])  # appended as each problem finishes


def check_record(record: dict, method_name: str) -> None:
    cands = record["candidates"]
    assert cands and all(0 < c["tokens"] <= 48 and c["step_scores"] for c in cands)
    assert all(0 <= s <= 1 for c in cands for s in c["step_scores"] if not math.isnan(s))
    assert record["usage"]["calls"] >= 1 and record["usage"]["reward_calls"] >= 1
    if method_name == "mcts":
        assert cands[0]["meta"] == {"chosen": True}
    if method_name in ("beam_search", "dvts", "token_beam"):
        assert len(cands) <= 4


@pytest.mark.parametrize("method_name", ["beam_search", "dvts", "mcts", "token_beam"])
def test_tiny_hf_model_with_tiny_prm(method_name, tiny_llama_dir, tiny_prm_dir, tmp_path):
    # A random model seldom writes a blank line: "e" as the step separator gives it several steps.
    config = tmp_path / "search.yaml"
    config.write_text('step_separator: "e"\n')
    args = ["--model", str(tiny_llama_dir), "--dtype", "float32", "--reward-model", str(tiny_prm_dir),
            "--method", method_name, "--config", str(config), "--max-steps", "3", "--token-beam-chunk", "16",
            *TINY_FLAGS]
    (record,) = run_cli(args, tmp_path, "a")
    check_record(record, method_name)
    if method_name == "beam_search":
        assert max(len(c["step_scores"]) for c in record["candidates"]) > 1
        (again,) = run_cli([*args, "--no-resume"], tmp_path / "again", "a")  # same seed: same candidates
        results = lambda cands: [{k: v for k, v in c.items() if k != "usage"} for c in cands]  # noqa: E731 - not costs
        assert results(again["candidates"]) == results(record["candidates"])


def embedded_reward_model() -> str:
    from inferencekit.models.llamacpp import LlamaCppGenerator

    return "mean_logprob" if LlamaCppGenerator.can_score_text else "llm_judge"  # a score in [0, 1]


@pytest.mark.parametrize("method_name", ["beam_search", "dvts", "mcts", "token_beam"])
def test_embedded_model(method_name, tmp_path):
    # one thread: llama.cpp's spinning worker threads crawl when another process holds the second core
    args = ["--reward-model", embedded_reward_model(), "--method", method_name, "--model-arg", "n_threads=1",
            "--max-steps", "4", *TINY_FLAGS]
    (record,) = run_cli(args, tmp_path, "a")
    check_record(record, method_name)


def test_same_seed_same_tree_whatever_the_batch(tiny_prm_dir):
    from inferencekit.models import load_generator, resolve_model
    from inferencekit.reward_models import load_reward_model

    generator = load_generator(resolve_model("smollm2-135m", None, {"n_threads": 1}))
    try:
        config = RunConfig(method="beam_search", n=4, beam_width=2, max_new_tokens=40, temperature=0.8, max_steps=3)
        rm = load_reward_model(str(tiny_prm_dir), step_separator=config.step_separator)
        search = get_method("beam_search")(config, generator, rm)
        questions = ["What is 12 + 30?", "Tom has 3 apples and buys 4 more. How many apples has he?"]
        problems = [Problem(i, q, generator.chat_prompt([{"role": "user", "content": q}]), 7 + i)
                    for i, q in enumerate(questions)]
        with ThreadPoolExecutor(2) as pool:  # both at once: the engine batches their requests together
            both = [result.candidates for result in pool.map(search.search, problems)]
        alone = search.search(problems[1]).candidates
        assert [c.to_dict() for c in alone] == [c.to_dict() for c in both[1]]
        assert len({c.text for c in both[0]}) > 1  # sampled, not four copies
    finally:
        generator.close()


def test_mcts_iterations_default_to_n():
    search, gen, _ = method("mcts", MCTS_SCRIPT, MCTS_TABLE)  # n = 4
    root, _, _ = grow(search, problem())
    assert search.config.mcts_iterations is None and root.visits == 4  # one visit per iteration
    fewer, _, _ = method("mcts", MCTS_SCRIPT, MCTS_TABLE, mcts_iterations=2)
    root, _, _ = grow(fewer, problem())
    assert root.visits == 2


def test_token_beam_without_a_reward_model_on_the_embedded_model(tmp_path):
    args = ["--method", "token_beam", "--model-arg", "n_threads=1", "--n", "4", "--beam-width", "2", "--limit", "1",
            "--max-new-tokens", "12", "--no-progress"]
    (record,) = run_cli(args, tmp_path, "a")
    cands = record["candidates"]
    assert len(cands) == 4 and len({c["text"] for c in cands}) == 4
    assert all(c["tokens"] <= 12 and c["step_scores"] == [] and c["meta"]["logprob"] < 0 for c in cands)
    # ranked by log-probability per token, best first
    per_token = [c["meta"]["logprob"] / c["tokens"] for c in cands]
    assert per_token == sorted(per_token, reverse=True)
    assert "reward_calls" not in record["usage"]


@pytest.mark.parametrize("name", ["beam_search", "dvts", "mcts", "token_beam"])
def test_beam_width_is_the_children_of_each_expanded_node(name):
    """--beam-width M means one thing for every tree method: each expanded node gets M children."""
    p = problem()
    tokens = {p.prompt: [("a", -0.1), ("b", -0.2), ("c", -0.3), ("d", -0.4)]}
    config = RunConfig(method=name, n=6, beam_width=3, max_new_tokens=1000, temperature=1.0)
    gen = ScriptedGenerator({p.prompt: ["step\n\n"]}, tokens=tokens)
    get_method(name)(config, gen, TableRewardModel({})).search(p)
    sent = [params for call in gen.calls for _, params in call]
    if name == "token_beam":
        assert sent and all(s.top_logprobs == 3 for s in sent)
        return
    first_round = 0 if name == "mcts" else 1  # beam_search and dvts sample N first steps, then grow M ways
    assert sent[first_round:] and all(s.n == 3 for s in sent[first_round:])
    assert name == "mcts" or sent[0].n == 6


# ---- options declared by each method ----


def test_every_method_option_is_a_run_config_key_and_a_run_flag():
    from inferencekit.cli import build_parser
    from inferencekit.search.base import METHODS

    parser = build_parser()
    given = vars(parser.parse_args(["run"]))
    for _, method in METHODS.items():
        for key, info in method.Options.model_fields.items():
            assert RunConfig.model_fields[key].default == info.default
            assert given[key] is None  # not given: the config file and the presets below still apply
    args = parser.parse_args(["run", "--mcts-rollout", "--deepconf-eta", "50", "--beam-pool", "best"])
    assert (args.mcts_rollout, args.deepconf_eta, args.beam_pool) == (True, 50.0, "best")
    with pytest.raises(ValueError, match="Input should be 'reference' or 'best'"):
        RunConfig(beam_pool="widest")


def test_list_methods_shows_each_methods_options(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "--mcts-c-puct: exploration constant (default 1.0)" in out and "--refine-steps" in out


def test_options_declared_after_the_run_config_was_built_are_refused():
    from inferencekit.search.base import METHODS, register_method
    from inferencekit.search.options import MethodOptions
    from inferencekit.search.sampling import BestOfN

    class Late(MethodOptions):
        late_k: int = 1

    with pytest.raises(ValueError, match="declares options after the run config was built"):
        @register_method("late_for_test")
        class LateMethod(BestOfN):
            Options = Late

    assert "late_for_test" not in METHODS


def test_bind_is_a_copy_with_other_models():
    search, gen, rm = method("beam_search", BEAM_SCRIPT, BEAM_TABLE)
    other_gen, other_rm = ScriptedGenerator(BEAM_SCRIPT), TableRewardModel(BEAM_TABLE)
    bound = search.bind(other_gen, other_rm)
    assert (bound.generator, bound.reward_model, bound.config) == (other_gen, other_rm, search.config)
    assert (search.generator, search.reward_model) == (gen, rm)
    assert texts(bound.search(problem(0)).candidates) == texts(search.search(problem(0)).candidates)
    assert other_gen.calls == gen.calls
