"""`inferencekit chat`: the session logic on a fake generator, then the embedded model through a pipe and a pty."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from inferencekit.chat import ChatSession, run_chat
from inferencekit.models.base import Completion, Generator, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
CHAT = [sys.executable, "-m", "inferencekit.cli", "chat", "--max-new-tokens", "16"]


class FakeGenerator(Generator):
    """Replies from a script: `replies` in turn for single samples, `samples` for best-of-N."""

    backend = "fake"

    def __init__(self, replies: Sequence[str] = ("hello",), samples: Sequence[str] = ()) -> None:
        super().__init__()
        self.replies, self.samples = list(replies), list(samples)
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts, params):
        self.prompts += list(prompts)
        self.params.append(params)
        if params.n > 1:
            return [[Completion(self.samples[j], 3) for j in range(params.n)]]
        return [[Completion(self.replies.pop(0), 2)]]

    def chat_prompt(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def count_tokens(self, text):
        return len(text.split())


class StreamingGenerator(FakeGenerator):
    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        self.prompts.append(prompt)
        yield from ("Hel", "lo ", "there")


class FakeRewardModel:
    name = "fake-prm"

    def __init__(self, by_text: dict[str, list[float]]) -> None:
        self.by_text, self.calls = by_text, []

    def score(self, questions, solutions):
        self.calls.append((list(questions), [list(s) for s in solutions]))
        return [[self.by_text[s] for s in sols] for sols in solutions]


def session(gen, rm=None, **kw) -> tuple[ChatSession, io.StringIO]:
    out = io.StringIO()
    return ChatSession(gen, rm, out=out, params=SamplingParams(max_new_tokens=8), **kw), out


def test_reply_streams_and_shows_per_step_reward():
    rm = FakeRewardModel({"Hello there": [0.9, 0.25]})
    chat, out = session(StreamingGenerator(), rm, system="sys", aggregation="min")
    assert chat.reply("hi") == "Hello there"
    assert chat.generator.prompts == ["<system>sys<user>hi<assistant>"]
    assert rm.calls == [(["hi"], [["Hello there"]])]  # question = the last user message
    text = out.getvalue()
    assert text.startswith("Hello there\n[2 tokens, ")
    assert "reward 0.250 (min of steps 0.900 0.250)]" in text
    assert chat.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there"}]


def test_best_of_n_with_reward_model_and_by_majority():
    samples = ["x \\boxed{1}", "y \\boxed{2}", "z \\boxed{2}"]
    rm = FakeRewardModel({"first": [0.5], **{s: [v] for s, v in zip(samples, (0.9, 0.1, 0.2), strict=True)}})
    chat, out = session(FakeGenerator(["first"], samples), rm)
    chat.handle("q?")
    assert chat.handle("/bon 3")
    assert chat.generator.params[-1].n == 3 and chat.generator.params[-1].temperature > 0  # sampled, not greedy
    assert "best of 3: sample 1" in out.getvalue() and "sample 2: reward 0.100, answer 2" in out.getvalue()
    assert chat.messages[-1] == {"role": "assistant", "content": "x \\boxed{1}"}  # replaces the earlier reply
    assert len(chat.messages) == 2

    chat, out = session(FakeGenerator(["first"], samples))
    chat.handle("q?")
    chat.handle("/bon 3")
    assert "majority answer: 2 (2 of 3)" in out.getvalue() and "best of 3: sample 2" in out.getvalue()
    assert chat.messages[-1]["content"] == "y \\boxed{2}"
    seeds = {p.seed for p in chat.generator.params}
    assert len(seeds) == 2  # each generation draws with its own seed


def test_commands_save_load_and_errors(tmp_path):
    chat, out = session(FakeGenerator(["one", "two"]))
    lines = ["/bon 2", "hi", "/system Be brief", f"/save {tmp_path / 'c.json'}", "/reset", "/nope",
             f"/load {tmp_path / 'missing.json'}", f"/load {tmp_path / 'c.json'}", "/bon x", "/help", "/exit", "never"]
    assert run_chat(chat, io.StringIO("\n".join(lines) + "\n"), interactive=False) == 0
    text = out.getvalue()
    assert "error: /bon needs a message to answer first" in text
    assert "system prompt set: Be brief" in text and "conversation cleared (system prompt kept)" in text
    unknown = [line for line in text.splitlines() if line.startswith("unknown command /nope")]
    assert len(unknown) == 1 and "/bon N" in unknown[0]
    assert "error: cannot load" in text and "loaded 2 messages" in text and "error: usage: /bon N" in text
    assert chat.generator.replies == ["two"]  # nothing after /exit was answered
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["system"] == "Be brief" and [m["content"] for m in saved["messages"]] == ["hi", "one"]
    assert chat.messages == saved["messages"] and not list(tmp_path.glob(".*tmp"))


class ShortContext(FakeGenerator):
    context_length = 19  # declared (Generator.context_length): 8 new tokens + a prompt of at most 11 "tokens"


def test_context_full_drops_oldest_turns():
    gen = ShortContext(["a b c d e f g h", "ok"])
    chat, out = session(gen)
    chat.reply("one two three four five")
    chat.reply("six")
    assert "dropped the oldest turn" in out.getvalue()
    assert gen.prompts[-1] == "<user>six<assistant>"
    # a backend that cannot tell its context (context_length None) is sent every turn
    gen = FakeGenerator(["a b c d e f g h", "ok"])
    chat, out = session(gen)
    chat.reply("one two three four five")
    chat.reply("six")
    assert "dropped" not in out.getvalue() and gen.prompts[-1].startswith("<user>one two")


def test_context_trimming_on_the_hf_backend(tiny_llama_dir):
    from inferencekit.models import load_generator, resolve_model

    gen = load_generator(resolve_model(str(tiny_llama_dir), "hf"))
    try:
        limit = gen.model.config.max_position_embeddings
        assert gen.context_length == limit
        chat, out = session(gen)
        chat.params = chat.params.replace(max_new_tokens=limit - 40)  # room for a prompt of 40 tokens
        chat.messages = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "hi"}]
        prompt = chat._prompt()
        assert "dropped the oldest turn" in out.getvalue() and chat.messages == [{"role": "user", "content": "hi"}]
        assert gen.count_tokens(prompt) <= 40 and "word" not in prompt
    finally:
        gen.close()


# ---------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_chat_through_a_pipe_with_llm_judge(tmp_path):
    saved, again = tmp_path / "conv.json", tmp_path / "again.json"
    lines = ["What is 2 + 3?", "/system Be brief", "/bon 2", f"/save {saved}", "/reset", f"/load {saved}",
             f"/save {again}", "/exit", "/system NEVER"]
    proc = subprocess.run([*CHAT, "--reward-model", "llm_judge"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "you>" not in out and "/help for commands" not in out  # no decorations when piped
    first = out.split("\n[", 1)[0]
    assert first.strip(), out  # the reply, then its info line with the reward
    assert re.search(r"^\[\d+ tokens, [\d.]+ s; reward \d\.\d{3}", out, re.M), out
    assert "system prompt set: Be brief" in out
    assert re.search(r"^sample 1: reward \d\.\d{3}.*\nsample 2: reward \d\.\d{3}", out, re.M), out
    best = re.search(r"^best of 2: sample (\d)\n", out, re.M)
    assert best, out
    data = json.loads(saved.read_text())
    assert data["system"] == "Be brief" and data["model"] == "smollm2-135m"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "What is 2 + 3?"
    assert out[best.end():].startswith(data["messages"][1]["content"])  # the kept reply is the best sample
    assert "conversation cleared" in out and f"loaded 2 messages from {saved}" in out
    assert json.loads(again.read_text()) == data  # /load restored the conversation exactly
    assert "NEVER" not in out


def _read_until(fd: int, pattern: str, buf: bytearray, timeout: float = 180) -> str:
    """Read the pty until `pattern` (a regex) matches what came since the last call; return that text."""
    deadline = time.monotonic() + timeout
    while True:
        text = buf.decode("utf-8", "replace")
        m = re.search(pattern, text)
        if m:
            del buf[: len(text[: m.end()].encode("utf-8"))]
            return text[: m.end()]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {pattern!r} within {timeout} s; got {text[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"chat ended before {pattern!r}; got {text[-2000:]!r}")
            buf += chunk


@pytest.mark.slow
def test_chat_in_a_pseudo_terminal(tmp_path):
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat on the embedded model, with a terminal as stdin and stdout
        os.chdir(tmp_path)
        os.execv(sys.executable, CHAT)
    buf = bytearray()
    try:
        banner = _read_until(fd, r"you> ", buf)
        assert "chat with smollm2-135m; /help for commands" in banner
        os.write(fd, b"What is 2 + 2?\n")
        reply = _read_until(fd, r"\[\d+ tokens, [\d.]+ s\]\r?\n(.|\n)*you> ", buf)
        assert len(reply.split("What is 2 + 2?", 1)[-1].strip()) > 10, reply
        os.write(fd, b"/bon 2\n")
        bon = _read_until(fd, r"best of 2: sample \d(.|\n)*you> ", buf)
        assert "sample 1: answer" in bon and "sample 2: answer" in bon
        os.write(fd, b"/nope\n")
        assert "unknown command /nope; commands: /bon N" in _read_until(fd, r"unknown command.*\n(.|\n)*you> ", buf)
        os.write(fd, b"\x04")  # Ctrl-D: end of input ends the chat
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "chat did not exit at end of input"
            if select.select([fd], [], [], 0.5)[0]:
                _drain(fd)
        assert os.waitstatus_to_exitcode(status) == 0
        pid = 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except OSError:
        pass


def test_scripts_map_variables_onto_the_cli():
    env = {**os.environ, "DRY_RUN": "1", "WORK_DIR": "/w", "MODEL_PATH": "/m/model.gguf", "DATASET_NAME": "math500",
           "DATA_DIR": "/data", "METHOD": "best_of_n", "N": "4", "REWARD_MODEL_NAME": "llm_judge", "LIMIT": "5"}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "run.sh"), "--no-resume"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        "inferencekit", "run", "--model", "/m/model.gguf", "--dataset", "math500", "--work-dir", "/w", "--method",
        "best_of_n", "--data-dir", "/data", "--limit", "5", "--n", "4", "--reward-model", "llm_judge", "--no-resume"]
    env = {**os.environ, "DRY_RUN": "1", "MODEL": "qwen2.5-1.5b-instruct", "REWARD_MODEL": "llm_judge",
           "REWARD_MODEL_PATH": "/rm", "MAX_NEW_TOKENS": "64"}
    chat = subprocess.run(["bash", str(ROOT / "scripts" / "dialogue.sh")], env=env, capture_output=True, text=True,
                          timeout=30)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.split() == ["inferencekit", "chat", "--model", "qwen2.5-1.5b-instruct", "--reward-model",
                                   "/rm", "--max-new-tokens", "64"]
