"""HFGenerator on a tiny random Llama (and once on the embedded GGUF), loaded the way users load models."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from inferencekit.models.base import GeneratorSpec, SamplingParams
from inferencekit.models.hf import HFGenerator, _common_prefix, _RowSampler

PROMPTS = [
    "Hello there, how are you today my friend? Tell me a long story about the sea.",
    "Hi",
    "The quick brown fox jumps over",
]


def make_generator(path, **spec_fields) -> HFGenerator:
    return HFGenerator(GeneratorSpec(name="tiny", path=str(path), backend="hf", **spec_fields))


@pytest.fixture(scope="module")
def gen(tiny_llama_dir) -> HFGenerator:
    return make_generator(tiny_llama_dir)


@pytest.fixture(scope="module")
def small_batch_gen(tiny_llama_dir) -> HFGenerator:
    return make_generator(tiny_llama_dir, max_batch_sequences=2)


def manual_greedy(gen: HFGenerator, prompt: str, steps: int) -> tuple[list[int], list[float]]:
    """Greedy decoding by plain forward passes: the generated ids and their raw log-probabilities."""
    ids, new, logprobs = gen.encode(prompt), [], []
    with torch.no_grad():
        for _ in range(steps):
            logits = gen.model(torch.tensor([ids + new])).logits[0, -1].float()
            new.append(int(logits.argmax()))
            logprobs.append(float(torch.log_softmax(logits, -1)[new[-1]]))
    return new, logprobs


def texts(results) -> list[list[str]]:
    return [[c.text for c in completions] for completions in results]


def test_greedy_is_deterministic_and_batch_invariant(gen, small_batch_gen):
    params = SamplingParams(max_new_tokens=10)
    batch = gen.generate(PROMPTS, params)
    alone = [gen.generate([p], params)[0] for p in PROMPTS]
    assert texts(batch) == texts(alone)
    assert texts(gen.generate(PROMPTS, params)) == texts(batch)
    assert texts(small_batch_gen.generate(PROMPTS, params)) == texts(batch)
    assert len({c[0].text for c in batch}) == 3 and all(c[0].text for c in batch)


def test_greedy_n_copies_one_decode(gen):
    before = gen.usage.completion_tokens
    (completions,) = gen.generate(PROMPTS[2:], SamplingParams(n=3, max_new_tokens=5))
    assert len(completions) == 3 and len({c.text for c in completions}) == 1
    assert completions[0] is not completions[1]
    assert gen.usage.completion_tokens - before == 5


@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (0.9, 50)])
def test_sampling_reproducible_and_batch_invariant(gen, small_batch_gen, top_p, top_k):
    params = SamplingParams(n=3, temperature=1.0, top_p=top_p, top_k=top_k, max_new_tokens=8, seed=7)
    batch = gen.generate(PROMPTS, params)
    assert texts(gen.generate(PROMPTS, params)) == texts(batch)
    assert texts(small_batch_gen.generate(PROMPTS, params)) == texts(batch)
    # alone, and next to prompts that use other sampling settings
    assert texts(gen.generate(PROMPTS[1:2], params)) == texts(batch[1:2])
    mixed = gen.generate(PROMPTS, [SamplingParams(max_new_tokens=8), params, params.replace(seed=8, top_k=3)])
    assert texts(mixed)[1] == texts(batch)[1]
    for completions in batch:
        assert len({c.text for c in completions}) == 3  # samples of one prompt differ
    assert texts(gen.generate(PROMPTS, params.replace(seed=8))) != texts(batch)


def test_sampler_distribution_and_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def frequencies(**settings) -> list[float]:
        sampler = _RowSampler([SamplingParams(temperature=1.0, **settings)], [123], want_logprobs=False)
        counts = torch.zeros(4)
        for _ in range(4000):
            counts += sampler(torch.zeros((1, 1), dtype=torch.long), logits.clone())[0] == 0
        return (counts / 4000).tolist()

    assert frequencies() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    assert frequencies(top_p=0.7) == pytest.approx([0.625, 0.375, 0, 0], abs=0.03)
    assert frequencies(top_k=1) == [1, 0, 0, 0]


def test_stop_strings_cut_only_their_row(gen):
    params = SamplingParams(max_new_tokens=12)
    full = gen.generate(PROMPTS, params)
    text = full[0][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop not in full[2][0].text
    cut = gen.generate(PROMPTS, params.replace(stop=(stop, "never-seen"), logprobs=True))
    first = cut[0][0]
    assert first.text == text[: text.index(stop)]
    assert (first.finish_reason, first.stop_reason) == ("stop", stop)
    assert 0 < first.tokens < 12 and len(first.logprobs) == first.tokens
    assert cut[2][0].text == full[2][0].text and cut[2][0].finish_reason == "length"
    kept = gen.generate(PROMPTS[:1], params.replace(stop=(stop,), include_stop=True))[0][0]
    assert kept.text == text[: text.index(stop)] + stop and kept.tokens == first.tokens


def test_eos_ends_a_row(tiny_llama_dir, gen, tmp_path):
    ids, _ = manual_greedy(gen, PROMPTS[0], 3)
    folder = tmp_path / "eos"
    shutil.copytree(tiny_llama_dir, folder)
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["eos_token_id"] = [config["eos_token_id"], ids[2]]  # make the third generated token an EOS
    config_file.write_text(json.dumps(config))
    ended = make_generator(folder).generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, logprobs=True))[0][0]
    assert ended.text == gen.tokenizer.decode(ids[:2])
    assert (ended.finish_reason, ended.stop_reason, ended.tokens) == ("stop", None, 3)
    assert len(ended.logprobs) == 3


def test_length_and_per_prompt_params(gen):
    results = gen.generate(PROMPTS[:2], [SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=5)])
    assert [c[0].tokens for c in results] == [3, 5]
    assert all(c[0].finish_reason == "length" and c[0].stop_reason is None for c in results)
    assert results[0][0].logprobs is None


def test_rows_with_other_token_caps_share_a_batch(gen, monkeypatch):
    sampled = SamplingParams(n=2, temperature=1.0, seed=5, logprobs=True)
    params = [sampled.replace(max_new_tokens=3), sampled.replace(max_new_tokens=9), SamplingParams(max_new_tokens=5)]
    alone = [gen.generate([prompt], p)[0] for prompt, p in zip(PROMPTS, params, strict=True)]
    batches, widths = [], []
    original, forward = gen._run_batch, gen.model.forward
    monkeypatch.setattr(gen, "_run_batch", lambda rows, *a: batches.append(len(rows)) or original(rows, *a))
    monkeypatch.setattr(gen.model, "forward", lambda **kw: widths.append(len(kw["input_ids"])) or forward(**kw))
    together = gen.generate(PROMPTS, params)
    assert batches == [5]  # one batch, as tree search's per-node caps need
    # each row leaves the batch when it ends: 5 rows for 3 steps, 3 rows until the greedy one's cap, then 2
    assert widths[-9:] == [5, 5, 5, 3, 3, 2, 2, 2, 2]
    assert texts(together) == texts(alone)
    for got, want in zip(together, alone, strict=True):  # the same tokens; rounding may differ in the last bits
        assert [c.logprobs for c in got] == [pytest.approx(c.logprobs, abs=1e-4) for c in want]
    assert [[c.tokens for c in cs] for cs in together] == [[3, 3], [9, 9], [5]]
    assert all(c.finish_reason == "length" and len(c.logprobs) == c.tokens for cs in together[:2] for c in cs)


def test_samples_share_their_prompt_computation(tiny_llama_dir):
    shared, plain = make_generator(tiny_llama_dir), make_generator(tiny_llama_dir)
    plain._share_prompts = False
    params = [SamplingParams(n=3, temperature=1.0, seed=5, max_new_tokens=6, logprobs=True),
              SamplingParams(n=2, temperature=0.7, seed=6, max_new_tokens=4)]
    got, want = shared.generate(PROMPTS[:2], params), plain.generate(PROMPTS[:2], params)
    assert texts(got) == texts(want)
    assert [c.logprobs for c in got[0]] == [pytest.approx(c.logprobs, abs=1e-4) for c in want[0]]
    lengths = [len(shared.encode(p)) for p in PROMPTS[:2]]
    assert plain.usage.computed_prompt_tokens == 3 * lengths[0] + 2 * lengths[1]
    assert shared.usage.computed_prompt_tokens == sum(n - 1 for n in lengths) + 5  # once each, + every row's last
    assert shared.usage.prompt_tokens == plain.usage.prompt_tokens


def test_a_common_prefix_is_computed_once_and_kept_between_batches(tiny_llama_dir):
    shared, plain = make_generator(tiny_llama_dir), make_generator(tiny_llama_dir)
    plain._share_prompts = False
    shots = "Worked example: two plus two is four, so the answer is four. " * 3
    questions = ["What is one plus one?", "Name a colour of the sky on a clear day, please.", "Why?"]
    params = [SamplingParams(max_new_tokens=6, logprobs=True), SamplingParams(n=2, temperature=1.0, seed=3,
              max_new_tokens=5), SamplingParams(max_new_tokens=4)]
    prompts = [shots + q for q in questions]
    got, want = shared.generate(prompts, params), plain.generate(prompts, params)
    assert texts(got) == texts(want)
    assert got[0][0].logprobs == pytest.approx(want[0][0].logprobs, abs=1e-4)
    encoded = [shared.encode(p) for p in prompts]
    common = next(k for k in range(len(encoded[2])) if len({tuple(e[:k + 1]) for e in encoded}) > 1)
    assert common >= 16
    rows = [1, 2, 1]
    assert plain.usage.computed_prompt_tokens == sum(len(e) * r for e, r in zip(encoded, rows, strict=True))
    assert shared.usage.computed_prompt_tokens == common + sum(len(e) - common - 1 + r
                                                               for e, r in zip(encoded, rows, strict=True))
    # the next batch with the same few-shot block computes only what follows it
    before = shared.usage.computed_prompt_tokens
    later = [shots + "What is two plus three?", shots + "And four plus four?"]
    again = shared.generate(later, SamplingParams(max_new_tokens=5))
    assert texts(again) == texts(plain.generate(later, SamplingParams(max_new_tokens=5)))
    later_ids = [shared.encode(p) for p in later]
    assert shared.usage.computed_prompt_tokens - before == sum(len(e) - common for e in later_ids)
    # a batch sharing only the start of the kept prefix reuses that start (the kept cache is cropped)
    half = shots[: len(shots) // 2]
    other = [half + "Then: what is five plus one?", half + "Then: name a tree."]
    stored, before = list(shared._prefix[0]), shared.usage.computed_prompt_tokens
    got = shared.generate(other, SamplingParams(max_new_tokens=5))
    assert texts(got) == texts(plain.generate(other, SamplingParams(max_new_tokens=5)))
    ids = [shared.encode(p) for p in other]
    new_common = min(_common_prefix(ids), min(map(len, ids)) - 1)
    kept = _common_prefix([stored, ids[0][:new_common]])
    assert 16 <= kept < len(stored) and shared._share_prompts
    assert shared.usage.computed_prompt_tokens - before == new_common - kept + sum(len(e) - new_common for e in ids)


def test_decoding_into_a_preallocated_cache_changes_no_result(tiny_llama_dir, monkeypatch):
    from transformers import StaticCache

    static, growing = make_generator(tiny_llama_dir), make_generator(tiny_llama_dir)
    growing._preallocate = False
    caches = []
    original = static._decode_rows
    monkeypatch.setattr(static, "_decode_rows", lambda ids, mask, cache, *a: caches.append(cache)
                        or original(ids, mask, cache, *a))
    params = [SamplingParams(max_new_tokens=7, logprobs=True), SamplingParams(n=3, temperature=0.9, seed=4,
              max_new_tokens=5, logprobs=True), SamplingParams(max_new_tokens=9, stop=("e",))]
    got, want = static.generate(PROMPTS, params), growing.generate(PROMPTS, params)
    assert texts(got) == texts(want)
    for g, w in zip(got, want, strict=True):
        assert [c.logprobs for c in g] == [pytest.approx(c.logprobs, abs=1e-4) for c in w]
    assert caches and all(isinstance(c, StaticCache) for c in caches)  # every batch decoded into one


def test_logprobs_are_raw_model_logprobs(gen):
    completion = gen.generate(PROMPTS[2:], SamplingParams(max_new_tokens=6, logprobs=True))[0][0]
    ids, expected = manual_greedy(gen, PROMPTS[2], 6)
    assert completion.text == gen.tokenizer.decode(ids)
    assert completion.tokens == len(completion.logprobs) == 6
    assert completion.logprobs == pytest.approx(expected, abs=1e-4)
    assert all(lp <= 0 for lp in completion.logprobs)


def test_top_logprobs(gen):
    (greedy, sampled) = gen.generate(
        [PROMPTS[2], PROMPTS[0]], [SamplingParams(max_new_tokens=5, top_logprobs=3),
                       SamplingParams(max_new_tokens=5, temperature=1.0, logprobs=True, top_logprobs=1)]
    )
    ids, expected = manual_greedy(gen, PROMPTS[2], 5)
    top = greedy[0].top_logprobs
    assert len(top) == 5 and all(len(t) == 3 for t in top) and greedy[0].logprobs is None
    assert [t[0][1] for t in top] == pytest.approx(expected, abs=1e-4)
    assert [t[0][0] for t in top] == [gen.tokenizer.decode([i]) for i in ids]
    assert all(t[0][1] >= t[1][1] >= t[2][1] for t in top)
    assert all(len(t) == 1 for t in sampled[0].top_logprobs) and len(sampled[0].top_logprobs) == sampled[0].tokens


def test_usage(tiny_llama_dir):
    fresh = make_generator(tiny_llama_dir)
    lengths = [len(fresh.encode(p)) for p in PROMPTS]
    fresh.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=4))
    usage = fresh.usage
    assert (usage.calls, usage.prompt_tokens) == (1, 2 * sum(lengths))  # sent once per sample, as llama.cpp counts
    assert usage.computed_prompt_tokens == sum(lengths) - len(PROMPTS) + 2 * len(PROMPTS)  # computed once per prompt
    assert usage.completion_tokens == 2 * 3 * 4 and usage.seconds > 0
    assert fresh.count_tokens("Hi") == 1


def test_chat_prompt(gen, tiny_llama_dir, caplog):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = gen.chat_prompt(messages)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert "What is 2+2?" in prompt
    assert not gen.chat_prompt(messages, add_generation_prompt=False).endswith("assistant\n")
    override = make_generator(tiny_llama_dir, chat_template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert override.chat_prompt(messages) == "[What is 2+2?]"
    override.tokenizer.chat_template = None
    with caplog.at_level(logging.WARNING):
        assert override.chat_prompt(messages) == "User: What is 2+2?\nAssistant:"
        override.chat_prompt(messages)
    assert sum("no chat template" in r.getMessage() for r in caplog.records) == 1


def test_no_double_bos(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "bos"
    shutil.copytree(tiny_llama_dir, folder)
    AutoTokenizer.from_pretrained(str(folder), add_bos_token=True).save_pretrained(str(folder))
    bos_gen = make_generator(folder)
    bos = bos_gen.tokenizer.bos_token_id
    plain = bos_gen.encode("Hi")
    templated = bos_gen.encode(bos_gen.chat_prompt([{"role": "user", "content": "Hi"}]))
    assert plain[0] == bos and plain[1] != bos
    assert templated[0] == bos and templated[1] != bos


def test_missing_paths_give_one_line_errors(tmp_path, tiny_llama_dir):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model") as info:
        make_generator(missing)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        make_generator(tiny_llama_dir, gguf_file="missing.gguf")
    # one dtype table for the hf backend and reward models, one error: the name and the accepted ones
    from inferencekit.errors import UserError

    with pytest.raises(UserError, match=r"^unknown dtype 'float64'; accepted: auto, bfloat16, float16, float32$"):
        make_generator(tiny_llama_dir, dtype="float64")


def test_embedded_gguf_through_transformers_is_dequantised_once(embedded_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inferencekit.models.dequantised import checkpoint_folder

    monkeypatch.setenv("INFERENCEKIT_CACHE_DIR", str(tmp_path))
    copy = checkpoint_folder(embedded_gguf, "auto")
    smol = make_generator(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    assert (copy / "config.json").is_file()  # the first load saved its dequantised copy
    prompt = smol.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_new_tokens=8, logprobs=True)
    completion = smol.generate([prompt], params)[0][0]
    assert completion.text.strip() and completion.tokens <= 8
    # the same tokens and log-probabilities as transformers' own GGUF load
    tokenizer = AutoTokenizer.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    direct = AutoModelForCausalLM.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    ids = smol.encode(prompt)
    assert ids == tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = direct.generate(torch.tensor([ids]), max_new_tokens=completion.tokens, do_sample=False,
                              output_scores=True, return_dict_in_generate=True)
    assert tokenizer.decode(out.sequences[0, len(ids):]).replace("<|im_end|>", "") == completion.text
    # a second load reads the copy (a changed GGUF would get a new one: the key holds size and mtime)
    (copy / "model.safetensors").rename(copy / "moved.safetensors")
    with pytest.raises(OSError, match=copy.name):
        make_generator(str(embedded_gguf))
