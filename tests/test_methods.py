"""The methods of issue 14, checked by hand on scripted generators and scorers, then run from the CLI.

The scripted doubles come from test_search (one character = one token; a stop string or EOS costs one
more token; a step's score looked up by its text). Methods that draw one sample per seed use
`SeededGenerator`, whose sample for a seed is the script's entry at that sample's index.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inferencekit.cli import main
from inferencekit.config import RunConfig
from inferencekit.errors import UserError
from inferencekit.models.base import Completion, Usage, per_prompt_params
from inferencekit.prompts import DEFAULT_TEMPLATE
from inferencekit.search import get_method
from inferencekit.search.budget_forcing import FINAL_ANSWER
from inferencekit.search.deepconf import first_drop, trace_score
from inferencekit.search.particle_filter import log_weights, softmax, tempered
from inferencekit.search.rebase import widths
from inferencekit.search.self_consistency import beta_confidence
from inferencekit.search.self_refine import FEEDBACK, REFINE
from inferencekit.search.tree import node_seed, resample
from inferencekit.voting import vote
from test_search import ScriptedGenerator, TableRewardModel, problem, run_cli, texts


def build(name: str, gen, table=None, **settings):
    base = {"method": name, "n": 4, "beam_width": 2, "max_new_tokens": 1000, "temperature": 1.0}
    config = RunConfig(**{**base, **settings})
    rm = TableRewardModel(table) if table is not None else None
    return get_method(name)(config, gen, rm), rm


class SeededGenerator(ScriptedGenerator):
    """Sample j of a prompt (the one drawn with seed node_seed(problem seed, (j,))) is `script[prompt][j]`."""

    def __init__(self, script, seeds=(100, 101)):
        super().__init__(script)
        self.index = {node_seed(s, (j,)): j for s in seeds for j in range(64)}

    def generate(self, prompts, params):
        plist = per_prompt_params(prompts, params)
        out = []
        for prompt, p in zip(prompts, plist, strict=True):  # one entry at a time, as its own script
            self.script, saved = {prompt: [self.script[prompt][self.index[p.seed]]]}, self.script
            try:
                out += super().generate([prompt], p)
            finally:
                self.script = saved
        self.calls[-len(prompts):] = [[c for call in self.calls[-len(prompts):] for c in call]]
        return out


# ---- resampling and particle filtering ----


def test_systematic_resampling_draws_each_particle_floor_or_ceil_of_n_p():
    for seed in range(20):
        picked = resample([0.5, 0.25, 0.25, 0.0], 4, np.random.default_rng(seed), "systematic")
        assert picked == [0, 0, 1, 2]
    picked = resample([0.3, 0.7], 10, np.random.default_rng(0), "systematic")
    assert picked.count(0) in (3, 4) and len(picked) == 10


def test_multinomial_resampling_follows_the_weights_under_a_seed():
    draws = resample([0.5, 0.3, 0.2], 6000, np.random.default_rng(7), "multinomial")
    counts = np.bincount(draws, minlength=3) / 6000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.02)
    assert draws == resample([0.5, 0.3, 0.2], 6000, np.random.default_rng(7), "multinomial")  # same seed, same draw
    with pytest.raises(UserError, match="systematic"):
        resample([1.0], 1, np.random.default_rng(0), "stratified")


def test_particle_weights_are_the_softmax_of_the_score_logits():
    # logit(s) = log odds, so the weights are proportional to the odds s / (1 - s): 2, 1, 1, ~0 (clipped)
    probs = softmax(log_weights([2 / 3, 0.5, 0.5, 0.0]))
    assert probs == pytest.approx([0.5, 0.25, 0.25, 0.0], abs=1e-6)
    assert softmax(log_weights([1.0, math.nan])) == pytest.approx([1.0, 0.0], abs=1e-6)  # clipped, NaN at the floor


def test_tempering_only_when_the_effective_sample_size_is_below_half():
    logw = np.log([97.0, 1.0, 1.0, 1.0])  # weights .97, .01, .01, .01: ESS 1.06 of 4
    p = softmax(logw)
    ess = 1 / float(np.sum(p**2))
    temp = 4 / ess  # at progress 0
    assert tempered(logw, 0.0) == pytest.approx(softmax(logw / temp))
    assert tempered(logw, 0.0)[0] < 0.6  # flattened from .97
    assert tempered(logw, 0.6) == pytest.approx(p)  # late: no tempering
    even = np.log([1.0, 1.0, 2.0, 2.0])
    assert tempered(even, 0.0) == pytest.approx(softmax(even))  # ESS 3.6 >= 2: untouched


PF_SCRIPT = {
    "<P0>": ["a1\n\n", "a2\n\n", "a3\n\n", "a4\n\n"],
    "<P0>a1\n\n": ["b1 \\boxed{1}", "b2 \\boxed{2}"],
    "<P0>a2\n\n": ["c1 \\boxed{3}"],
    "<P0>a3\n\n": ["d1 \\boxed{4}"],
    "<P1>": ["x1 \\boxed{1}", "x2 \\boxed{2}", "x3 \\boxed{3}", "x4 \\boxed{4}"],  # done in one round
}
PF_TABLE = {"a1": 2 / 3, "a2": 0.5, "a3": 0.5, "a4": 0.0, "b1 \\boxed{1}": 2 / 3, "b2 \\boxed{2}": 0.5,
            "c1 \\boxed{3}": 0.5, "d1 \\boxed{4}": 0.0, "x1 \\boxed{1}": 0.9, "x2 \\boxed{2}": 0.6,
            "x3 \\boxed{3}": 0.3, "x4 \\boxed{4}": 0.1}


def test_particle_filter_resamples_in_proportion_to_the_weights():
    gen = ScriptedGenerator(PF_SCRIPT)
    search, rm = build("particle_filter", gen, PF_TABLE, pf_resampling="systematic")
    result = search.search(problem())
    cands = result.candidates
    # weights .5, .25, .25, 0: a1 twice, a2 and a3 once, a4 dropped; a1's two copies are expanded 2 ways
    assert gen.prompts(1) == ["<P0>a2\n\n", "<P0>a3\n\n"] and gen.calls[1][0][1].n == 1
    assert gen.prompts(2) == ["<P0>a1\n\n"] and gen.calls[2][0][1].n == 2 and len(gen.calls) == 3
    # all finished: b1 (odds 2) drawn twice, b2 and c1 once, d1 (score 0) never
    assert texts(cands) == ["a1\n\nb1 \\boxed{1}"] * 2 + ["a1\n\nb2 \\boxed{2}", "a2\n\nc1 \\boxed{3}"]
    assert [c.meta["weight"] for c in cands] == pytest.approx([1 / 3, 1 / 3, 1 / 6, 1 / 6], abs=1e-5)
    assert result.generated_tokens == gen.usage.completion_tokens
    assert len(rm.calls) == 2


def test_particle_filter_multinomial_draws_are_the_seeded_ones_whatever_the_batch():
    gen = ScriptedGenerator(PF_SCRIPT)
    search, _ = build("particle_filter", gen, PF_TABLE)
    cands = search.search(problem()).candidates
    rng = np.random.default_rng(problem().seed)  # the problem's own resampling stream
    first = resample(softmax(log_weights([2 / 3, 0.5, 0.5, 0.0])), 4, rng, "multinomial")
    widths_asked = {p: params.n for call in gen.calls[1:] for p, params in call}
    assert widths_asked == {f"<P0>a{j + 1}\n\n": first.count(j) for j in set(first)}
    kids = {0: ["b1 \\boxed{1}", "b2 \\boxed{2}"], 1: ["c1 \\boxed{3}"], 2: ["d1 \\boxed{4}"]}
    taken = {j: iter(kids[j]) for j in kids}
    particles = [f"a{j + 1}\n\n" + next(taken[j]) for j in first]
    second = resample(softmax(log_weights([PF_TABLE[p.split("\n\n")[1]] for p in particles])), 4, rng, "multinomial")
    assert sorted(texts(cands)) == sorted(particles[j] for j in second)
    both, _ = build("particle_filter", ScriptedGenerator(PF_SCRIPT), PF_TABLE)
    other, mine = both.search(problem(1)).candidates, both.search(problem()).candidates
    assert texts(mine) == texts(cands)
    alone, _ = build("particle_filter", ScriptedGenerator(PF_SCRIPT), PF_TABLE)
    assert [c.to_dict() for c in alone.search(problem(1)).candidates] == [c.to_dict() for c in other]  # 1 round


def test_particle_gibbs_keeps_a_reference_particle_between_sweeps():
    gen = ScriptedGenerator(PF_SCRIPT)
    search, _ = build("particle_filter", gen, PF_TABLE, pf_iterations=2)
    cands = search.search(problem()).candidates
    assert [c.meta["sweep"] for c in cands] == [0, 0, 1, 1]  # n = 4 in all: 2 particles per sweep
    sweep0, sweep1 = texts(cands[:2]), texts(cands[2:])
    assert any(t in sweep0 for t in sweep1)  # the reference survives into the second sweep
    roots = [p for call in gen.calls for p, params in call if p == "<P0>"]
    seeds = [params.seed for call in gen.calls for p, params in call if p == "<P0>"]
    assert len(roots) == 2 and seeds[0] != seeds[1]  # the second sweep samples afresh (1 free particle)
    assert [params.n for call in gen.calls for p, params in call if p == "<P0>"] == [2, 1]
    with pytest.raises(UserError, match="--n >= 4"):
        build("particle_filter", ScriptedGenerator(PF_SCRIPT), PF_TABLE, n=3, pf_iterations=2)[0].search(problem())


# ---- REBASE ----

T2 = 0.2 / math.log(2)  # exp(0.2 / T) = 2


def test_rebase_widths_by_hand():
    # weights 4 : 2 : 1 of 7. W = 4: shares 2.29, 1.14, .57 -> floors 2, 1, 0, the spare unit to .57
    assert widths([1.0, 0.8, 0.6], 4, T2) == [2, 1, 1]
    # W = 5: 2.86, 1.43, .71 -> floors 2, 1, 0 and two spare units to .86 and .71
    assert widths([1.0, 0.8, 0.6], 5, T2) == [3, 1, 1]
    assert widths([0.5, 0.5], 3, 0.2) == [2, 1]  # a tie goes to the better-ranked (first) node
    assert widths([math.nan, math.nan], 2, 0.2) == [1, 1] and sum(widths([0.9, 0.1, 0.5], 7, 0.2)) == 7


def test_rebase_finished_nodes_use_up_width_and_the_rest_is_shared():
    script = {"<P0>": ["a1\n\n", "a2\n\n", "a3 \\boxed{3}", "a4\n\n"],
              "<P0>a1\n\n": ["b1 \\boxed{1}", "b2 \\boxed{2}"], "<P0>a2\n\n": ["c1 \\boxed{5}"]}
    table = {"a1": 1.0, "a2": 0.8, "a3 \\boxed{3}": 0.3, "a4": 0.6, "b1 \\boxed{1}": 0.9, "b2 \\boxed{2}": 0.7,
             "c1 \\boxed{5}": 0.95}
    gen = ScriptedGenerator(script)
    search, _ = build("rebase", gen, table, rebase_temperature=T2)
    cands = search.search(problem()).candidates
    # a3 finished: width 3 left for a1, a2, a4 (4 : 2 : 1): 1.71, .86, .43 -> 1, 0, 0 + 2 spare -> 2, 1, 0
    assert gen.prompts(1) == ["<P0>a2\n\n"] and gen.prompts(2) == ["<P0>a1\n\n"] and gen.calls[2][0][1].n == 2
    assert len(gen.calls) == 3
    assert texts(cands) == ["a2\n\nc1 \\boxed{5}", "a1\n\nb1 \\boxed{1}", "a1\n\nb2 \\boxed{2}", "a3 \\boxed{3}"]


# ---- budget forcing ----

THINK = ["<think>", "</think>"]


def test_budget_forcing_appends_wait_and_closes_at_the_budget():
    script = {"<P0><think>": ["abc</think>junk"], "<P0><think>abcWait": ["defgh</think>"],
              "<P0><think>abcWaitdefghWait": ["x" * 30],
              "<P0><think>abcWaitdefghWait" + "x" * 10 + "</think>" + FINAL_ANSWER: [" \\boxed{7}"]}
    gen = ScriptedGenerator(script)
    search, _ = build("budget_forcing", gen, n=1, thinking_delimiters=THINK, thinking_budget=20, wait=2)
    (cand,) = search.search(problem()).candidates
    # segments get the budget left: 20, then 20 - 4 (3 characters + the delimiter), then 16 - 6
    assert [call[0][1].max_new_tokens for call in gen.calls[:3]] == [20, 16, 10]
    assert all(call[0][1].stop == ("</think>",) for call in gen.calls[:3])
    assert len({call[0][1].seed for call in gen.calls}) == 4
    assert cand.text == "<think>abcWaitdefghWait" + "x" * 10 + "</think>\n\nFinal Answer: \\boxed{7}"
    assert cand.tokens == 4 + 6 + 10 + 11 and gen.calls[3][0][1].max_new_tokens == 1000
    assert cand.meta == {"thinking_tokens": 20, "waits": 2, "forced_end": True}


def test_budget_forcing_natural_end_min_thinking_and_a_prompt_that_opens_thinking():
    script = {"<P0><think>": ["abc</think>"], "<P0><think>abc</think>": ["\\boxed{1}"],
              "<P0><think>abcWait": ["de</think>"], "<P0><think>abcWaitde</think>": ["\\boxed{2}"]}
    plain, _ = build("budget_forcing", ScriptedGenerator(script), n=1, thinking_delimiters=THINK)
    assert plain.search(problem()).candidates[0].text == "<think>abc</think>\\boxed{1}"  # no "Wait" by default
    forced, _ = build("budget_forcing", ScriptedGenerator(script), n=1, thinking_delimiters=THINK, min_thinking=5)
    (cand,) = forced.search(problem()).candidates
    assert cand.text == "<think>abcWaitde</think>\\boxed{2}"  # 4 tokens < 5: Wait; then 7 >= 5: answer
    assert cand.meta == {"thinking_tokens": 7, "waits": 1, "forced_end": False}
    opened = problem()
    opened.prompt = "<P0><think>"
    search, _ = build("budget_forcing", ScriptedGenerator(script), n=1, thinking_delimiters=THINK)
    assert search.search(opened).candidates[0].text == "abc</think>\\boxed{1}"
    with pytest.raises(UserError, match="thinking-delimiters"):
        build("budget_forcing", ScriptedGenerator(script), n=1)[0].search(problem())


# ---- self-consistency ----


def test_beta_stopping_rule_by_hand():
    assert beta_confidence(1, 0) == 0.75 and beta_confidence(3, 0) == 0.9375 and beta_confidence(4, 0) == 31 / 32
    assert beta_confidence(5, 1) == 120 / 128 and beta_confidence(6, 1) == 247 / 256


def sc_run(answers: list[int], **settings):
    gen = SeededGenerator({"<P0>": [f"so \\boxed{{{a}}}" for a in answers]})
    search, _ = build("self_consistency", gen, **settings)
    return search.search(problem()).candidates, gen


def test_esc_stops_after_the_first_unanimous_window():
    cands, gen = sc_run([1, 2, 3, 3, 4, 4], n=6, esc_window=2, esc_answer="all")
    assert [c.text for c in cands] == ["so \\boxed{1}", "so \\boxed{2}", "so \\boxed{3}", "so \\boxed{3}"]
    assert len(gen.calls) == 2 and cands[0].meta == {"samples": 4, "stopped_early": True}
    full, _ = sc_run([1, 2, 3, 3, 4, 4], n=6, esc_window=2, sc_stop="none", esc_answer="all")
    assert len(full) == 6 and full[0].meta == {"samples": 6, "stopped_early": False}
    assert [c.text for c in full[:4]] == [c.text for c in cands]  # the same stream of samples


def test_adaptive_consistency_stops_when_the_beta_posterior_passes_95():
    # after each sample the counts are (1,0) .75, (1,1) .5, (2,1), (3,1), (4,1) .89, (5,1) .9375, (6,1) .965:
    # the 7th sample stops it
    cands, gen = sc_run([5, 7, 5, 5, 5, 5, 5, 5, 5, 5], n=10, sc_stop="adaptive")
    assert len(cands) == 7 and len(gen.calls) == 7 and cands[0].meta["stopped_early"]
    unanimous, _ = sc_run([5] * 10, n=10, sc_stop="adaptive")
    assert len(unanimous) == 4  # (4, 0): 31/32


# ---- DeepConf ----

CONF = {"h": 5.0, "k": 5.0, "l": 1.0, "": 5.0}  # a character's token confidence; "" is EOS


class ConfidenceGenerator(ScriptedGenerator):
    """Trace j of problem 0 is `traces[j]`; each token's top-k log-probabilities are -CONF of it.

    A prompt continuing a trace ("<P0>" + a prefix) continues the trace with that prefix (drawn by seed
    when the prefix is empty).
    """

    def __init__(self, traces):
        super().__init__({})
        self.traces, self.index = traces, {node_seed(100, (j,)): j for j in range(len(traces))}

    def generate(self, prompts, params):
        plist = per_prompt_params(prompts, params)
        self.calls.append(list(zip(prompts, plist, strict=True)))
        out = []
        for prompt, p in zip(prompts, plist, strict=True):
            done = prompt.removeprefix("<P0>")
            trace = self.traces[self.index[p.seed]] if not done else next(t for t in self.traces if t.startswith(done))
            rest = trace[len(done):]
            if len(rest) >= p.max_new_tokens:
                text, tokens, finish = rest[: p.max_new_tokens], p.max_new_tokens, "length"
            else:
                text, tokens, finish = rest, len(rest) + 1, "stop"
            pieces = list(text) + ([""] if finish == "stop" else [])
            top = [[(ch, -CONF[ch])] * p.top_logprobs for ch in pieces]
            out.append([Completion(text, tokens, finish, top_logprobs=top)])
        self._record(Usage(calls=1, completion_tokens=sum(c.tokens for cs in out for c in cs)))
        return out


def test_group_confidence_and_the_first_drop_by_hand():
    assert trace_score([3, 1, 1, 3], 2) == 1.0 and trace_score([2, 4], 5) == 3.0
    assert trace_score([1, 2, 3, 4, 5], 2) == 1.5 and math.isnan(trace_score([], 2))
    assert first_drop([5, 5, 1, 1], 2, 3.0, 0) == 3  # window (5, 1) is 3, not below; (1, 1) is
    assert first_drop([5, 5, 1, 1], 2, 3.0, 4) is None and first_drop([1], 2, 3.0, 0) is None


def test_deepconf_offline_keeps_the_top_eta_percent_weighted_by_confidence():
    traces = ["hhhh", "llll", "hhlh", "hlll"]  # scores (window 2): 5, 1, 3, 1
    gen = ConfidenceGenerator(traces)
    search, _ = build("deepconf", gen, deepconf_window=2, deepconf_eta=50, deepconf_top_k=3)
    cands = search.search(problem()).candidates
    assert gen.calls[0][0][1].top_logprobs == 3
    assert texts(cands) == ["hhhh", "hhlh"] and [c.step_scores for c in cands] == [[5.0], [3.0]]
    assert cands[0].meta == {"confidence": 5.0, "traces": 4, "mode": "offline", "kept": 2}
    eta_low, _ = build("deepconf", ConfidenceGenerator(traces), deepconf_window=2, deepconf_eta=10)
    assert texts(eta_low.search(problem()).candidates) == ["hhhh"]  # 10% of 4, rounded up


def test_deepconf_online_threshold_from_the_warm_up_and_stops():
    traces = ["hhhh", "llll", "khhhhh", "hkllhh"]  # warm-up scores 5 and 1: threshold (50th percentile) 3
    gen = ConfidenceGenerator(traces)
    search, _ = build("deepconf", gen, deepconf_mode="online", deepconf_warmup=2, deepconf_window=2,
                      deepconf_eta=50, deepconf_chunk=2)
    result = search.search(problem())
    cands = result.candidates
    # trace 3 stops after its second chunk (window "ll"); trace 2 runs to the end (3 chunks + EOS); the
    # warm-up trace "llll" scores 1 < 3 and is not admitted (deepconf-online.py votes only warm-up traces >= it)
    assert texts(cands) == ["hhhh", "khhhhh"]
    assert [p for p, _ in gen.calls[2]] == ["<P0>kh", "<P0>hk"] and [p for p, _ in gen.calls[3]] == ["<P0>khhh"]
    assert cands[0].meta == {"confidence": 5.0, "traces": 4, "mode": "online", "threshold": 3.0, "stopped": 1,
                             "stopped_tokens": 4, "saved_tokens_est": 1, "dropped": 1, "kept": 2}
    assert result.generated_tokens == 5 + 5 + 7 + 4 == gen.usage.completion_tokens


# ---- Borda ----


def test_borda_votes_by_hand():
    answers = ["A", "C", "C", "B", "B"]
    scores = [[0.9], [0.8], [0.7], [0.2], [0.1]]
    # ranks 1..5 get sqrt(5), 2, sqrt(3), sqrt(2), 1: A 2.24, C 3.73, B 2.41
    assert vote("borda", answers, scores) == "C"
    # without C's top votes: A sqrt(3) = 1.73 vs B sqrt(2) + 1 = 2.41 (majority would tie, the first seen)
    assert vote("borda", ["A", "B", "B"], [[0.9], [0.2], [0.1]]) == "B"
    assert vote("borda", ["A", "B", "B"], [[0.9], [0.2], [0.1]], "last") == "B"
    # an unscored candidate gets no votes and does not count in N: A sqrt(2) vs B 1
    assert vote("borda", ["A", "B", "B"], [[0.9], [0.2], [math.nan]]) == "A"
    assert vote("borda", [None, "B"], [[0.9], [0.1]]) == "B"


# ---- Self-Refine ----


def test_self_refine_chain_stops_when_the_feedback_says_correct():
    q = DEFAULT_TEMPLATE.format(input="question 0")
    d1, f1, d2, f2 = "draft1 \\boxed{1}", "Step 2 is wrong.", "draft2 \\boxed{2}", "Yes, the solution is correct."
    script = {"<P0>": [d1], q + d1 + FEEDBACK: [f1], q + d1 + FEEDBACK + f1 + REFINE: [d2],
              q + d1 + FEEDBACK + f1 + REFINE + d2 + FEEDBACK: [f2]}
    gen = ScriptedGenerator(script)
    search, _ = build("self_refine", gen, n=1, refine_steps=3)
    result = search.search(problem())
    (cand,) = result.candidates
    assert cand.text == d2 and cand.meta == {"feedback_rounds": 2, "stopped_by": "feedback"}
    assert len(gen.calls) == 4 and cand.tokens == sum(len(t) + 1 for t in (d1, f1, d2, f2))
    assert result.generated_tokens == cand.tokens
    capped, _ = build("self_refine", ScriptedGenerator(script), n=2, refine_steps=1)
    cands = capped.search(problem()).candidates
    assert texts(cands) == [d2, d2] and cands[0].meta == {"feedback_rounds": 1, "stopped_by": "steps"}


# ---- configuration and the command line ----


def test_bad_method_options_are_one_line_errors(tmp_path, capsys):
    assert main(["run", "--method", "self_consistency", "--sc-stop", "sometimes", "--work-dir", str(tmp_path)]) == 2
    assert "sc_stop" in capsys.readouterr().err
    assert main(["run", "--method", "budget_forcing", "--thinking-delimiters", "<think>", "--work-dir",
                 str(tmp_path)]) == 2
    assert "thinking_delimiters" in capsys.readouterr().err
    assert RunConfig(thinking_delimiters="<think>, </think>").thinking_delimiters == THINK


FLAGS = ["--limit", "1", "--max-new-tokens", "24", "--temperature", "0.8", "--no-progress", "--model-arg",
         "n_threads=1"]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra"), [
    ("particle_filter", ["--n", "3", "--max-steps", "3", "--pf-resampling", "systematic", "--pf-tempering",
                         "--reward-model", "mean_logprob", "--vote", "majority,weighted,borda"]),
    ("rebase", ["--n", "3", "--max-steps", "3", "--reward-model", "self_certainty", "--vote", "majority,borda"]),
    ("self_consistency", ["--n", "4", "--esc-window", "2", "--esc-answer", "all"]),
    ("deepconf", ["--n", "4", "--deepconf-mode", "online", "--deepconf-warmup", "2", "--deepconf-window", "8",
                  "--deepconf-chunk", "8", "--vote", "majority,weighted"]),
    ("budget_forcing", ["--n", "2", "--thinking-delimiters", "<think>,</think>", "--thinking-budget", "16",
                        "--wait", "1"]),
    ("self_refine", ["--n", "2", "--refine-steps", "1", "--reward-model", "self_certainty", "--vote", "borda"]),
])
def test_embedded_model_from_the_command_line(method, extra, tmp_path):
    (record,) = run_cli(["--method", method, *FLAGS, *extra], tmp_path, "a")
    cands = record["candidates"]
    assert cands and all(c["tokens"] > 0 for c in cands) and record["usage"]["completion_tokens"] > 0
    assert set(record["predictions"]) >= {"majority"} or "borda" in record["predictions"]
    if method in ("particle_filter", "rebase"):
        assert len(cands) == 3 and all(c["step_scores"] for c in cands)
    if method == "self_consistency":
        assert cands[0]["meta"]["samples"] == len(cands) <= 4
    if method == "deepconf":
        assert "threshold" in cands[0]["meta"] and all(c["step_scores"] for c in cands)
    if method == "budget_forcing":
        assert all(c["text"].startswith("<think>") and c["meta"]["thinking_tokens"] <= 16 for c in cands)
    if method == "self_refine":
        assert len(cands) == 2 and all(c["meta"]["feedback_rounds"] >= 1 for c in cands)


@pytest.mark.slow
def test_borda_in_run_and_evaluate(tmp_path):
    args = ["--method", "best_of_n", "--n", "4", "--reward-model", "self_certainty", "--vote", "majority", *FLAGS]
    run_cli(args, tmp_path, "a")
    (run_dir,) = tmp_path.glob("*/*+a")
    assert main(["evaluate", str(run_dir), "--vote", "borda,majority", "--name", "borda"]) == 0
    evaluation = run_dir / "evaluations" / "borda"
    (record,) = [json.loads(line) for line in (evaluation / "predictions.jsonl").read_text().splitlines()]
    answers = [c["answer"] for c in record["candidates"]]
    assert record["predictions"]["borda"] == vote("borda", answers, [c["step_scores"] for c in record["candidates"]])
    assert "borda" in json.loads((evaluation / "metrics.json").read_text())["votes"]
