"""The openai backend against a real OpenAI-compatible server: llama.cpp's, on 127.0.0.1, serving the embedded model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import llama_cpp.server  # noqa: F401  # the dev extra installs it: a missing server is a broken install, not a skip
import pytest

from inferencekit.models import load_generator, resolve_model
from inferencekit.models.base import SamplingParams
from llama_servers import SERVER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(embedded_gguf):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--model", str(embedded_gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def served(server, embedded_gguf):
    """The model served under an alias, its chat template from the GGUF named as its tokenizer."""
    args = {"base_url": server, "tokenizer": str(embedded_gguf)}
    return load_generator(resolve_model("smollm2", backend="openai", model_args=args))


@pytest.fixture(scope="module")
def gen(server, embedded_gguf):
    return served(server, embedded_gguf)


def test_samples_greedy_stop_and_logprobs(gen):
    prompt = gen.chat_prompt([{"role": "user", "content": "Count from 1 to 10."}])
    local = load_generator(resolve_model("smollm2-135m", model_args={"n_ctx": 256}))
    try:  # the model's own template, default system prompt included, as in-process
        assert prompt == local.chat_prompt([{"role": "user", "content": "Count from 1 to 10."}])
    finally:
        local.close()
    assert "<|im_start|>user\nCount" in prompt and prompt.endswith("<|im_start|>assistant\n")
    (greedy,) = gen.generate([prompt], SamplingParams(max_new_tokens=12))
    again = gen.generate([prompt], SamplingParams(max_new_tokens=12, n=2))[0]
    assert [c.text for c in again] == [greedy[0].text] * 2
    samples = gen.generate([prompt], SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=1))[0]
    assert len(samples) == 3 and len({c.text for c in samples}) > 1  # the server ignores n: asked again
    (long,) = gen.generate([prompt], SamplingParams(max_new_tokens=6, logprobs=True))[0]
    assert long.finish_reason == "length" and long.tokens == 6 and len(long.logprobs) == 6
    assert all(x <= 0 for x in long.logprobs)
    (top,) = gen.generate([prompt], SamplingParams(max_new_tokens=3, top_logprobs=3))[0]
    assert top.logprobs is None and len(top.top_logprobs) == 3
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in top.top_logprobs)
    assert "".join(t[0][0] for t in top.top_logprobs) == top.text
    full = gen.generate([prompt], SamplingParams(max_new_tokens=40))[0][0].text
    stop = full[12:16]
    cut = gen.generate([prompt], SamplingParams(max_new_tokens=40, stop=(stop,)))[0][0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    assert gen.usage.calls == 7 and gen.usage.completion_tokens > 0
    assert gen.count_tokens("hello world") >= 2


def test_finish_and_stop_reasons_from_the_server(server, embedded_gguf):
    """llama.cpp's server cuts a stop string off and says only "stop": which one ended it is read from its tokens."""
    gen = served(server, embedded_gguf)
    prompt = gen.chat_prompt([{"role": "user", "content": "Count from 1 to 10."}])
    (full,) = gen.generate([prompt], SamplingParams(max_new_tokens=40))[0]
    assert (full.finish_reason, full.stop_reason, full.tokens) == ("length", None, 40)
    words = full.text.split()
    early, late = " ".join(words[4:6]), " ".join(words[10:12])  # each spans tokens
    assert len(words) > 12 and full.text.index(early) < full.text.index(late)
    want = full.text[: full.text.index(early)]
    # the server stops at the earlier of two; a fifth stop string is not sent (the API takes 4): found in the text
    for stop in [(late, early), ("zq1", "zq2", "zq3", "zq4", early)]:
        (cut,) = gen.generate([prompt], SamplingParams(max_new_tokens=40, stop=stop))[0]
        assert (cut.text, cut.finish_reason, cut.stop_reason) == (want, "stop", early), stop
        assert cut.logprobs is None and 0 < cut.tokens <= 40  # logprobs were asked only to read the stop
        assert (cut.tokens < 40) == (len(stop) <= 4)  # the server stopped early only where it was told the stop
    (kept,) = gen.generate([prompt], SamplingParams(max_new_tokens=40, stop=(late, early), include_stop=True))[0]
    assert (kept.text, kept.stop_reason) == (want + early, early)
    short = gen.chat_prompt([{"role": "user", "content": "Name a color."}])
    (ended,) = gen.generate([short], SamplingParams(max_new_tokens=64, stop=("no such stop",)))[0]
    assert (ended.finish_reason, ended.stop_reason) == ("stop", None) and ended.tokens < 64  # the model's EOS
    gen.close()


def test_run_through_the_cli(server, tmp_path, embedded_gguf):
    result = subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", "run", "--backend", "openai", "--model", "smollm2",
         "--model-arg", f"base_url={server}", "--model-arg", f"tokenizer={embedded_gguf}", "--limit", "2",
         "--max-new-tokens", "24", "--no-progress", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob("*/*+*+*")
    rows = [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["candidates"][0]["text"] for r in rows)
    engine = json.loads((path / "provenance.json").read_text())["invocations"][-1]["engine"]
    assert engine["chat_template"]["origin"] == f"GGUF file {embedded_gguf}"  # which template, from where
    assert engine["servers"] == [{"url": server, "kind": "llama-cpp-python",
                                  "sampling": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}}]


def test_missing_server_is_one_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", "run", "--backend", "openai", "--model", "smollm2",
         "--limit", "1", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_BASE_URL": ""},
    )
    assert result.returncode == 2 and "base_url" in result.stderr and result.stderr.count("\n") == 1
