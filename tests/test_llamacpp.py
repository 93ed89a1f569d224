"""The llama.cpp backend on the embedded SmolLM2-135M GGUF: batching, sampling, stops, usage, errors."""

from __future__ import annotations

import asyncio
import contextvars
import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from inferencekit.models.base import GeneratorSpec, SamplingParams, usage_account
from inferencekit.models.llamacpp import LlamaCppGenerator

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
    """Many threads and coroutines at once: each gets what it would alone, and its own usage."""
    alone = [gen.generate([p], SAMPLED)[0] for p in prompts]

    def one(prompt):
        with usage_account() as account:
            return gen.generate([prompt], SAMPLED)[0], account.generator

    with ThreadPoolExecutor(len(prompts)) as pool:
        outcomes = list(pool.map(lambda p: contextvars.copy_context().run(one, p), prompts))
    assert [[c.text for c in cs] for cs, _ in outcomes] == [[c.text for c in cs] for cs in alone]
    for prompt, (completions, usage) in zip(prompts, outcomes, strict=True):
        assert usage.calls == 1 and usage.prompt_tokens == 3 * gen.count_tokens(prompt)
        assert usage.completion_tokens == sum(c.tokens for c in completions)

    async def together():
        return await asyncio.gather(*(gen.agenerate(p, SAMPLED) for p in prompts))

    gen.max_live = 0
    assert [[c.text for c in cs] for cs in asyncio.run(together())] == [[c.text for c in cs] for cs in alone]
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


def test_stream_yields_pieces_that_continue_the_text(gen):
    from inferencekit.models.base import stream

    prompt = gen.chat_prompt([{"role": "user", "content": "Write a short story about a cat."}])
    pieces = list(stream(gen, prompt, SamplingParams(max_new_tokens=24), chunk_tokens=8))
    full = gen.generate([prompt], SamplingParams(max_new_tokens=24))[0][0].text
    assert len(pieces) >= 2 and all(pieces)
    assert full.startswith(pieces[0])  # the first chunk is the first 8 greedy tokens
    assert gen.count_tokens("".join(pieces)) <= 24 + 2
