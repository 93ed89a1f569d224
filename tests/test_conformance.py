"""Each method computes what its reference implementation computes: numbers from the reference code's rules.

Scripted generators and reward models (tests/test_search.py, tests/test_methods.py) drive the public
Python API (`get_method(name)(config, generator, reward_model).search`, `load_reward_model`), a few
examples go through the command line, and self-certainty runs on real engines (tiny transformers models
with fixed next-token distributions, and the embedded model through llama.cpp). Each test names the
reference file and commit whose rule it checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inferencekit.cli import main
from inferencekit.errors import UserError
from inferencekit.models.base import Completion, Usage, per_prompt_params
from inferencekit.reward_models import load_reward_model
from inferencekit.search.deepconf import trace_score
from inferencekit.search.mcts import MCTS
from inferencekit.search.particle_filter import weighed_pool
from inferencekit.search.rebase import reference_widths, widths
from inferencekit.search.tree import Node
from inferencekit.voting import vote
from test_methods import ConfidenceGenerator, SeededGenerator, build
from test_search import ScriptedGenerator, problem, texts

# ---- REBASE ----


def test_rebase_widths_are_the_references_ceil_in_score_order():
    """thu-wyz/inference_scaling 0fe7da9, rebase.py `select_softmax`: nodes sorted by score, each gets
    ceil(W' e_j / S') of the width W' left, S' the weight left: [0.9, 0.8, 0.5], W = 16, T = 0.2 -> [10, 5, 1]."""
    assert reference_widths([0.9, 0.8, 0.5], 16, 0.2) == [10, 5, 1]
    assert widths([0.9, 0.8, 0.5], 16, 0.2) == [9, 6, 1]  # --rebase-widths largest_remainder
    # by hand: e = exp(s / 0.5) = 6.05, 4.95, 2.72 (S = 13.72); W = 3: ceil(1.32) = 2, then ceil(1 * 4.95 / 7.67) = 1
    assert reference_widths([0.9, 0.8, 0.5], 3, 0.5) == [2, 1, 0] and widths([0.9, 0.8, 0.5], 3, 0.5) == [1, 1, 1]


def test_rebase_search_expands_by_the_reference_widths():
    """The same rule inside the search: a3 finished uses one unit of W = 4; 3 units go to a1, a2, a4 as [2, 1, 0]."""
    script = {"<P0>": ["a1\n\n", "a2\n\n", "a3 \\boxed{3}", "a4\n\n"]}
    table = {"a1": 0.9, "a2": 0.8, "a4": 0.5}
    for how, expected in (("reference", [("<P0>a1\n\n", 2), ("<P0>a2\n\n", 1)]),
                          ("largest_remainder", [("<P0>a1\n\n", 1), ("<P0>a2\n\n", 1), ("<P0>a4\n\n", 1)])):
        gen = ScriptedGenerator(script)
        search, _ = build("rebase", gen, table, rebase_temperature=0.5, rebase_widths=how)
        search.search(problem())
        assert sorted((p, params.n) for call in gen.calls[1:] for p, params in call) == expected


# ---- self-consistency: ESC ----


def test_esc_answers_with_the_unanimous_window():
    """ESC (Li et al. 2024; its repository's early-stopping loop): sampling stops at the first window whose
    answers agree, and that window's answer is the answer. Answers 1,1,2 | 1,1,3 | 1,1,4 | 2,2,2, window 3:
    stop after 12 samples; ESC answers 2 (a majority over all 12 would answer 1)."""
    answers = [1, 1, 2, 1, 1, 3, 1, 1, 4, 2, 2, 2, 5, 5, 5]
    gen = SeededGenerator({"<P0>": [f"so \\boxed{{{a}}}" for a in answers]})
    search, _ = build("self_consistency", gen, n=15, esc_window=3)
    result = search.search(problem())
    cands = result.candidates
    assert cands[0].meta == {"samples": 12, "stopped_early": True} and len(gen.calls) == 4
    assert vote("majority", [c.text[-2] for c in cands]) == "2"
    assert result.generated_tokens == 12 * (len("so \\boxed{1}") + 1)  # the 9 samples left out still cost tokens
    everything, _ = build("self_consistency", SeededGenerator(gen.script), n=15, esc_window=3, esc_answer="all")
    all_cands = everything.search(problem()).candidates
    assert len(all_cands) == 12 and vote("majority", [c.text[-2] for c in all_cands]) == "1"


@pytest.mark.slow
def test_esc_from_the_command_line_answers_with_the_window(tmp_path):
    """The embedded model, greedy: the first window is unanimous, so ESC stops there and its window answers."""
    from test_search import run_cli

    args = ["--method", "self_consistency", "--n", "6", "--esc-window", "2", "--temperature", "0", "--limit", "1",
            "--max-new-tokens", "24", "--no-progress", "--model-arg", "n_threads=1", "--dataset", "arith"]
    (record,) = run_cli(args, tmp_path, "esc")
    cands = record["candidates"]
    assert len(cands) == 2 and cands[0]["meta"] == {"samples": 2, "stopped_early": True}
    assert record["predictions"]["majority"] == cands[0]["answer"]


def test_self_consistency_groups_answers_as_the_dataset_is_graded():
    """`arith` is graded in GSM8K style (its preset), where "Answer: 12 - 7 = 5" answers 12 (MATH style reads 5):
    grouped as the grader reads them, three samples agree and ESC stops (issue 20)."""
    from inferencekit.search.samples import answer_key

    samples = ["Answer: 12 - 7 = 5", "The answer is 12.", "Answer: 12"]
    assert [answer_key(t, "math") for t in samples] == ["5", "12", "12"]
    gen = SeededGenerator({"<P0>": samples * 2})
    search, _ = build("self_consistency", gen, n=6, esc_window=3, dataset="arith")
    assert search.answer_style == "gsm8k"
    cands = search.search(problem()).candidates
    assert cands[0].meta == {"samples": 3, "stopped_early": True}


def test_answer_extraction_has_a_time_limit_in_worker_threads():
    """SIGALRM reaches only the main thread; a search's worker thread gets the limit by an asynchronous exception."""
    import threading
    import time

    from inferencekit.grading.equivalence import GradingTimeout, time_limit

    outcome = {}

    def worker() -> None:
        start = time.monotonic()
        try:
            with time_limit(0.2):
                while time.monotonic() - start < 30:  # Python bytecode: interruptible
                    sum(range(100))
            outcome["result"] = "ran to the end"
        except GradingTimeout:
            outcome["result"] = "stopped"
        outcome["seconds"] = time.monotonic() - start
        with time_limit(0.05):
            pass
        time.sleep(0.2)  # a limit not reached is disarmed: nothing fires later
        outcome["after"] = "clean"

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert outcome == {"result": "stopped", "seconds": outcome["seconds"], "after": "clean"}
    assert outcome["seconds"] < 20  # generous: the mechanism, not the speed


# ---- DeepConf ----


class LevelGenerator(ScriptedGenerator):
    """Trace j of problem 0 is one token whose top-k log-probabilities are all -(j + 1): confidence j + 1."""

    def __init__(self, n: int) -> None:
        super().__init__({})
        from inferencekit.search.tree import node_seed

        self.level = {node_seed(100, (j,)): j + 1.0 for j in range(n)}

    def generate(self, prompts, params):
        plist = per_prompt_params(prompts, params)
        out = [[Completion(f"\\boxed{{{int(self.level[p.seed])}}}", 1, "length",
                           top_logprobs=[[("x", -self.level[p.seed])] * p.top_logprobs])] for p in plist]
        self._record(Usage(calls=1, completion_tokens=len(out)))
        return out


def test_deepconf_offline_keeps_scores_at_or_above_the_percentile():
    """facebookresearch/deepconf 21057ed, analysis_offline.py `filter_top_confidence`: keep the traces whose
    confidence >= np.percentile(confidences, 100 - eta): 14 of 16 distinct scores at eta = 90 (15 with top)."""
    search, _ = build("deepconf", LevelGenerator(16), n=16, deepconf_eta=90)
    cands = search.search(problem()).candidates
    assert len(cands) == 14 and sorted(c.meta["confidence"] for c in cands) == [float(k) for k in range(3, 17)]
    top, _ = build("deepconf", LevelGenerator(16), n=16, deepconf_eta=90, deepconf_keep="top")
    assert len(top.search(problem()).candidates) == 15


def test_deepconf_tail_and_bottom_ten_percent_trace_scores():
    """analysis_offline.py `calculate_tail_confidence` (mean of the last window tokens) and
    `calculate_bottom_window_confidence` (mean of the lowest max(1, int(10% of the windows)) sliding windows)."""
    confs = [5.0] * 10 + [1.0, 3.0] + [5.0] * 10  # 22 tokens, window 2: 21 windows, the lowest 2 are 2.0 and 3.0
    assert trace_score(confs, 2, "lowest") == 2.0
    assert trace_score(confs, 2, "bottom10") == 2.5
    assert trace_score(confs, 2, "tail") == 5.0 and trace_score(confs, 12, "tail") == (4 + 50) / 12
    assert trace_score(confs, 2, "mean") == pytest.approx(sum(confs) / 22)
    assert trace_score([1.0, 3.0], 5, "bottom10") == 2.0  # shorter than the window: the mean
    gen = ConfidenceGenerator(["hhhh", "lhhh", "hhhl", "llll"])  # windows of 2: tails 5, 5, 3, 1
    search, _ = build("deepconf", gen, deepconf_window=2, deepconf_eta=50, deepconf_score="tail")
    # by the lowest window, "hhhl" would tie "lhhh"
    assert texts(search.search(problem()).candidates) == ["hhhh", "lhhh"]


def test_deepconf_online_filters_warm_up_and_short_final_traces():
    """facebookresearch/deepconf 21057ed, deepconf-online.py: warm-up traces vote only if min_conf >= the
    threshold, and every final trace with min_conf below it is dropped after generation, a short one too."""
    traces = ["hhhh", "llll", "ll", "hhhhhh"]  # warm-up scores 5 and 1 -> threshold 3; "ll" is shorter than the window
    gen = ConfidenceGenerator(traces)
    search, _ = build("deepconf", gen, deepconf_mode="online", deepconf_warmup=2, deepconf_window=4,
                      deepconf_eta=50, deepconf_chunk=8)
    cands = search.search(problem()).candidates
    assert texts(cands) == ["hhhh", "hhhhhh"]  # "ll" + EOS: confidences 1, 1, 5, mean 2.33 < 3
    assert cands[0].meta["dropped"] == 2 and cands[0].meta["stopped"] == 0
    with pytest.raises(UserError, match="applies offline"):
        build("deepconf", gen, deepconf_mode="online", deepconf_score="tail")


# ---- beam search and DVTS ----


def test_beam_search_pads_each_round_to_n_and_returns_the_first_n_finished():
    """huggingface/search-and-learn 6f81cac, src/sal/search/beam_search.py: each round the best N // M active
    beams are copied in turn up to N (N = 10, M = 4: 2 beams, 5 children each), and the first N completed
    beams, in completion order, are returned (copies would pad them when fewer completed; here a path at
    `max_steps` counts as finished, so N always finish)."""
    script = {"<P0>": [f"a{j}\n\n" for j in range(10)],
              "<P0>a0\n\n": [f"b{j} \\boxed{{{j}}}" for j in range(5)],
              "<P0>a9\n\n": ["c0\n\n", "c1 \\boxed{1}", "c2 \\boxed{2}", "c3 \\boxed{3}", "c4 \\boxed{4}"]}
    table = {"a0": 0.9, "a9": 0.8, "c0": 0.99}
    gen = ScriptedGenerator(script)
    search, _ = build("beam_search", gen, table, n=10, beam_width=4)
    cands = search.search(problem()).candidates
    assert [(p, params.n) for p, params in gen.calls[1]] == [("<P0>a0\n\n", 5), ("<P0>a9\n\n", 5)]
    # round 2 finished 9 in the order of the padded list (a0's first child, a9's first, a0's second, ...)
    first = ["a0\n\nb0 \\boxed{0}", "a0\n\nb1 \\boxed{1}", "a9\n\nc1 \\boxed{1}", "a0\n\nb2 \\boxed{2}"]
    assert texts(cands)[:4] == first and len(cands) == 10
    assert [(p, params.n) for p, params in gen.calls[2]] == [("<P0>a9\n\nc0\n\n", 10)]  # one live beam, padded to N
    assert texts(cands)[9] == "a9\n\nc0\n\n\\boxed{0}"  # the 10th finished


def test_dvts_refuses_n_not_a_multiple_of_the_width(tmp_path, capsys):
    """search-and-learn 6f81cac, src/sal/config.py: dvts raises "n should be a multiple of beam_width"."""
    with pytest.raises(UserError, match="--n 10 is not a multiple of --beam-width 4; give --n 8 or 12"):
        build("dvts", ScriptedGenerator({}), {}, n=10, beam_width=4)
    with pytest.raises(UserError, match="^token_beam keeps N/M beams.*--n 10 is not a multiple"):  # no flooring
        build("token_beam", ScriptedGenerator({}), None, n=10, beam_width=4)
    assert build("dvts", ScriptedGenerator({}), {}, n=2, beam_width=4)[0]  # N < M: one subtree of N
    args = ["run", "--method", "dvts", "--n", "10", "--beam-width", "4", "--reward-model", "self_certainty",
            "--limit", "1", "--no-progress", "--work-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a multiple of --beam-width 4" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before any model loads or folder is written


# ---- particle Gibbs ----


def test_particle_gibbs_weighs_the_reference_by_its_final_score():
    """Red-Hat-AI-Innovation-Team/its_hub 2d340bb, its_hub/core/algorithms/particle_gibbs.py: the reference
    particle is stopped, and a stopped particle's log-weight is its last (final) one."""
    root = Node()
    step1 = Node(parent=root, step="r1\n\n", path=(0,))
    ref = Node(parent=step1, step="r2 \\boxed{1}", path=(0, 0))
    step1.score, ref.score = 0.1, 0.9
    free = [Node(parent=root, step="f\n\n", path=(1,))]
    free[0].score = 0.5
    pool, scores = weighed_pool(free, ref, 1)
    assert pool == [free[0], step1] and scores == [0.5, 0.9]  # drawn: its depth-1 prefix; weighed: its final score
    assert weighed_pool(free, ref, 1, "prefix")[1] == [0.5, 0.1]
    with pytest.raises(UserError, match="a multiple of 2"):  # its_hub asserts budget % num_iterations == 0
        build("particle_filter", ScriptedGenerator({}), {}, n=5, pf_iterations=2)
    with pytest.raises(UserError, match="use --reward-model mean_logprob"):  # logit weights need scores in (0, 1)
        build("particle_filter", ScriptedGenerator({}), {}, reward_model="self_certainty")


# ---- MCTS ----


def test_mcts_backup_mean_or_each_child():
    """`mean` backs the mean of the M new children up once per iteration; `each` backs each child up as a visit."""
    script = {"<P0>": ["a\n\n", "b\n\n"]}
    table = {"a": 0.2, "b": 0.8}
    for how, visits, total in (("mean", 1, 0.5), ("each", 2, 1.0)):
        search, _ = build("mcts", ScriptedGenerator(script), table, n=1, beam_width=2, mcts_backup=how)
        assert isinstance(search, MCTS)
        tree = search.tree(problem())
        search.grow(tree)
        root = tree.root
        assert root.visits == visits and root.value_sum == pytest.approx(total)


# ---- self-certainty (Kang et al. 2025) ----


def fixed_distribution_model(folder, probs: list[float]):
    """A real 4-token transformers model whose every next-token distribution is `probs` (saved to `folder`).

    All layers are zero (the residual stream is the token's embedding, all ones), the final norm keeps it
    all ones, and the LM head's first column is log(probs): logits = log(probs) at every position.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2, "d": 3}, unk_token="d"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="d", pad_token="d", eos_token="c")
    config = LlamaConfig(vocab_size=4, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.get_input_embeddings().weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[:, 0] = torch.log(torch.tensor(probs))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("kang")
    return (fixed_distribution_model(base / "first", [0.4, 0.4, 0.1, 0.1]),
            fixed_distribution_model(base / "second", [0.5, 1 / 6, 1 / 6, 1 / 6]))


def test_self_certainty_is_kangs_measure_and_can_rank_against_mean_logprob(two_models):
    """backprop07/Self-Certainty b3461b1 (README formula, src/confidence_list.py): -(1/(nV)) sum_i sum_j
    log(V p(j | x, y<i)). V = 4, one response token (token 0) drawn from [0.4, 0.4, 0.1, 0.1] vs
    [0.5, 1/6, 1/6, 1/6]: self-certainty 0.2231 vs 0.1308 (the first wins); mean_logprob 0.4 vs 0.5 (the second)."""
    from inferencekit.models import load_generator, resolve_model

    expected = {"self_certainty": [0.2231, 0.1308], "mean_logprob": [0.4, 0.5]}
    for fmt, (first, second) in expected.items():
        got = [load_reward_model(str(folder), format=fmt, device="cpu").score(["b"], [["a"]])[0][0][0]
               for folder in two_models]
        assert got == pytest.approx([first, second], abs=1e-4)
    assert -math.log(4) - (2 * math.log(0.4) + 2 * math.log(0.1)) / 4 == pytest.approx(0.2231, abs=1e-4)  # by hand
    # the same through the hf backend's own full distributions (`certainty_text`), with the policy's prompt
    for folder, value in zip(two_models, expected["self_certainty"], strict=True):
        gen = load_generator(resolve_model(str(folder), "hf", {"dtype": "float32"}))
        try:
            rm = load_reward_model("self_certainty", generator=gen)
            assert rm.score(["b"], [["a a"]], prompts=["b b"])[0][0] == pytest.approx([value], abs=1e-4)
        finally:
            gen.close()


def test_borda_over_self_certainty_is_kangs_vote():
    """backprop07/Self-Certainty c974f5f, src/voting_from_list.py: sorted by self-certainty, rank r (0-based) of
    N gets (N - r) ** 0.5 votes, summed per answer. 5 candidates: "A" ranked 1st; "B" 2nd and 3rd: B wins
    (sqrt 4 + sqrt 3 = 3.73 > sqrt 5 = 2.24 + sqrt 1); majority would tie-break to the first answer seen."""
    answers = ["A", "B", "C", "B", "A"]
    scores = [[0.9], [0.8], [0.3], [0.7], [0.1]]
    assert vote("borda", answers, scores) == "B"


def test_self_certainty_on_llama_cpp_equals_a_recomputation_from_its_logits(embedded_gguf):
    """llama.cpp's `certainty_text` (read in the decode loop) against the same measure recomputed from all-position
    logits of a plain `llama_cpp.Llama(logits_all=True)` over the same tokens."""
    import llama_cpp

    from inferencekit.models.base import GeneratorSpec
    from inferencekit.models.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(GeneratorSpec(name="smollm2", path=str(embedded_gguf), backend="llamacpp", n_ctx=512,
                                          n_threads=1))
    try:
        prompt = gen.chat_prompt([{"role": "user", "content": "What is 2 + 3?"}])
        response = "2 + 3 = 5. The answer is \\boxed{5}."
        (values,) = gen.certainty_text([prompt], [response])
        rm = load_reward_model("self_certainty", generator=gen)
        assert rm.score(["q"], [[response]], prompts=[prompt])[0][0] == pytest.approx([np.mean(values)], rel=1e-12)
        head, tail = gen.gguf.tokenize(prompt, True), gen.gguf.tokenize(response, False)
        assert len(values) == len(tail) and all(v > 0 for v in values)  # KL(U || p) >= 0
    finally:
        gen.close()
    llm = llama_cpp.Llama(model_path=str(embedded_gguf), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    try:
        llm.eval(head + tail)
        logits = np.asarray(llm.scores[len(head) - 1 : len(head) + len(tail) - 1], dtype=np.float64)
    finally:
        llm.close()
    norm = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
    direct = norm - logits.mean(-1) - math.log(logits.shape[-1])
    # the same logits up to llama.cpp's batch kernels (a whole prompt in one ubatch vs its chunks)
    assert values == pytest.approx(direct.tolist(), rel=2e-3)
    assert np.mean(values) == pytest.approx(float(direct.mean()), rel=1e-3)
