"""The llama.cpp backend on the embedded SmolLM2-135M GGUF: batching, sampling, stops, streaming, settings, errors."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inferencekit.models import load_generator, resolve_model
from inferencekit.models.base import GeneratorSpec, SamplingParams, UsageAccount, stream
from inferencekit.models.llamacpp import LlamaCppGenerator
from inferencekit.models.llamacpp.sampler import next_token, sample

QUESTIONS = ["What is 2+3?", "Name a color.", "Write a haiku about the sea in winter, please."]
GREEDY = SamplingParams(max_new_tokens=32)
SAMPLED = SamplingParams(n=3, temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=24, seed=7)


def make(path, **kw) -> LlamaCppGenerator:
    return LlamaCppGenerator(GeneratorSpec(name="smollm2", path=str(path), backend="llamacpp", n_ctx=1024, **kw))


@pytest.fixture(scope="module")
def gen(embedded_gguf):
    g = make(embedded_gguf)
    yield g
    g.close()


@pytest.fixture(scope="module")
def prompts(gen) -> list[str]:
    return [gen.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


def texts(results) -> list[list[str]]:
    return [[c.text for c in cs] for cs in results]


def test_greedy_same_alone_in_batch_and_across_calls(gen, prompts, embedded_gguf):
    batched = gen.generate(prompts, GREEDY)  # the short answer ends first: the others move down
    computed = gen.usage.computed_prompt_tokens
    again = gen.generate(prompts, GREEDY)  # reuses the cached prompts
    assert gen.usage.computed_prompt_tokens - computed == 2 * len(prompts)  # the last 2 tokens each
    solo = make(embedded_gguf)
    alone = [solo.generate([p], GREEDY)[0] for p in prompts]
    assert texts(batched) == texts(again) == texts(alone)
    assert all(c.text for cs in batched for c in cs)


def test_greedy_matches_llama_cpp_create_completion(gen, prompts, embedded_gguf):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(embedded_gguf), n_ctx=512, verbose=False)
    reference = llm.create_completion(prompts[1], temperature=0, max_tokens=GREEDY.max_new_tokens)
    llm.close()
    assert gen.generate([prompts[1]], GREEDY)[0][0].text == reference["choices"][0]["text"]


def test_waves_give_the_same_results(prompts, embedded_gguf):
    params = [SAMPLED, GREEDY.replace(n=2), SAMPLED.replace(seed=3)]
    wide = make(embedded_gguf).generate(prompts, params)
    narrow = make(embedded_gguf, max_batch_sequences=2).generate(prompts, params)  # 3 samples > 2 sequences
    assert texts(wide) == texts(narrow)


def test_seeded_samples_do_not_depend_on_the_batch(gen, prompts):
    batched = gen.generate(prompts, SAMPLED)
    alone = gen.generate([prompts[2]], SAMPLED)
    assert texts(batched)[2] == texts(alone)[0]
    assert len(set(texts(batched)[0])) > 1, "temperature-1 samples should differ"
    other_seed = gen.generate([prompts[2]], SAMPLED.replace(seed=8))
    assert texts(other_seed)[0] != texts(alone)[0]


def test_concurrent_callers_share_the_decode_loop(gen, prompts):
    """Many threads at once: each gets what it would alone, and its own usage."""
    alone = [gen.generate([p], SAMPLED)[0] for p in prompts]

    start = threading.Barrier(len(prompts))

    def one(prompt):
        account = UsageAccount()
        start.wait()
        return gen.bind(account).generate([prompt], SAMPLED)[0], account.generator

    gen.max_live = 0
    with ThreadPoolExecutor(len(prompts)) as pool:
        outcomes = list(pool.map(one, prompts))
    assert [[c.text for c in cs] for cs, _ in outcomes] == [[c.text for c in cs] for cs in alone]
    for prompt, (completions, usage) in zip(prompts, outcomes, strict=True):
        assert usage.calls == 1 and usage.prompt_tokens == 3 * gen.count_tokens(prompt)
        assert usage.completion_tokens == sum(c.tokens for c in completions)
    assert gen.max_live > SAMPLED.n  # several requests decoded in the same steps


def test_greedy_n_copies_and_usage(gen, prompts):
    before = gen.usage.computed_prompt_tokens, gen.usage.prompt_tokens, gen.usage.calls
    gen._free_context()  # start cold, so the only saving is sharing the prompt between samples
    (result,) = gen.generate([prompts[0]], GREEDY.replace(n=3))
    assert len(result) == 3 and len({c.text for c in result}) == 1
    computed = gen.usage.computed_prompt_tokens - before[0]
    sent = gen.usage.prompt_tokens - before[1]
    assert gen.usage.calls == before[2] + 1
    assert sent == 3 * gen.count_tokens(prompts[0])
    assert computed == sent // 3 < sent
    assert gen.usage.completion_tokens >= sum(c.tokens for c in result) > 0


def test_cached_prompt_is_reused_exactly(gen, prompts, embedded_gguf):
    first = gen.generate([prompts[2]], GREEDY)[0][0]
    longer = prompts[2] + first.text
    computed = gen.usage.computed_prompt_tokens
    continued = gen.generate([longer], GREEDY)
    assert gen.usage.computed_prompt_tokens - computed <= first.tokens + 2
    assert texts(continued) == texts(make(embedded_gguf).generate([longer], GREEDY))


def test_reusing_generated_tokens(prompts, embedded_gguf):
    g = make(embedded_gguf, extra={"reuse_generated_kv": True})
    first = g.generate([prompts[2]], GREEDY)[0][0]
    longer = prompts[2] + first.text
    computed = g.usage.computed_prompt_tokens
    continued = g.generate([longer], GREEDY.replace(max_new_tokens=8))
    assert g.usage.computed_prompt_tokens - computed <= 4
    assert continued[0][0].tokens > 0
    g.close()


def test_certainty_of_generated_text_is_read_from_its_draws_with_reuse_generated_kv(prompts, embedded_gguf):
    """With reuse_generated_kv, certainty_text of a just-generated text (a sample, and a two-step path grown from
    a step's text) computes no tokens. The values are the draws' own: a recomputation as a prompt runs other
    kernels, which on this Q4_1 model moves a token's value by up to a few percent (the response's mean less)."""
    g = make(embedded_gguf, extra={"reuse_generated_kv": True})
    sampled = SamplingParams(n=3, temperature=0.8, max_new_tokens=24, seed=5)
    texts_ = [c.text for c in g.generate([prompts[2]], sampled)[0]]
    step = g.generate([prompts[2]], GREEDY.replace(max_new_tokens=6))[0][0].text
    second = g.generate([prompts[2] + step], GREEDY.replace(max_new_tokens=6))[0][0].text
    responses = [*texts_, step + second]
    computed = g.usage.computed_prompt_tokens
    drawn = g.certainty_text([prompts[2]] * 4, responses)
    assert g.usage.computed_prompt_tokens == computed  # all four read from the draws
    recomputed = make(embedded_gguf).certainty_text([prompts[2]] * 4, responses)
    for response, a, b in zip(responses, drawn, recomputed, strict=True):
        assert len(a) == len(b) == g.count_tokens(response) > 0
        assert a[0] == pytest.approx(b[0], rel=1e-6)  # the first token's distribution is the prompt's, both ways
        assert a == pytest.approx(b, rel=5e-2)
        assert sum(a) / len(a) == pytest.approx(sum(b) / len(b), rel=1e-2)
    g.close()


def test_a_step_read_back_otherwise_tokenised_is_still_read_from_its_draws(embedded_gguf):
    """Tree search's steps end at a separator: the model draws "\\n", "\\n" where the text, read back, is one "\\n\\n"
    token. The draws are found by their text, and the values are theirs: one per drawn token."""
    g = make(embedded_gguf, extra={"reuse_generated_kv": True})
    prompt = g.chat_prompt([{"role": "user", "content": "What is 23 plus 45? Think step by step."}])
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=64, stop=("\n\n",), seed=1)
    steps = [c.text + ("\n\n" if c.stop_reason else "") for c in g.generate([prompt], params)[0]]
    nxt = g.generate([prompt + steps[0]], params.replace(n=1))[0][0]
    responses = [*steps, steps[0] + nxt.text + ("\n\n" if nxt.stop_reason else "")]
    drawn = [c.tokens for c in g.generate([prompt], params)[0]]  # the same seed draws the same tokens again
    computed = g.usage.computed_prompt_tokens
    values = g.certainty_text([prompt] * len(responses), responses)
    assert g.usage.computed_prompt_tokens == computed
    assert [len(v) for v in values[:4]] == drawn
    assert any(n != g.count_tokens(r) for n, r in zip(drawn, steps, strict=True))  # tokenised otherwise
    assert len(values[4]) == drawn[0] + nxt.tokens
    g.close()


def test_drawn_certainty_by_text():
    from inferencekit.models.llamacpp.kv_cache import DrawnCertainty

    vocab = {1: b"a", 2: b"b", 3: b"\n", 4: b"\n\n", 5: b"c"}
    drawn = DrawnCertainty(lambda tokens: b"".join(vocab[t] for t in tokens))
    drawn.remember([1], [2, 3, 3], [0.1, 0.2, 0.3])  # "a" then "b", "\n", "\n" drawn
    drawn.remember([1, 2, 4], [5], [0.4])  # the next step, from the text read back
    assert drawn.lookup([1, 2, 4], 1).tolist() == [0.1, 0.2, 0.3]  # three draws spell the two tokens read
    assert drawn.lookup([1, 2, 4, 5], 1).tolist() == [0.1, 0.2, 0.3, 0.4]  # a path through both steps
    assert drawn.lookup([1, 2, 4], 2).tolist() == [0.2, 0.3]  # a prompt reaching into the draws, at a boundary
    assert drawn.lookup([1, 2, 3], 1) is None  # "ab\n" was never drawn whole
    assert drawn.lookup([1, 2, 3, 3, 5], 4).tolist() == [0.4]  # "ab\n\n" given, "c" read from its draw
    drawn.remember([5], [2, 4], [0.5, 0.6])  # "c" then "b", "\n\n"
    assert drawn.lookup([5, 2, 3, 3], 3) is None  # "cb\n|\n": no drawn token starts there


def test_stop_strings(gen, prompts):
    full = gen.generate([prompts[2]], GREEDY)[0][0].text
    words = full.split()
    assert len(words) > 3
    stop = words[2]
    cut = gen.generate([prompts[2]], GREEDY.replace(stop=("no such stop", stop)))[0][0]
    assert cut.text == full[: full.index(stop)]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    kept = gen.generate([prompts[2]], GREEDY.replace(stop=(stop,), include_stop=True))[0][0]
    assert kept.text == full[: full.index(stop) + len(stop)]
    assert kept.tokens == cut.tokens < GREEDY.max_new_tokens


def test_length_and_logprobs(gen, prompts):
    (c,) = gen.generate([prompts[2]], SamplingParams(max_new_tokens=6, logprobs=True))[0]
    assert (c.finish_reason, c.tokens, c.stop_reason) == ("length", 6, None)
    assert len(c.logprobs) == 6 and all(lp <= 0 for lp in c.logprobs)
    s = gen.generate([prompts[0]], SAMPLED.replace(logprobs=True))[0]
    assert all(len(x.logprobs) == x.tokens and max(x.logprobs) <= 0 for x in s)


def test_top_logprobs(gen, prompts):
    (c,) = gen.generate([prompts[2]], SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=5))[0]
    assert len(c.top_logprobs) == 4 and all(len(top) == 5 for top in c.top_logprobs)
    for top, chosen in zip(c.top_logprobs, c.logprobs, strict=True):
        values = [lp for _, lp in top]
        assert values == sorted(values, reverse=True) and sum(math.exp(v) for v in values) <= 1 + 1e-9
        assert values[0] == pytest.approx(chosen, abs=1e-9)  # greedy takes the likeliest token
    assert "".join(top[0][0] for top in c.top_logprobs) == c.text
    # a path that took the second likeliest first token goes on from it, as token_beam asks
    other = c.top_logprobs[0][1][0]
    (after,) = gen.generate([prompts[2] + other], SamplingParams(max_new_tokens=1, top_logprobs=2))[0]
    assert after.top_logprobs and len(after.top_logprobs[0]) == 2


def test_multibyte_text_split_across_tokens(gen):
    text = "naïve café 🙂 日本語"
    pieces = [gen._piece(t) for t in gen._tokenize(text, add_bos=False)]
    assert b"".join(pieces).decode("utf-8") == text
    bad = 0
    for piece in pieces:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    assert bad, "expected some character split across tokens"


def test_chat_template_and_count_tokens(gen):
    text = gen.chat_prompt([{"role": "user", "content": "Hello there"}])
    assert "Hello there" in text and text.endswith("assistant\n")
    assert not gen.chat_prompt([{"role": "user", "content": "x"}], add_generation_prompt=False).endswith("assistant\n")
    assert gen.count_tokens("<|im_start|>user") == 2
    assert gen.generate([], GREEDY) == []


def test_bad_paths(tmp_path, embedded_gguf):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        make(missing)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="fake.gguf"):
        make(fake)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(embedded_gguf, folder / "m.gguf")
    g = make(folder)  # a folder holding one .gguf
    assert g.count_tokens("hello") > 0
    g.close()


def test_score_text_reads_the_log_probs_of_given_text(gen, prompts):
    (out,) = gen.generate(prompts[:1], SamplingParams(max_new_tokens=10, logprobs=True))[0][:1]
    calls = gen.usage.calls
    ((scored,),) = gen.score_text(prompts[:1], [[out.text]])
    assert gen.usage.calls == calls + 1
    # The same tokens (less the EOS that may end a completion), read in one pass instead of one by one:
    # llama.cpp's kernels for a run of tokens differ slightly from single-token decoding.
    assert len(scored) == gen.count_tokens(out.text) and len(scored) <= out.tokens
    assert all(x <= 0 for x in scored)
    assert scored == pytest.approx(out.logprobs[: len(scored)], abs=0.25)
    assert scored[0] == pytest.approx(out.logprobs[0], abs=1e-6)  # the first token comes from the same logits
    # Scoring leaves generation untouched.
    assert gen.generate(prompts[:1], SamplingParams(max_new_tokens=10))[0][0].text == out.text


def test_score_text_reuses_scored_prefixes_to_the_bit(gen, prompts, embedded_gguf):
    pieces = ["Step one: 2 + 2 = 4.", "\n\n", "So the answer is \\boxed{4}."]
    before = gen.usage.copy()
    (first,) = gen.score_text(prompts[1:2], [pieces])
    work = gen.usage.since(before)
    assert [len(x) for x in first] == [gen.count_tokens(p) for p in pieces]
    head = gen.count_tokens(prompts[1])
    assert work.prompt_tokens - sum(map(len, first)) in (head, head + 1)  # + BOS, where the model adds one
    # a tree search's child: only its new steps are computed (and one boundary token), alone or among others
    child = pieces + ["\n\n", "Done."]
    before = gen.usage.copy()
    (alone,) = gen.score_text(prompts[1:2], [child])
    new = gen.count_tokens("\n\n") + gen.count_tokens("Done.")
    assert gen.usage.since(before).computed_prompt_tokens == new + 1  # + the last token: its logits read the first new
    scored = gen.score_text([prompts[0], prompts[1], prompts[1]], [pieces[:1], child, pieces[:1] + ["\n\n", "No."]])
    assert scored[1] == alone and alone[:3] == first and scored[2][:2] == first[:2]
    # the same numbers as a fresh generator computing everything
    fresh = make(embedded_gguf)
    try:
        assert fresh.score_text(prompts[1:2], [child]) == [alone] and len(alone[3] + alone[4]) == new
    finally:
        fresh.close()


def streamed(gen, prompt: str, params: SamplingParams) -> list[str]:
    """`stream`'s pieces, checked to join to `generate`'s text and never to show a possible stop string's start."""
    pieces = list(stream(gen, prompt, params))
    assert "".join(pieces) == gen.generate([prompt], params)[0][0].text
    shown = ""
    for piece in pieces[:-1]:
        shown += piece
        assert not any(shown.endswith(s[:k]) for s in params.stop for k in range(1, len(s))), (shown, params.stop)
    return pieces


def test_stream_holds_back_a_character_split_across_tokens(gen):
    prompt = gen.chat_prompt([{"role": "user", "content": "Write 日本語 and 🙂 again."}])
    account = UsageAccount()
    pieces = streamed(gen.bind(account), prompt, SamplingParams(max_new_tokens=31))
    text = "".join(pieces).rstrip("\ufffd")  # 31 tokens may end inside a character: generate's text shows that too
    tokens = gen._tokenize(text, add_bos=False)
    assert len(pieces) > 3 and any(len(ch.encode()) > 1 for ch in text)
    assert any(len(gen._piece(t).decode("utf-8", "ignore")) < len(gen._piece(t)) for t in tokens), "no split character"
    assert not any("\ufffd" in piece for piece in pieces[:-1])  # each character shown once it is whole
    assert account.generator.calls == 2 and account.generator.completion_tokens == 2 * 31  # the stream and generate


def test_stream_holds_back_a_possible_stop_string(gen):
    prompt = gen.chat_prompt([{"role": "user", "content": "Write a short story about a cat."}])
    words = gen.generate([prompt], SamplingParams(max_new_tokens=24))[0][0].text.split()
    assert len(words) > 6
    # a stop string that starts like a word of the text but goes on otherwise: held while it may come, then shown
    never = words[3] + "#"
    pieces = streamed(gen, prompt, SamplingParams(max_new_tokens=24, stop=(never,)))
    assert words[3] in "".join(pieces) and not any(p.endswith(words[3]) for p in pieces[:-1])
    # a stop string split across tokens ends the stream where generate ends, its start never shown
    both = f"{words[4]} {words[5]}"
    pieces = streamed(gen, prompt, SamplingParams(max_new_tokens=24, stop=("no such stop", both)))
    assert words[4] not in "".join(pieces).split()[-1:]


def test_kv_cache_mib_from_the_command_line_bounds_the_cached_prompts(prompts):
    from inferencekit.cli import build_parser

    def computed_again(model_args: list[str]) -> int:
        """Prompt tokens computed for prompts[0] after three prompts ran (it ran first)."""
        flags = [x for arg in ["n_ctx=1024", "n_threads=1", *model_args] for x in ("--model-arg", arg)]
        args = build_parser().parse_args(["run", *flags])
        g = load_generator(resolve_model("smollm2-135m", model_args=dict(args.model_arg)))
        try:
            g.generate(prompts, GREEDY.replace(max_new_tokens=2))
            before = g.usage.computed_prompt_tokens
            g.generate(prompts[:1], GREEDY.replace(max_new_tokens=2))
            return g.usage.computed_prompt_tokens - before
        finally:
            g.close()

    assert computed_again([]) == 2  # the default 2 GiB keeps all three prompts
    assert computed_again(["kv_cache_mib=1"]) > 2  # room for one stream: the later prompts took it


def test_reuse_generated_kv_from_a_config_file(tmp_path, prompts):
    from inferencekit.config import resolve_config
    from inferencekit.models import model_defaults

    computed = {}
    for value in ("true", "false"):
        path = tmp_path / f"{value}.yaml"
        path.write_text(f"model_args:\n  reuse_generated_kv: {value}\n  n_ctx: 1024\n  n_threads: 1\n")
        config = resolve_config(config_file=path, preset_defaults=model_defaults)
        g = load_generator(resolve_model(config.model, config.backend, config.model_args))
        try:
            first = g.generate(prompts[2:], GREEDY)[0][0]
            before = g.usage.computed_prompt_tokens
            g.generate([prompts[2] + first.text], GREEDY.replace(max_new_tokens=2))
            computed[value] = g.usage.computed_prompt_tokens - before
        finally:
            g.close()
    assert computed["true"] <= 4 < first.tokens <= computed["false"]


@pytest.mark.parametrize(("where", "value", "expected"), [
    ("cli", "kv_cache_mib=0", "kv_cache_mib: Input should be greater than or equal to 1 (got 0)"),
    ("cli", "reuse_generated_kv=maybe", "reuse_generated_kv: Input should be a valid boolean"),
    ("file", "kv_cache_mib: lots", "kv_cache_mib: Input should be a valid integer"),
])
def test_bad_llama_cpp_setting_is_one_clear_error(where, value, expected, tmp_path):
    if where == "cli":
        flags = ["--model-arg", value]
    else:
        (tmp_path / "c.yaml").write_text(f"model_args:\n  {value}\n")
        flags = ["--config", str(tmp_path / "c.yaml")]
    result = subprocess.run([sys.executable, "-m", "inferencekit.cli", "run", *flags, "--work-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert not list(tmp_path.glob("*/*"))  # refused before anything ran


CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 9: 27.88}  # chi-square quantiles at p = 0.999, by degrees of freedom


def expected_distribution(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """The textbook definitions: softmax at a temperature, the k likeliest, then the fewest whose mass reaches top_p."""
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[: top_k or len(probs)]
    kept, mass, total = [], 0.0, probs[order].sum()
    for i in order:
        kept.append(i)
        mass += probs[i] / total
        if mass >= top_p:
            break
    out = np.zeros_like(probs)
    out[kept] = probs[kept] / probs[kept].sum()
    return out


def draw_counts(logits: np.ndarray, draws: int, seed: int = 123, **settings) -> np.ndarray:
    params, rng = SamplingParams(temperature=settings.pop("temperature", 1.0), **settings), np.random.default_rng(seed)
    return np.bincount([sample(logits, params, rng) for _ in range(draws)], minlength=logits.size)


def assert_fits(counts: np.ndarray, probs: np.ndarray, bins: int | None = None) -> None:
    """Never a token outside the support; frequencies pass a chi-square test at p = 0.001 (the seed is fixed)."""
    assert not counts[probs == 0].any()
    counts, probs = counts[probs > 0], probs[probs > 0]
    if bins:
        counts, probs = (np.array([x.sum() for x in np.array_split(a, bins)]) for a in (counts, probs))
    want = probs * counts.sum()
    assert ((counts - want) ** 2 / want).sum() < CHI2_999[len(counts) - 1], (counts, want.round(1))


@pytest.mark.parametrize("settings", [
    {}, {"temperature": 0.5}, {"temperature": 2.0}, {"top_k": 2}, {"top_p": 0.7},
    {"temperature": 2.0, "top_k": 3, "top_p": 0.6}, {"top_k": 3, "top_p": 0.99},
])
def test_sampler_distribution(settings):
    logits = np.log([0.5, 0.3, 0.15, 0.05]) + 3.0  # a shift changes nothing
    assert_fits(draw_counts(logits, 8000, **settings), expected_distribution(logits, **settings))


def test_sampler_distribution_over_a_large_vocabulary():
    # the likeliest 256 tokens hold top_p of the mass: the sampler sorts only those
    peaked = np.full(1000, -30.0)
    peaked[[7, 500, 999]] = np.log([0.6, 0.3, 0.1])
    assert_fits(draw_counts(peaked, 6000, top_p=0.85), expected_distribution(peaked, top_p=0.85))
    # they do not: the whole vocabulary is sorted (ties broken by the lower id), 269 equal tokens of 300 kept
    flat = np.where(np.arange(1000) < 300, 0.0, -60.0)
    probs = expected_distribution(flat, top_p=0.895)
    assert (probs > 0).sum() == 269 and probs[:269].min() > 0
    assert_fits(draw_counts(flat, 6000, top_p=0.895), probs, bins=10)


def test_sampler_is_seeded_and_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=500) * 3
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9)
    draw = lambda seed: [sample(logits, params, rng) for rng in [np.random.default_rng(seed)] for _ in range(200)]  # noqa: E731
    assert draw(1) == draw(1) != draw(2)
    assert next_token(logits, params, None) == int(np.argmax(logits))


CLOSE_WHILE_TOKENIZING = r'''
import sys, threading, time
from inferencekit.models.llamacpp.gguf import GGUFModel
text = "Natalia sold clips to 48 of her friends in April. " * 40
outcomes = set()
for trial in range(20):
    model = GGUFModel(sys.argv[1])
    def tokenize_until_closed():
        try:
            while True:
                model.tokenize(text, True)
        except Exception as exc:
            outcomes.add(type(exc).__name__)
    threads = [threading.Thread(target=tokenize_until_closed, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    model.close()
    for t in threads:
        t.join(10)
print(sorted(outcomes))
'''


def test_closing_the_model_while_threads_tokenize_does_not_crash(embedded_gguf):
    # a stopping run closes the model while abandoned problems may still be tokenizing (it segfaulted in the
    # CLI's test of a run whose prompts do not fit); in a subprocess, so a crash fails this test alone
    result = subprocess.run([sys.executable, "-c", CLOSE_WHILE_TOKENIZING, str(embedded_gguf)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['Cancelled']"
