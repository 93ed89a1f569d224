"""Reward model formats on tiny random checkpoints laid out like the real ones, loaded the way users load them.

Each expected score is computed here independently: the underlying torch model run directly on the
input ids built as the checkpoint's reference code builds them, and the read-out applied by hand.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from inferencekit.coalesce import Coalescer
from inferencekit.errors import UserError
from inferencekit.models.base import Completion, Generator, SamplingParams, Usage, UsageAccount
from inferencekit.presets import load_preset, preset_names
from inferencekit.reward_models import (
    FORMATS,
    RewardModel,
    RewardModelSettings,
    ScoreItem,
    infer_format,
    list_reward_models,
    load_reward_model,
    resolve_reward_model,
)
from inferencekit.reward_models.batching import pack_batches
from inferencekit.reward_models.concurrent import SharedRewardModel
from tiny_models import make_tokenizer

Q = "What is 1+2-1? Answer with a number."
STEPS = ["First add: 1+2 = 3.", "Then subtract one: 3-1 = 2.", "The answer is 2."]
SOLUTION = "\n\n".join(STEPS)

# mixed lengths: one step, long steps, many short steps, a blank piece that must be dropped
MIXED_QUESTIONS = [Q, "Compute 7 times 6, then halve it, then add the number of days in a week to the result."]
MIXED_SOLUTIONS = [
    [SOLUTION, "It is 2.", "1+2 is 3\n\n3-1 is 2\n\n\n\nso 2\n\nyes 2\n\ndone: \\boxed{2}"],
    ["7*6 = 42, which is a fairly large number for a small problem.\n\nHalf of it is 21.\n\n21+7 = 28.", "28"],
]

DEVICE = os.environ.get("INFERENCEKIT_TEST_DEVICE", "cpu")  # e.g. cuda, to check the GPU path
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rm_tokenizer")
    make_tokenizer(folder)
    return folder


def fresh_tokenizer(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def save(model, tokenizer, folder: Path) -> Path:
    torch.manual_seed(0)
    model.eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SMALL, **extra)


def qwen_config(tokenizer, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SMALL, **extra)


def build(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.fixture(scope="module")
def math_shepherd_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import LlamaForCausalLM

    tok = fresh_tokenizer(tokenizer_dir)
    tok.add_tokens(["ки"])  # a single vocabulary token in Mistral's tokenizer ("▁ки")
    return save(build(LlamaForCausalLM, llama_config(tok)), tok, tmp_path_factory.mktemp("math_shepherd"))


@pytest.fixture(scope="module")
def qwen_prm_dir(tokenizer_dir, tmp_path_factory) -> Path:
    # Stand-in for Qwen2ForProcessRewardModel (remote code): a Qwen2 token classifier with the same
    # [batch, tokens, 2] output and the `<extra_0>` special token, buildable offline.
    from transformers import Qwen2ForTokenClassification

    tok = fresh_tokenizer(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    model = build(Qwen2ForTokenClassification, qwen_config(tok, num_labels=2))
    return save(model, tok, tmp_path_factory.mktemp("qwen_prm"))


@pytest.fixture(scope="module")
def token_classification_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import LlamaForTokenClassification

    tok = fresh_tokenizer(tokenizer_dir)
    model = build(LlamaForTokenClassification, llama_config(tok, num_labels=2))
    return save(model, tok, tmp_path_factory.mktemp("token_classification"))


@pytest.fixture(scope="module")
def skywork_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2ForCausalLM

    tok = fresh_tokenizer(tokenizer_dir)
    folder = save(build(Qwen2ForCausalLM, qwen_config(tok)), tok, tmp_path_factory.mktemp("skywork"))
    # Skywork's PRM_MODEL saves its value head next to the LM weights as v_head.summary.{weight,bias}
    weights = load_file(str(folder / "model.safetensors"))
    torch.manual_seed(1)
    weights["v_head.summary.weight"] = torch.randn(1, SMALL["hidden_size"])
    weights["v_head.summary.bias"] = torch.tensor([0.3])
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def rlhflow_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import LlamaForCausalLM

    tok = fresh_tokenizer(tokenizer_dir)
    assert tok.chat_template
    return save(build(LlamaForCausalLM, llama_config(tok)), tok, tmp_path_factory.mktemp("rlhflow"))


@pytest.fixture(scope="module")
def orm_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from transformers import LlamaForSequenceClassification

    tok = fresh_tokenizer(tokenizer_dir)
    model = build(LlamaForSequenceClassification, llama_config(tok, num_labels=1))
    return save(model, tok, tmp_path_factory.mktemp("orm"))


@pytest.fixture(scope="module")
def causal_dir(rlhflow_dir) -> Path:
    return rlhflow_dir  # any causal LM with a chat template will do for self_certainty


FORMAT_DIRS = {
    "math_shepherd": "math_shepherd_dir",
    "qwen_prm": "qwen_prm_dir",
    "token_classification": "token_classification_dir",
    "skywork_prm": "skywork_dir",
    "rlhflow_prm": "rlhflow_dir",
    "orm": "orm_dir",
    "self_certainty": "causal_dir",
    "mean_logprob": "causal_dir",
}


@pytest.fixture(scope="module")
def loaded() -> dict:
    return {}


@pytest.fixture
def load(request, loaded):
    """Load format `fmt` from its tiny checkpoint (kept for the module when loaded with default settings)."""

    def loader(fmt: str, **kwargs):
        folder = request.getfixturevalue(FORMAT_DIRS[fmt])
        if kwargs:
            return load_reward_model(str(folder), format=fmt, device=DEVICE, **kwargs)
        if fmt not in loaded:
            loaded[fmt] = load_reward_model(str(folder), format=fmt, device=DEVICE)
        return loaded[fmt]

    return loader


def model_and_tokenizer(folder: Path, auto_class: str):
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def approx(values: list[float], expected) -> bool:
    return len(values) == len(expected) and all(abs(a - float(b)) < 1e-4 for a, b in zip(values, expected, strict=True))


# ---- hand-computed expected scores, one per format ----


def test_math_shepherd_matches_model_card_readout(load, math_shepherd_dir):
    scores = load("math_shepherd").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(math_shepherd_dir, "AutoModelForCausalLM")
    # model card: f"{question} {output}" with " ки" after each step; "+ -" ids without BOS; logits at tags
    ids = torch.tensor([tok.encode(f"{Q} " + "\n\n".join(s + " ки" for s in STEPS))])
    plus_minus = tok.encode("+ -", add_special_tokens=False)
    tag = tok.convert_tokens_to_ids("ки")
    with torch.no_grad():
        probs = model(ids).logits[0][:, plus_minus].softmax(-1)[:, 0]
    expected = probs[ids[0] == tag]
    assert len(expected) == 3 and approx(scores, expected)


def test_qwen_prm_matches_model_card_readout(load, qwen_prm_dir):
    scores = load("qwen_prm").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(qwen_prm_dir, "AutoModelForTokenClassification")
    messages = [
        {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": Q},
        {"role": "assistant", "content": "<extra_0>".join(STEPS) + "<extra_0>"},
    ]
    ids = torch.tensor([tok.encode(tok.apply_chat_template(messages, tokenize=False))])
    with torch.no_grad():
        probs = model(ids).logits[0].softmax(-1)[:, 1]
    expected = probs[ids[0] == tok.convert_tokens_to_ids("<extra_0>")]
    assert len(expected) == 3 and approx(scores, expected)


def test_token_classification_matches_trl_layout(load, token_classification_dir):
    scores = load("token_classification").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(token_classification_dir, "AutoModelForTokenClassification")
    # TRL PRMTrainer: [bos] + prompt, then each step's ids + separator ids; label on the separator's last token
    ids, label_positions = [tok.bos_token_id, *tok(Q, add_special_tokens=False)["input_ids"]], []
    for step in STEPS:
        ids += tok(step, add_special_tokens=False)["input_ids"] + tok.encode("\n\n", add_special_tokens=False)
        label_positions.append(len(ids) - 1)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
    assert approx(scores, probs[label_positions])


def test_skywork_matches_reference_prepare_input(load, skywork_dir):
    from safetensors.torch import load_file

    scores = load("skywork_prm").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(skywork_dir, "AutoModelForCausalLM")
    head = load_file(str(skywork_dir / "model.safetensors"))
    # Skywork's prepare_input: bos + problem + "\n", then each step's ids followed by the step token's id
    ids = tok.encode(tok.bos_token + Q + "\n")
    step_token_id, flags = tok.encode("\n")[-1], []
    for step in STEPS:
        ids += tok.encode(step) + [step_token_id]
        flags.append(len(ids) - 1)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    value = (hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]).squeeze(-1).sigmoid()
    assert approx(scores, value[flags])


def test_rlhflow_reads_plus_of_each_assistant_turn(load, rlhflow_dir):
    scores = load("rlhflow_prm").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(rlhflow_dir, "AutoModelForCausalLM")
    conversation = []
    for i, step in enumerate(STEPS):
        conversation += [{"role": "user", "content": f"{Q} {step}" if i == 0 else step}]
        conversation += [{"role": "assistant", "content": "+"}]
    ids = tok(tok.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
    plus, minus = tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]
    # the read-out sits at the last token of each assistant header: the length of the rendered prefix - 1
    positions = []
    for k in range(len(STEPS)):
        prefix = tok.apply_chat_template(conversation[: 2 * k + 1], tokenize=False, add_generation_prompt=True)
        positions.append(len(tok(prefix, add_special_tokens=False)["input_ids"]) - 1)
        assert ids[positions[-1] + 1] == plus
    assert ids.count(plus) > len(STEPS)  # the question's "+" must not be read
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0][:, [plus, minus]].softmax(-1)[:, 0]
    assert approx(scores, probs[positions])


def test_orm_scores_whole_solution_once(load, orm_dir):
    scores = load("orm").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(orm_dir, "AutoModelForSequenceClassification")
    messages = [{"role": "user", "content": Q}, {"role": "assistant", "content": SOLUTION}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logit = model(torch.tensor([ids])).logits[0, 0]
    assert approx(scores, [logit.sigmoid()])  # one score per solution; 1 label -> sigmoid


def test_orm_two_labels_gives_softmax_class_one(tokenizer_dir, tmp_path):
    from transformers import LlamaForSequenceClassification

    tok = fresh_tokenizer(tokenizer_dir)
    folder = save(build(LlamaForSequenceClassification, llama_config(tok, num_labels=2)), tok, tmp_path)
    rm = load_reward_model(str(folder), device=DEVICE)  # format inferred from config.json
    assert rm.format_name == "orm"
    model, _ = model_and_tokenizer(folder, "AutoModelForSequenceClassification")
    messages = [{"role": "user", "content": Q}, {"role": "assistant", "content": SOLUTION}]
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].softmax(-1)[1]
    assert approx(rm.score([Q], [[SOLUTION]])[0][0], [expected])


def test_mean_logprob_is_exp_mean_logprob_of_each_step(load, causal_dir):
    scores = load("mean_logprob").score([Q], [[SOLUTION]])[0][0]
    model, tok = model_and_tokenizer(causal_dir, "AutoModelForCausalLM")
    prompt = tok.apply_chat_template([{"role": "user", "content": Q}], tokenize=False, add_generation_prompt=True)
    ids, spans = tok(prompt, add_special_tokens=False)["input_ids"], []
    for i, step in enumerate(STEPS):
        ids += tok.encode("\n\n", add_special_tokens=False) if i else []
        start = len(ids)
        ids += tok.encode(step, add_special_tokens=False)
        spans.append(range(start, len(ids)))
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [math.exp(sum(float(logprobs[t - 1, ids[t]]) for t in span) / len(span)) for span in spans]
    assert approx(scores, expected)
    assert load_reward_model(str(causal_dir), format="mean_logprob", device=DEVICE).format_name == "mean_logprob"


def kang_self_certainty(model, ids: list[int], start: int) -> float:
    """Kang et al.'s measure by its definition: -(1/V) sum_j log(V p_j) per response token, averaged."""
    with torch.no_grad():
        p = model(torch.tensor([ids])).logits[0].double().softmax(-1)[start - 1 : len(ids) - 1]
    vocab = p.shape[-1]
    return float((-(vocab * p).log().sum(-1) / vocab).mean())


def test_self_certainty_is_kang_kl_from_uniform_over_the_whole_response(load, causal_dir, monkeypatch):
    rm = load("self_certainty")
    ((score,),) = rm.score([Q], [[SOLUTION]])[0]
    model, tok = model_and_tokenizer(causal_dir, "AutoModelForCausalLM")
    prompt = tok.apply_chat_template([{"role": "user", "content": Q}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    start = len(ids)
    ids += tok.encode(SOLUTION, add_special_tokens=False)
    assert approx([score], [kang_self_certainty(model, ids, start)]) and score > 0
    # one score per response, whatever splits it into steps
    resplit = load_reward_model(str(causal_dir), format="self_certainty", device=DEVICE, step_separator="=")
    assert approx(resplit.score([Q], [[SOLUTION]])[0][0], [score])
    # chunked full-vocabulary logits give the same
    import inferencekit.reward_models.self_certainty as module

    expected = rm.score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    assert all(len(s) == 1 for per_q in expected for s in per_q)
    monkeypatch.setattr(module, "LOGITS_CHUNK", 7)
    chunked = resplit.score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    assert all(approx(a, b) for qa, qb in zip(chunked, expected, strict=True) for a, b in zip(qa, qb, strict=True))


def test_mean_logprob_chunked_logits_and_generator_model(load, causal_dir, monkeypatch):
    import inferencekit.reward_models.self_certainty as module

    expected = load("mean_logprob").score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    monkeypatch.setattr(module, "LOGITS_CHUNK", 7)  # many chunks of full-vocabulary logits per batch
    assert all(
        approx(a, b)
        for qa, qb in zip(load("mean_logprob").score(MIXED_QUESTIONS, MIXED_SOLUTIONS), expected, strict=True)
        for a, b in zip(qa, qb, strict=True)
    )

    class HFLike(FakeGenerator):  # an hf-backend generator: its loaded model is reused, no score_text
        can_score_text = False

        def __init__(self, model, tokenizer):
            super().__init__()
            self.model, self.tokenizer = model, tokenizer

        def torch_model(self):
            return self.model, self.tokenizer

        def chat_prompt(self, messages, add_generation_prompt=True):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    model, tok = model_and_tokenizer(causal_dir, "AutoModelForCausalLM")
    rm = load_reward_model("mean_logprob", generator=HFLike(model.to(DEVICE), tok))
    assert approx(rm.score([Q], [[SOLUTION]])[0][0], expected[0][0])


class FakeGenerator(Generator):
    """Answers from a script; offers score_text like a backend that can score given text."""

    backend = "fake"
    can_score_text = True

    def __init__(self, answers: list[tuple[str, float]] | None = None) -> None:
        super().__init__()
        self.answers = answers or []
        self.prompts: list[str] = []
        self.scored: list[tuple[str, str]] = []

    def submit(self, requests):
        prompts = [r.prompt for r in requests]
        for r in requests:
            p = r.params
            assert isinstance(p, SamplingParams) and p.greedy and p.max_new_tokens == 1 and p.logprobs
            self._record(Usage(prompt_tokens=10, completion_tokens=1), r.account)
        self.prompts += list(prompts)
        out = []
        for i in range(len(prompts)):
            text, logprob = self.answers[i % len(self.answers)]
            out.append([Completion(text=text, tokens=1, logprobs=[logprob])])
        return out

    def chat_prompt(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def count_tokens(self, text):
        return len(text.split())

    def score_text(self, prompts, continuations, usage=None):
        self.scored += list(zip(prompts, continuations, strict=True))
        work = Usage(calls=1, prompt_tokens=len(prompts))
        usage.add(work) if usage is not None else self._record(work, None)
        return [[[-0.5, -1.5] for _ in pieces] for pieces in continuations]


def test_llm_judge_reads_p_yes_from_first_token():
    gen = FakeGenerator([("Yes", math.log(0.8)), (" No", math.log(0.9)), ("Maybe", -0.1)])
    rm = load_reward_model("llm_judge", generator=gen)
    scores = rm.score([Q], [[SOLUTION]])[0][0]
    assert approx(scores, [0.8, 0.1, 0.5])
    assert len(gen.prompts) == 3 and "Is this step correct? Answer Yes or No." in gen.prompts[0]
    assert STEPS[0] in gen.prompts[1] and "(none)" in gen.prompts[0]  # earlier steps are shown as context
    assert rm.usage.calls == 1 and rm.usage.prompt_tokens == 30
    assert gen.usage.calls == 0 and gen.usage.prompt_tokens == 0  # judged work is not generation
    with pytest.raises(UserError, match="needs a generator"):
        load_reward_model("llm_judge")
    # llm_judge declares that it ignores the policy's prompts: same prompts to the judge, same scores
    assert not rm.uses_prompts and FORMATS["self_certainty"].uses_prompts and FORMATS["mean_logprob"].uses_prompts
    seen = list(gen.prompts)
    assert approx(rm.score([Q], [[SOLUTION]], prompts=["<policy prompt>"])[0][0], scores)
    assert gen.prompts[len(seen):] == seen


def test_mean_logprob_uses_generator_score_text():
    gen = FakeGenerator()
    rm = load_reward_model("mean_logprob", generator=gen)
    scores = rm.score([Q], [[SOLUTION]])[0][0]
    assert approx(scores, [math.exp(-1.0)] * 3)
    prompt = gen.chat_prompt([{"role": "user", "content": Q}])
    assert gen.scored == [(prompt, [STEPS[0], "\n\n", STEPS[1], "\n\n", STEPS[2]])]  # one pass per solution
    assert rm.usage.calls == 1
    # given the policy's own prompt (as the search methods pass it), the steps are read after it
    assert approx(rm.score([Q], [[SOLUTION]], prompts=["<policy prompt>"])[0][0], [math.exp(-1.0)] * 3)
    assert gen.scored[-1][0] == "<policy prompt>" and rm.score([Q], [[SOLUTION]]) and gen.scored[-1][0] == prompt
    with pytest.raises(UserError, match="mean_logprob needs a causal LM"):
        load_reward_model("mean_logprob")


def test_the_policys_prompt_is_part_of_each_scored_item():
    """Prompts travel with the items, not in a table keyed by question text: one question asked under two
    prompts (two problems with equal text, say) is read after each its own; a format that does not read
    prompts never sees them."""
    gen = FakeGenerator()
    rm = load_reward_model("mean_logprob", generator=gen)
    assert not hasattr(rm, "policy_prompts")
    rm.score([Q, Q], [[SOLUTION], ["4 5"]], prompts=["<policy A>", "<policy B>"])
    assert [prompt for prompt, _ in gen.scored] == ["<policy A>", "<policy B>"]
    items = rm.score_items_of([Q, Q], [[SOLUTION], ["4 5"]], ["<policy A>", "<policy B>"])
    assert [(i.question, i.prompt, len(i.steps)) for i in items] == [(Q, "<policy A>", 3), (Q, "<policy B>", 1)]
    judge = load_reward_model("llm_judge", generator=FakeGenerator([("Yes", -0.1)]))
    assert {i.prompt for i in judge.score_items_of([Q], [[SOLUTION]], ["<policy A>"])} == {None}
    with pytest.raises(ValueError, match="got 1 prompts for 2 questions"):
        rm.score([Q, Q], [[SOLUTION], [SOLUTION]], prompts=["<policy A>"])


def test_shared_reward_model_is_a_reward_model():
    """The batching wrapper is a `RewardModel`: its declared members are the wrapped model's."""
    rm = load_reward_model("mean_logprob", generator=FakeGenerator())
    shared = SharedRewardModel(rm)
    assert isinstance(shared, RewardModel) and shared.usage is rm.usage
    assert (shared.name, shared.step_separator, shared.format_name, shared.uses_prompts) == (
        rm.name, rm.step_separator, "mean_logprob", True)
    assert shared.parameter_count() is None and shared.uses_policy_model
    asked = ([Q], [[SOLUTION]])
    assert shared.score(*asked, prompts=["<policy A>"]) == rm.score(*asked, prompts=["<policy A>"])


class CertaintyGenerator(FakeGenerator):
    """A backend that reads full distributions: each response token's self-certainty is 1, 2, 3, ..."""

    can_score_certainty = True

    def certainty_text(self, prompts, responses, usage=None):
        self.scored += list(zip(prompts, responses, strict=True))
        usage.add(Usage(calls=1, prompt_tokens=len(prompts)))
        return [[float(i + 1) for i in range(len(r.split()))] for r in responses]


def test_self_certainty_reads_the_generators_full_distributions_once_per_response():
    gen = CertaintyGenerator()
    rm = load_reward_model("self_certainty", generator=gen)
    scores = rm.score([Q, "Q2"], [[SOLUTION, "4 5"], ["x"]], prompts=["<policy 1>", "<policy 2>"])
    words = len(SOLUTION.split())
    assert scores == [[[(words + 1) / 2], [1.5]], [[1.0]]]  # the mean over the response's tokens
    assert gen.scored == [("<policy 1>", SOLUTION), ("<policy 1>", "4 5"), ("<policy 2>", "x")]
    assert rm.usage.calls == 1 and gen.usage.calls == 0
    # a backend that cannot give full distributions (openai) is refused in one line
    with pytest.raises(UserError, match=r"^self_certainty reads the full next-token distribution.*got backend 'fake'"):
        load_reward_model("self_certainty", generator=FakeGenerator())
    with pytest.raises(UserError, match=r"^backend 'fake' cannot give full next-token distributions.*llamacpp"):
        FakeGenerator().certainty_text(["p"], ["x"])


def test_scoring_text_is_a_declared_capability():
    class CannotScore(FakeGenerator):  # like the openai backend: neither score_text nor an in-process model
        can_score_text = False
        score_text = Generator.score_text  # the base class's refusal

    gen = CannotScore()
    with pytest.raises(UserError, match=r"^backend 'fake' cannot score text; backends that can: llamacpp, vllm$"):
        gen.score_text(["p"], [["x"]])
    with pytest.raises(UserError, match="mean_logprob needs a causal LM.*got backend 'fake'"):
        load_reward_model("mean_logprob", generator=gen)
    assert gen.scored == []  # declared unable: never called
    # an able backend's work is the reward model's, not the generator's (the contract's usage=)
    able = FakeGenerator()
    rm = load_reward_model("mean_logprob", generator=able)
    rm.score([Q, Q], [[SOLUTION], [SOLUTION]])
    assert rm.usage.calls == 1 and rm.usage.prompt_tokens == 2 and able.usage.calls == 0


# ---- engineering: batching, truncation, usage ----


@pytest.mark.parametrize("fmt", list(FORMAT_DIRS))
def test_batched_scores_equal_one_at_a_time(load, fmt):
    rm = load(fmt)
    batched = rm.score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    pairs = zip(MIXED_QUESTIONS, MIXED_SOLUTIONS, strict=True)
    alone = [[rm.score([q], [[s]])[0][0] for s in sols] for q, sols in pairs]
    small_batches = load(fmt, max_tokens_per_batch=200).score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    for got in (batched, small_batches):
        for q_got, q_alone, sols in zip(got, alone, MIXED_SOLUTIONS, strict=True):
            for s_got, s_alone, solution in zip(q_got, q_alone, sols, strict=True):
                steps = len([p for p in solution.split("\n\n") if p.strip()])
                assert len(s_got) == (1 if fmt in ("orm", "self_certainty") else steps)  # whole-response scores
                assert all(0 <= v <= (math.inf if fmt == "self_certainty" else 1) for v in s_got)  # KL: unbounded
                assert approx(s_got, s_alone), (fmt, s_got, s_alone)


def test_pack_batches_respects_padded_token_budget():
    lengths = [5, 40, 12, 33, 7, 100, 8]
    batches = pack_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [5] in batches  # longer than the budget: alone
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64


@pytest.mark.parametrize("fmt", ["token_classification", "math_shepherd", "rlhflow_prm", "skywork_prm"])
def test_truncation_warns_and_gives_nan_for_cut_steps(load, fmt):
    full = load(fmt)
    long_steps = ["One.", "Step two is a rather long step with many words in it, " * 3, "Step three, long too. " * 4]
    long_solution = "\n\n".join(long_steps)
    encoded = full.encode(ScoreItem(Q, long_steps))
    limit = len(encoded.ids) - encoded.spans[0][0] - 1  # cuts exactly the first step's read-out position
    rm = load(fmt, max_length=limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = rm.score([Q, "Hi"], [[long_solution], ["A.\n\nB."]])
    assert [str(w.message) for w in caught if "cut from the left" in str(w.message)] == [
        f"1 of 2 reward model inputs are longer than {limit} tokens and were cut from the left; steps cut off score NaN"
    ]
    assert math.isnan(scores[0][0][0]) and not any(math.isnan(v) for v in scores[0][0][1:])
    assert not any(math.isnan(v) for v in scores[1][0])  # the short one is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per call, none when nothing is cut
        rm.score(["Hi"], [["A.\n\nB."]])


def test_truncation_of_orm_keeps_the_end(load):
    rm = load("orm", max_length=12)
    with pytest.warns(UserWarning, match="cut from the left"):
        scores = rm.score([Q], [[SOLUTION]])
    assert len(scores[0][0]) == 1 and not math.isnan(scores[0][0][0])


def test_rlhflow_one_forward_pass_per_solution(load):
    rm = load("rlhflow_prm")
    before = rm.usage.calls
    rm.score([Q], [[SOLUTION]])
    assert rm.usage.calls - before == 1
    one_each = load("rlhflow_prm", max_tokens_per_batch=1)  # every solution in its own batch
    one_each.score(MIXED_QUESTIONS, MIXED_SOLUTIONS)
    assert one_each.usage.calls == sum(len(s) for s in MIXED_SOLUTIONS)
    assert one_each.usage.prompt_tokens > 0 and one_each.usage.seconds > 0


def test_empty_solution_and_shapes(load):
    rm = load("token_classification")
    scores = rm.score([Q, Q], [["", "\n\n  \n\n", SOLUTION], []])
    assert scores[0][0] == [] and scores[0][1] == [] and len(scores[0][2]) == 3 and scores[1] == []
    with pytest.raises(ValueError):
        rm.score([Q], [])


# ---- names: presets, inference, errors ----


def test_presets_resolve_without_loading():
    names = preset_names("reward_models")
    expected = {
        "math-shepherd": ("peiyi9979/math-shepherd-mistral-7b-prm", "math_shepherd"),
        "qwen2.5-math-prm-7b": ("Qwen/Qwen2.5-Math-PRM-7B", "qwen_prm"),
        "qwen2.5-math-prm-72b": ("Qwen/Qwen2.5-Math-PRM-72B", "qwen_prm"),
        "skywork-prm-1.5b": ("Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B", "skywork_prm"),
        "skywork-prm-7b": ("Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B", "skywork_prm"),
        "rlhflow-llama3.1-8b-prm-deepseek": ("RLHFlow/Llama3.1-8B-PRM-Deepseek-Data", "rlhflow_prm"),
        "skywork-reward-llama-3.1-8b": ("Skywork/Skywork-Reward-Llama-3.1-8B", "orm"),
        "h4-qwen2.5-math-1.5b-prm": ("HuggingFaceH4/Qwen2.5-Math-1.5B-Instruct-PRM-0.2", "token_classification"),
    }
    for name, (path, fmt) in expected.items():
        assert name in names
        spec = resolve_reward_model(name)
        assert (spec.path, spec.format, spec.name) == (path, fmt, name)
        # every option a preset sets is an option of its format
        FORMATS[fmt].check_options(spec.options)
    assert resolve_reward_model("qwen2.5-math-prm-7b").options["step_token"] == "<extra_0>"
    for name in names:
        assert resolve_reward_model(name).format == load_preset("reward_models", name)["format"]
    lines = list_reward_models()
    assert any(line.startswith("math-shepherd ") for line in lines)
    assert all(any(line.startswith(f"{fmt} ") for line in lines) for fmt in FORMATS)


def test_weight_free_formats_resolve_by_name():
    for name in ("self_certainty", "mean_logprob", "llm_judge"):
        spec = resolve_reward_model(name)
        assert spec.path is None and spec.format == name


def test_format_inferred_from_config(tmp_path, token_classification_dir, orm_dir):
    assert infer_format(str(token_classification_dir)) == "token_classification"
    assert infer_format(str(orm_dir)) == "orm"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForProcessRewardModel"]}))
    assert infer_format(str(tmp_path)) == "qwen_prm"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="pass format=.*math_shepherd"):
        resolve_reward_model(str(tmp_path))


def test_unknown_format_and_options_are_user_errors(token_classification_dir):
    with pytest.raises(UserError, match=r"unknown reward model format 'nope'.*math_shepherd.*token_classification"):
        load_reward_model(str(token_classification_dir), format="nope")
    with pytest.raises(UserError, match="accepted: separator, add_bos"):
        load_reward_model(str(token_classification_dir), format="token_classification", colour="red")
    with pytest.raises(UserError, match="not a preset"):
        resolve_reward_model("no such thing!")
    with pytest.raises(UserError, match="needs a checkpoint"):
        resolve_reward_model("math_shepherd")


def test_shared_reward_model_gathers_concurrent_callers(load):
    """Many threads scoring at once: merged into few calls of the model, each caller gets its own scores and usage."""
    rm = load("token_classification")
    shared = SharedRewardModel(rm)
    expected = [rm.score([q], [sols])[0] for q, sols in zip(MIXED_QUESTIONS, MIXED_SOLUTIONS, strict=True)]
    before = rm.usage.calls
    start = threading.Barrier(len(MIXED_QUESTIONS))

    def one(question, solutions):
        start.wait()
        account = UsageAccount()
        return shared.bind(account).score([question], [solutions])[0], account.reward_model

    with ThreadPoolExecutor(len(MIXED_QUESTIONS)) as pool:
        futures = [pool.submit(one, q, s) for q, s in zip(MIXED_QUESTIONS, MIXED_SOLUTIONS, strict=True)]
        outcomes = [f.result() for f in futures]
    for (got, _), want in zip(outcomes, expected, strict=True):
        for g, w in zip(got, want, strict=True):
            assert approx(g, w)
    calls = rm.usage.calls - before
    assert 1 <= calls <= len(MIXED_QUESTIONS)
    assert sum(u.calls for _, u in outcomes) == pytest.approx(calls)  # the work is shared out, none lost
    assert shared.usage is rm.usage and shared.step_separator == rm.step_separator
    (bound_scores,) = rm.bind(UsageAccount()).score(MIXED_QUESTIONS[:1], MIXED_SOLUTIONS[:1])  # the model's own batcher
    assert all(approx(g, w) for g, w in zip(bound_scores, expected[0], strict=True))


def test_coalescer_runs_whatever_is_pending_together():
    calls: list[list[int]] = []
    release = threading.Event()

    def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(timeout=60)  # the first batch holds the worker while the others queue up
        if 13 in items:
            raise ValueError("unlucky")
        return [i * 10 for i in items]

    gather = Coalescer(run)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(gather, 1)
        while not calls:
            threading.Event().wait(0.01)
        rest = [pool.submit(gather, i) for i in (2, 3, 13)]
        while len(gather._queue) < 3:
            threading.Event().wait(0.01)
        release.set()
        assert first.result() == 10
        with pytest.raises(ValueError, match="unlucky"):
            rest[2].result()
        with pytest.raises(ValueError, match="unlucky"):  # the error reaches every caller of that batch
            rest[0].result()
    assert calls == [[1], [2, 3, 13]]


def test_coalescer_bounds_batches_by_weight_and_lingers_for_arrivals():
    calls: list[list[int]] = []
    release = threading.Event()

    def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(timeout=60)
        return items

    # weights: an item weighs its value; a batch holds at most 4, an item heavier than that goes alone
    gather = Coalescer(run, 4, weight=lambda i: i)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(gather, 1)
        while not calls:
            threading.Event().wait(0.01)
        rest = [pool.submit(gather, i) for i in (2, 1, 3, 9)]
        while len(gather._queue) < 4:
            threading.Event().wait(0.01)
        release.set()
        assert [f.result() for f in [first, *rest]] == [1, 2, 1, 3, 9]
    assert calls == [[1], [2, 1], [3], [9]]

    # lingering: requests arriving one after another join the first caller's batch
    calls.clear()
    release.set()
    lingering = Coalescer(run, 3, linger=30.0)  # returns at once when full, so the long linger costs nothing
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for i in (1, 2, 3):
            futures.append(pool.submit(lingering, i))
            while len(lingering._queue) < i and not calls:  # the third arrival fills the batch: it runs
                threading.Event().wait(0.01)
        assert [f.result(timeout=60) for f in futures] == [1, 2, 3]
    assert calls == [[1, 2, 3]]


def test_reward_model_arguments_are_declared_and_validated():
    import inspect

    from inferencekit.config import RunConfig
    from inferencekit.runner import _check_reward_model

    # the settings a user may give are the loader's keyword settings, minus those the run supplies
    loader = set(inspect.signature(load_reward_model).parameters) - {"name_or_path", "kwargs", "format"}
    assert set(RewardModelSettings.USER_KEYS) == loader - {"step_separator", "generator"}
    judge = FORMATS["llm_judge"]
    settings, options = judge.split_arguments({"max_tokens_per_batch": 64, "system_prompt": "be strict"})
    assert settings == {"max_tokens_per_batch": 64} and options == {"system_prompt": "be strict"}
    config = RunConfig(reward_model="llm_judge", reward_model_args={"colour": "blue"})
    with pytest.raises(UserError, match=r"unknown option\(s\) colour .*accepted: template, system_prompt "
                                         r"\(format options\), format, trust_remote_code, .*max_length \(settings\)"):
        _check_reward_model(config)
    config.reward_model_args = {"max_tokens_per_batch": 0}
    with pytest.raises(UserError, match=r"^invalid reward model argument: max_tokens_per_batch: .*(got 0)"):
        _check_reward_model(config)
    config.reward_model_args = {"max_tokens_per_batch": 64, "system_prompt": "be strict"}
    assert _check_reward_model(config) == "llm_judge"
    rm = load_reward_model("llm_judge", generator=FakeGenerator([("Yes", 0.0)]), **config.reward_model_args)
    assert rm.settings.max_tokens_per_batch == 64 and rm.system_prompt == "be strict"
