"""Faults at run time (issue 24, items 3 and 4): Ctrl-C and SIGTERM, bad problems and bad server replies.

Every run here is a real `python -m inferencekit.cli run` subprocess of the embedded llama.cpp model or of the
openai backend against small fake servers on 127.0.0.1, signalled with real signals: from the test at a chosen
moment, or by the run itself through the `INFERENCEKIT_TEST_SIGNAL` hook (see inferencekit/interrupt.py).
Leftover processes are looked for in /proc. Time bounds are generous: they test that a mechanism exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inferencekit.interrupt import TEST_SIGNAL_ENV
from inferencekit.models.base import GeneratorSpec
from llama_servers import GGUF

# One llama.cpp thread: the test machine is shared, and oversubscribed threads make decoding crawl.
EMBEDDED = ["--model-arg", "n_threads=1", "--no-progress"]


# ------------------------------------------------------------------------------------------- helpers


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A run in a process group of its own: a failing test kills all of it, children that outlive it included."""
    return subprocess.Popen([sys.executable, "-m", "inferencekit.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def kill_group(proc: subprocess.Popen) -> str:
    """SIGKILL the run's process group (orphans holding its pipes too); its stderr."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.communicate(timeout=30)[1][-2000:]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str, float]:
    """Return code, stdout, stderr and seconds until the process ended and closed its pipes (else a failure)."""
    begin = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"exit {proc.poll()}, pipes still open {timeout:.0f} s later; stderr: {kill_group(proc)}")
    return proc.returncode, out, err, time.monotonic() - begin


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended first (exit {proc.returncode}): {kill_group(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for the run: {kill_group(proc)}")
        time.sleep(0.05)


def run_dir(work: Path) -> Path | None:
    found = list(work.glob("*/*+*+*/predictions.jsonl"))
    return found[0].parent if found else None


def lines(work: Path) -> list[dict]:
    folder = run_dir(work)
    if folder is None:
        return []
    return [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]


def log_has(work: Path, text: str) -> bool:
    folder = next(iter(work.glob("*/*+*+*/run.log")), None)
    return folder is not None and text in folder.read_text()


def _processes() -> dict[int, tuple[str, int]]:
    """pid -> (state, parent pid), from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(name)] = (fields[0], int(fields[1]))
    return table


def descendants(pid: int) -> set[int]:
    table, found = _processes(), {pid}
    while grown := {p for p, (_, parent) in table.items() if parent in found and p not in found}:
        found |= grown
    return found - {pid}


def still_alive(pids: set[int], grace: float = 5.0) -> set[int]:
    """Those of `pids` still running (not zombies) after up to `grace` seconds."""
    deadline = time.monotonic() + grace
    while True:
        table = _processes()
        alive = {p for p in pids if p in table and table[p][0] != "Z"}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def assert_none_left(pids: set[int]) -> None:
    """No process of `pids` outlived the run (any that did is killed, so a failing test leaves none)."""
    left = still_alive(pids)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} child process(es) outlived the run"


def one_short_then_long(path: Path, rows: int = 8) -> Path:
    """A question answered in a few tokens, then lists the model goes on with up to any --max-new-tokens."""
    long = [f"Continue this list to 1000 without stopping: {', '.join(str(a + k) for k in range(12))},"
            for a in range(1, rows)]
    path.write_text("".join(json.dumps({"problem": q, "answer": a}) + "\n"
                            for q, a in [("What is 1 plus 1?", "2"), *((q, "1000") for q in long)]))
    return path


def math_dataset(path: Path, rows: int = 12) -> Path:
    """MATH-style problems: the model rarely boxes its answer, so grading goes to the worker processes."""
    path.write_text("".join(json.dumps({"problem": f"Simplify $\\frac{{{k + 2}}}{{{2 * k + 4}}} + {k}$ and explain "
                                        "each step in detail.", "answer": f"{k}+\\frac{{1}}{{2}}"}) + "\n"
                            for k in range(rows)))
    return path


def one_line_without_traceback(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    message = [line for line in stderr.splitlines() if line.startswith("inferencekit:")]
    assert len(message) == 1, stderr
    return message[0]


# ------------------------------------------------------------------------------ 3. Ctrl-C and SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_in_seconds_saves_and_leaves_no_process(sig, tmp_path):
    """Long problems in flight are cancelled, not awaited; the grading workers and their forkserver go too."""
    data = one_short_then_long(tmp_path / "lists.jsonl")
    work = tmp_path / "work"
    proc = start("--dataset", str(data), "--max-new-tokens", "700", "--batch-size", "3", "--work-dir", str(work),
                 *EMBEDDED)
    wait_until(lambda: len(lines(work)) >= 1, proc)
    children = descendants(proc.pid)
    assert len(children) >= 2  # the grading workers and their forkserver run
    proc.send_signal(sig)
    code, _, err, seconds = finish(proc, timeout=120)
    assert code == 128 + sig, err
    assert seconds < 30  # five lists of 700 tokens were in flight: minutes of decoding here
    message = one_line_without_traceback(err)
    assert f"interrupted ({sig.name})" in message and "rerun the same command to resume" in message
    saved = lines(work)
    assert f"saved the {len(saved)} problem(s)" in message
    assert all("majority" in r["correct"] for r in saved)  # graded, complete lines
    assert_none_left(children)


def test_finished_problems_are_saved_on_the_way_out_and_a_rerun_resumes(tmp_path):
    """The hook waits, after 2 saved problems, until those in flight have finished, then sends SIGINT:
    they are finished but not yet saved, and the way out must save (and grade) them."""
    work = tmp_path / "work"
    args = ["--dataset", "gsm8k-mini", "--limit", "10", "--max-new-tokens", "16", "--batch-size", "2",
            "--work-dir", str(work), *EMBEDDED]
    code, _, err, _ = finish(start(*args, env={TEST_SIGNAL_ENV: "2:INT"}), timeout=600)
    assert code == 130, err
    saved = lines(work)
    assert len(saved) > 2  # some saved on the way out
    assert len({r["index"] for r in saved}) == len(saved)
    assert all("majority" in r["correct"] and not r.get("failed") for r in saved)
    message = one_line_without_traceback(err)
    assert f"saved the {len(saved)} problem(s) this run finished ({len(saved)} of 10 done)" in message
    assert log_has(work, "stopping (SIGINT)")

    code, _, err, _ = finish(start(*args), timeout=600)
    assert code == 0, err
    assert log_has(work, f"resuming: {len(saved)} of 10 samples already finished")
    again = lines(work)
    assert len(again) == 10 and {r["index"] for r in again} == set(range(10))  # nothing redone twice


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    """The hook stalls the way out for a minute; a second Ctrl-C leaves now, and kills the grading workers."""
    data = math_dataset(tmp_path / "algebra.jsonl", rows=6)
    work = tmp_path / "work"
    proc = start("--dataset", str(data), "--max-new-tokens", "24", "--batch-size", "1", "--work-dir", str(work),
                 *EMBEDDED, env={TEST_SIGNAL_ENV: "1:INT:60"})
    wait_until(lambda: log_has(work, "stopping (SIGINT)"), proc)
    children = descendants(proc.pid)
    assert children  # the grading workers and their forkserver
    saved = lines(work)
    proc.send_signal(signal.SIGINT)
    code, _, err, seconds = finish(proc, timeout=60)
    assert code == 130 and seconds < 10, err
    assert "exiting now" in err and "Traceback" not in err
    assert saved and lines(work) == saved  # what was saved stays; the finished rest is redone by a rerun
    assert_none_left(children)


def _generate_then_cancel(generator, params, started: Callable[[], bool]) -> tuple[BaseException | None, float]:
    """Generate in a thread, cancel once `started()`; the thread's error and the seconds it took to end."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            generator.generate(["Count from one to one thousand in words:"] * 2, params)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not started() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    begin = time.monotonic()
    generator.cancel()
    thread.join(timeout=60)
    return (outcome[0] if outcome else TimeoutError("still generating")), time.monotonic() - begin


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_cancel_stops_an_engine_between_two_steps(backend, request):
    """A batch decoding 1,900 tokens a row stops at the next step; later requests are refused."""
    from inferencekit.models import load_generator
    from inferencekit.models.base import Cancelled, SamplingParams

    if backend == "hf":
        spec = GeneratorSpec(name="tiny", path=str(request.getfixturevalue("tiny_llama_dir")), backend="hf")
    else:
        spec = GeneratorSpec(name="smol", path=GGUF, backend="llamacpp", n_threads=1)
    generator = load_generator(spec)
    try:
        begun = time.monotonic()
        if backend == "hf":
            decoding = lambda: time.monotonic() - begun > 1.0  # noqa: E731 - a second into 1,900 steps
        else:  # once the decode loop runs (making its context first takes seconds, and is not a step)
            decoding = lambda: generator.max_live > 0  # noqa: E731
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=1900, seed=1)
        error, seconds = _generate_then_cancel(generator, params, decoding)
        assert isinstance(error, Cancelled), error
        assert seconds < 10
        with pytest.raises(Cancelled):
            generator.generate(["Say yes."], SamplingParams(max_new_tokens=2))
    finally:
        generator.close()


# --------------------------------------------------------------------------------------- fake servers


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1: lists one model; answers completions with `reply(handler)`."""

    def __init__(self, reply: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.posts = 0
        self.release = threading.Event()  # frees handlers that hang
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self.send(200, json.dumps({"object": "list", "data": [{"id": GGUF, "object": "model"}]}).encode(),
                          "application/json")

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.posts += 1
                reply(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hang(self, handler: BaseHTTPRequestHandler) -> None:
        self.release.wait(timeout=120)  # bounded: a test never leaves it behind for long

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers: list[FakeServer] = []

    def make(reply: Callable[[BaseHTTPRequestHandler], None] | None = None) -> FakeServer:
        server = FakeServer(reply or (lambda handler: server.hang(handler)))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def openai_args(server: FakeServer, work: Path, *more: str) -> list[str]:
    return ["--backend", "openai", "--model", GGUF, "--model-arg", f"base_url={server.url}", "--limit", "2",
            "--max-new-tokens", "8", "--no-progress", "--work-dir", str(work), *more]


def test_a_hung_server_does_not_hold_ctrl_c(fake_server, tmp_path):
    server = fake_server()  # default timeouts: minutes
    work = tmp_path / "work"
    proc = start(*openai_args(server, work))
    wait_until(lambda: server.posts >= 1, proc, timeout=120)
    proc.send_signal(signal.SIGINT)
    code, _, err, seconds = finish(proc, timeout=60)
    assert code == 130 and seconds < 15, err
    assert "saved the 0 problem(s)" in one_line_without_traceback(err)
    assert lines(work) == []


def test_a_server_that_never_answers_costs_bounded_time_per_problem(fake_server, tmp_path):
    # the defaults: a request waits request_timeout for its answer and a timed-out one is retried timeout_retries
    # times, so a silent server costs a problem minutes, not an hour
    spec = GeneratorSpec(name="m", path="m", backend="openai")
    assert (spec.timeout_retries + 1) * spec.request_timeout <= 900 and spec.connect_timeout <= 30
    server = fake_server()
    work = tmp_path / "work"
    code, out, err, seconds = finish(start(*openai_args(server, work, "--model-arg", "request_timeout=1",
                                                        "--model-arg", "retry_delay=0.01")), timeout=300)
    assert code == 0, err
    rows = lines(work)
    assert len(rows) == 2 and all(r["failed"] and "timed out (after 2 attempts)" in r["error"] for r in rows)
    assert server.posts == 4  # one retry per timed-out request, not max_retries=5
    assert "2 problem(s) failed" in " ".join((out + err).split())


def _broken_json(handler) -> None:
    handler.send(200, b'{"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "4', "application/json")


def _html_page(handler) -> None:
    handler.send(200, b"<html><head><title>502</title></head><body>Bad gateway</body></html>", "text/html")


def _garbage_inside(handler) -> None:  # valid JSON, but the numbers are words: the client's own code fails
    choice = {"text": " 4", "index": 0, "finish_reason": "stop", "logprobs": {"token_logprobs": ["four"]}}
    handler.send(200, json.dumps({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                                  "choices": [choice]}).encode(), "application/json")


@pytest.mark.parametrize(("reply", "error", "attempts"), [
    (_broken_json, "the answer is not valid JSON", 3),
    (_html_page, "the answer is not a completion (<html><head><title>502", 3),
    (_garbage_inside, "ValueError: could not convert string to float: 'four'", 1),
], ids=["broken-json", "html-page", "garbage-inside"])
def test_a_broken_reply_is_a_failed_problem_not_a_crash(reply, error, attempts, fake_server, tmp_path):
    server = fake_server(reply)
    work = tmp_path / "work"
    code, out, err, _ = finish(start(*openai_args(server, work, "--model-arg", "retry_delay=0.01",
                                                  "--model-arg", "max_retries=2")), timeout=300)
    assert code == 0, err
    assert "Traceback" not in err
    rows = lines(work)
    assert len(rows) == 2 and all(r["failed"] and error in r["error"] for r in rows), rows
    assert server.posts == 2 * attempts  # a broken answer is retried like a 5xx; a bug in reading it is not
    assert "2 problem(s) failed" in " ".join((out + err).split())


# ----------------------------------------------------------------------------- 4. one bad problem


def test_a_question_longer_than_the_context_fails_that_problem_only(tmp_path):
    data = tmp_path / "mixed.jsonl"
    long = "Add these numbers: " + " + ".join(str(k) for k in range(400)) + "?"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in [("What is 2 plus 2?", "4"), (long, "79800"), ("What is 3 plus 4?", "7")]))
    work = tmp_path / "work"
    code, out, err, _ = finish(start("--dataset", str(data), "--max-new-tokens", "8", "--model-arg", "n_ctx=512",
                                     "--work-dir", str(work), *EMBEDDED), timeout=600)
    assert code == 0, err
    assert "Traceback" not in err
    rows = {r["index"]: r for r in lines(work)}
    assert set(rows) == {0, 1, 2}
    assert rows[1]["failed"]
    assert "does not fit the context of 512: raise it with --model-arg n_ctx=N" in rows[1]["error"]
    assert not rows[0].get("failed") and not rows[2].get("failed")
    assert "1 problem(s) failed" in " ".join((out + err).split())
