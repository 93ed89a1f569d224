"""Failed generations are recorded as failed (not wrong), counted beside the accuracy, and redone on resume.

The failing path is real: the openai backend talks over HTTP to a proxy on 127.0.0.1 that answers 500 for
one problem's requests (or for all) and passes the rest to llama.cpp's OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inferencekit.results.evaluate import compute_metrics
from inferencekit.results.health import health, unclosed_think
from inferencekit.results.records import Record
from llama_servers import GGUF, Server, free_port


@pytest.fixture(scope="module")
def llama_server():
    server = Server().start()
    yield f"http://127.0.0.1:{server.port}"  # the proxy adds /v1
    server.kill()


class Proxy:
    """An HTTP server that fails requests whose body contains `fail_on` (every one when it is "") with 500."""

    def __init__(self, upstream: str) -> None:
        self.fail_on: str | None = None
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _relay(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.fail_on is not None and proxy.fail_on.encode() in body:
                    proxy.failed += 1
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "injected failure", "type": "server_error"}}')
                    return
                request = urllib.request.Request(upstream + self.path, data=body or None, method=method,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=300) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._relay("GET")

            def do_POST(self):  # noqa: N802
                self._relay("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(llama_server):
    p = Proxy(llama_server)
    yield p
    p.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "predictions.jsonl").read_text().splitlines()]


def test_a_failed_problem_is_counted_apart_and_redone_on_resume(proxy, tmp_path):
    from inferencekit.datasets import load_dataset

    second = load_dataset("gsm8k-mini", limit=3).samples[1].input
    proxy.fail_on = json.dumps(second)[1:40]  # as the JSON request body spells it
    args = ["run", "--backend", "openai", "--model", GGUF, "--model-arg", f"base_url={proxy.url}",
            "--model-arg", "retry_delay=0.05", "--limit", "3",
            "--max-new-tokens", "12", "--no-progress", "--batch-size", "3", "--work-dir", str(tmp_path)]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert proxy.failed >= 2  # the client retried before giving up
    (path,) = tmp_path.glob("*/*+*+*")
    rows = {r["index"]: r for r in lines(path)}
    assert set(rows) == {0, 1, 2}
    assert rows[1]["failed"] is True and "500" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert rows[1]["candidates"] == [] and rows[1]["correct"] == {}
    assert not rows[0].get("failed") and not rows[2].get("failed")  # the batch's other problems still ran
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["failed"] == 1 and metrics["votes"]["majority"]["n"] == 2
    assert metrics["votes"]["majority"]["failed"] == 1 and metrics["health"]["failed_samples"] == 1
    assert "1 problem(s) failed" in " ".join(first.stdout.split())

    proxy.fail_on = None  # the server recovered
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "2 of 3 samples already finished" in (path / "run.log").read_text()
    history = lines(path)
    assert len(history) == 4 and history[-1]["index"] == 1 and not history[-1].get("failed")  # appended, not rewritten
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["failed"] == 0 and metrics["votes"]["majority"]["n"] == 3
    prov = json.loads((path / "provenance.json").read_text())
    assert [inv["failed"] for inv in prov["invocations"]] == [1, 0]
    assert isinstance(prov["model"]["served"], list) and prov["model"]["served"][0]["id"]


def test_a_dead_server_is_named_at_start_without_a_traceback(tmp_path):
    port = free_port()  # nothing listens there
    result = cli("run", "--backend", "openai", "--model", GGUF, "--model-arg", f"base_url=http://127.0.0.1:{port}/v1",
                 "--limit", "2", "--max-new-tokens", "8", "--no-progress", "--work-dir", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"127.0.0.1:{port}" in result.stderr and "health check" in result.stderr
    assert not list(tmp_path.glob("*/*+*+*/predictions.jsonl"))


def test_truncation_open_think_and_missing_answers_are_counted():
    assert unclosed_think("<think>still going") and unclosed_think("<think>a</think> b <think>c")
    assert not unclosed_think("<think>a</think> 42") and not unclosed_think("no tags")
    cand = lambda text, reason, answer, ok: {"text": text, "finish_reason": reason, "answer": answer,  # noqa: E731
                                             "correct": ok, "tokens": 3}
    records = [
        {"index": 0, "candidates": [cand("<think>hmm", "length", None, False), cand("4", "stop", "4", True)],
         "predictions": {"majority": "4"}, "correct": {"majority": True}, "usage": {}},
        {"index": 1, "candidates": [cand("5", "length", "5", False), cand("5", "stop", "5", False)],
         "predictions": {"majority": "5"}, "correct": {"majority": False}, "usage": {}},
        {"index": 2, "failed": True, "error": "boom", "candidates": [], "predictions": {}, "correct": {}, "usage": {}},
    ]
    records = [Record.from_dict(r) for r in records]
    h = health(records)
    assert h["candidates"] == 4 and h["truncated"] == 2 and h["truncated_rate"] == 0.5
    assert h["unclosed_think"] == 1 and h["no_answer"] == 1 and h["failed_samples"] == 1
    m = compute_metrics(records, ["majority"], "last")
    assert m["votes"]["majority"] == {"accuracy": 0.5, "n": 2, "correct": 1, "ci95": m["votes"]["majority"]["ci95"],
                                      "failed": 1}
    assert m["health"] == h and m["n_samples"] == 2 and m["failed"] == 1
