"""The vllm backend on the embedded SmolLM2-135M (its dequantised copy), one engine for the whole session.

vLLM starts engine processes and takes a minute or two to start on a CPU, so every test here shares one
engine, built the way users build it (`resolve_model` + `load_generator`) and closed at the end.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vllm backend needs vLLM (pip install 'inferencekit[vllm]', see the README)")

from inferencekit import session as session_module  # noqa: E402
from inferencekit.cli import main  # noqa: E402
from inferencekit.errors import UserError  # noqa: E402
from inferencekit.models import load_generator, resolve_model  # noqa: E402
from inferencekit.models.base import GeneratorSpec, SamplingParams, UsageAccount  # noqa: E402
from inferencekit.models.hf import HFGenerator  # noqa: E402

QUESTIONS = ["What is 2+3?", "Name a color.", "Write a haiku about the sea in winter, please."]
GREEDY = SamplingParams(max_new_tokens=24)
SAMPLED = SamplingParams(n=3, temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=16, seed=7)
# float32 to compare with transformers; no torch.compile (it would add minutes to the start on a CPU)
MODEL_ARGS = {"dtype": "float32", "n_ctx": 2048, "kv_cache_mib": 256, "engine_args": {"enforce_eager": True}}


@pytest.fixture(scope="session")
def gen(_session_cache: Path):
    with pytest.MonkeyPatch.context() as patch:  # session fixtures start before the per-test environment
        patch.setenv("INFERENCEKIT_CACHE_DIR", str(_session_cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        g = load_generator(resolve_model("smollm2-135m", backend="vllm", model_args=MODEL_ARGS))
    yield g
    g.close()


@pytest.fixture(scope="module")
def prompts(gen) -> list[str]:
    return [gen.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]


def texts(results) -> list[list[str]]:
    return [[c.text for c in cs] for cs in results]


def test_greedy_equals_the_hf_backend_on_the_same_checkpoint(gen, prompts, embedded_gguf):
    hf = HFGenerator(GeneratorSpec(name="smollm2", path=str(embedded_gguf), backend="hf", dtype="float32"))
    ours, theirs = gen.generate(prompts, GREEDY.replace(logprobs=True)), hf.generate(prompts, GREEDY.replace(
        logprobs=True))
    hf.close()
    assert texts(ours) == texts(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert (a[0].tokens, a[0].finish_reason) == (b[0].tokens, b[0].finish_reason)
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=2e-3)


def test_seeded_samples_depend_only_on_prompt_seed_and_index(gen, prompts):
    batched = gen.generate(prompts, SAMPLED)
    alone = gen.generate([prompts[2]], SAMPLED)
    assert texts(batched)[2] == texts(alone)[0]
    assert len(set(texts(batched)[0])) > 1, "temperature-1 samples should differ"
    fewer = gen.generate([prompts[2]], SAMPLED.replace(n=2))  # sample j does not depend on n
    assert texts(fewer)[0] == texts(alone)[0][:2]
    other_seed = gen.generate([prompts[2]], SAMPLED.replace(seed=8))
    assert texts(other_seed)[0] != texts(alone)[0]
    # no overlap between nearby seeds (vLLM's own n > 1 would seed sample i with seed + i)
    assert not set(texts(gen.generate([prompts[2]], SAMPLED.replace(seed=6)))[0]) & set(texts(alone)[0])


def test_greedy_n_copies_and_usage(gen, prompts):
    account = UsageAccount()
    out = gen.bind(account).generate(prompts[:2], GREEDY.replace(n=3))
    assert all(len(set(cs)) == 1 and len(cs) == 3 for cs in texts(out))
    used = account.generator
    assert used.calls == 1
    assert used.prompt_tokens == 3 * sum(len(gen.encode(p)) for p in prompts[:2])
    assert used.completion_tokens == sum(cs[0].tokens for cs in out)  # the copies were decoded once


def test_prefix_cache_hits_are_counted(gen):
    long = gen.chat_prompt([{"role": "user", "content": "Count the waves. " * 60}])
    assert len(gen.encode(long)) > 2 * gen.engine.vllm_config.cache_config.block_size
    gen.generate([long], GREEDY.replace(max_new_tokens=2))
    account = UsageAccount()
    gen.bind(account).generate([long + " More."], GREEDY.replace(max_new_tokens=2))
    used = account.generator
    assert used.computed_prompt_tokens < used.prompt_tokens // 2  # the shared blocks came from the cache


def test_stop_strings_and_finish_reasons(gen, prompts):
    free = gen.generate([prompts[2]], GREEDY.replace(max_new_tokens=40))[0][0]
    word = free.text.split()[1]
    stopped, kept = gen.generate([prompts[2]] * 2, [GREEDY.replace(max_new_tokens=40, stop=(word,)),
                                                    GREEDY.replace(max_new_tokens=40, stop=(word,), include_stop=True)])
    assert stopped[0].text == free.text[: free.text.index(word)] and stopped[0].stop_reason == word
    assert kept[0].text == stopped[0].text + word and kept[0].finish_reason == "stop"
    short = gen.generate([prompts[2]], GREEDY.replace(max_new_tokens=3))[0][0]
    assert (short.finish_reason, short.tokens, short.stop_reason) == ("length", 3, None)
    ended = gen.generate([prompts[0]], GREEDY.replace(max_new_tokens=64))[0][0]
    assert ended.finish_reason == "stop" and ended.stop_reason is None  # EOS


def test_top_logprobs_and_score_text(gen, prompts, monkeypatch):
    out = gen.generate([prompts[1]], GREEDY.replace(max_new_tokens=8, logprobs=True, top_logprobs=3))[0][0]
    assert len(out.top_logprobs) == out.tokens and all(len(t) == 3 for t in out.top_logprobs)
    for lp, top in zip(out.logprobs, out.top_logprobs, strict=True):
        assert top[0][1] == pytest.approx(lp, abs=1e-5)  # greedy: the chosen token is the likeliest
        assert top[0][1] >= top[1][1] >= top[2][1]
    # scoring the generated text gives the log-probabilities generation saw
    assert gen.count_tokens(out.text) == out.tokens
    (pieces,) = gen.score_text([prompts[1]], [[out.text, ""]])
    assert pieces[1] == [] and pieces[0] == pytest.approx(out.logprobs, abs=2e-3)
    assert gen.can_score_text and all(v <= 0 for v in pieces[0])
    # a cap set through engine_args (ours is -1, uncapped, for self-certainty): one clear line, not vLLM's error
    monkeypatch.setattr(gen.engine.model_config, "max_logprobs", 20)
    with pytest.raises(UserError, match="max_logprobs"):
        gen.generate([prompts[1]], GREEDY.replace(top_logprobs=21))
    with pytest.raises(UserError, match="max_logprobs"):
        gen.certainty_text([prompts[1]], [out.text])


def test_self_certainty_equals_the_hf_backends_on_the_same_checkpoint(gen, prompts, embedded_gguf):
    """Kang et al.'s per-token KL(U || p) from vLLM's whole-vocabulary prompt log-probabilities."""
    responses = ["2 + 3 = 5, so the answer is \\boxed{5}.", ""]
    account = UsageAccount()
    ours = gen.bind(account).certainty_text(prompts[:2], responses)
    hf = HFGenerator(GeneratorSpec(name="smollm2", path=str(embedded_gguf), backend="hf", dtype="float32"))
    theirs = hf.certainty_text(prompts[:2], responses)
    hf.close()
    assert ours[1] == [] and len(ours[0]) == gen.count_tokens(responses[0]) > 5
    assert ours[0] == pytest.approx(theirs[0], abs=1e-3)
    assert all(v > 0 for v in ours[0])  # a model is more certain than uniform
    assert gen.can_score_certainty and account.generator.prompt_tokens > 0


def test_seeded_samples_of_many_long_prompts(gen):
    """More prompt tokens than one engine step takes (vLLM 0.32's CPU runner died on a seeded request whose
    prompt was prefilled in chunks): every sample comes back, each as it comes alone."""
    long = [gen.chat_prompt([{"role": "user", "content": f"Problem {i}. " + "Count the apples again. " * 180}])
            for i in range(6)]
    assert sum(map(gen.count_tokens, long)) > gen.engine.vllm_config.scheduler_config.max_num_batched_tokens // 2
    params = SAMPLED.replace(n=2, max_new_tokens=4)
    together = texts(gen.generate(long, params))
    assert together[5] == texts(gen.generate([long[5]], params))[0]
    assert all(len(samples) == 2 for samples in together)


def test_concurrent_threads_share_the_engine(gen, prompts):
    alone = texts(gen.generate(prompts, SAMPLED))

    def one(i: int):
        account = UsageAccount()
        return texts(gen.bind(account).generate([prompts[i]], SAMPLED))[0], account.generator.calls

    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(one, range(3)))
    assert [t for t, _ in threaded] == alone and all(calls == 1 for _, calls in threaded)


def test_provenance_settings(gen):
    settings = gen.engine_settings()
    assert settings["vllm_version"] and settings["enable_prefix_caching"] is True
    assert settings["dtype"] == "float32" and settings["kv_cache_memory_bytes"] == 256 * 2**20
    assert gen.context_length == 2048


def test_bad_engine_argument_is_one_clear_error(_session_cache):
    args = {**MODEL_ARGS, "engine_args": {"tensor_paralel": 2}}
    spec = resolve_model("smollm2-135m", backend="vllm", model_args=args)
    with pytest.raises(UserError, match="tensor_paralel"):
        load_generator(spec)


def _run(work: Path, *args: str) -> Path:
    assert main(["run", "--backend", "vllm", "--dtype", "float32", "--limit", "2", "--max-new-tokens", "32",
                 "--no-progress", "--work-dir", str(work), *args]) == 0
    (path,) = work.glob("*/*+*+*")
    return path


@pytest.mark.parametrize("method", [["--method", "best_of_n", "--n", "3", "--temperature", "0.8",
                                     "--reward-model", "self_certainty", "--vote", "majority,weighted"],
                                    ["--method", "beam_search", "--n", "4", "--beam-width", "2", "--temperature", "0.8",
                                     "--reward-model", "mean_logprob"]])
def test_inferencekit_run_with_the_vllm_backend_then_resume(gen, method, tmp_path, monkeypatch):
    """The CLI's run end to end on the session's engine (one more engine start would cost minutes)."""
    monkeypatch.setattr(gen, "close", lambda: None)  # the run closes its generator: keep the session's
    monkeypatch.setattr(session_module, "load_generator", lambda spec, **_: gen)
    path = _run(tmp_path, *method)
    rows = [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1]
    assert all(c["text"] and c["finish_reason"] in ("stop", "length") for r in rows for c in r["candidates"])
    metrics = json.loads((path / "metrics.json").read_text())["votes"]
    assert metrics["majority"]["n"] == 2
    provenance = json.loads((path / "provenance.json").read_text())
    engine = provenance["invocations"][0]["engine"]
    assert engine["vllm_version"] and engine["enable_prefix_caching"] is True
    calls = gen.usage.calls
    again = _run(tmp_path, *method)  # finished: nothing is generated again
    assert again == path and gen.usage.calls == calls
    assert json.loads((path / "metrics.json").read_text())["votes"]["majority"] == metrics["majority"]
    if "--reward-model" in method:
        assert all(not math.isnan(s) for r in rows for c in r["candidates"] for s in c["step_scores"])
