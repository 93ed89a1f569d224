"""Fault injection, storage side (issue 24, items 1, 2, 5, 6, 7, 8): what a run folder records and how it holds up
against a second writer, a kill between renames, a hostile or corrupt folder, and careless input.

Everything is real: `inferencekit` runs as a subprocess on the embedded model, small fake OpenAI-compatible
servers listen on 127.0.0.1, processes are killed with SIGKILL at a chosen point (`INFERENCEKIT_FAULT`, checked
between the renames of a multi-file update), and full or read-only disks are real tmpfs mounts in a private
mount namespace (`unshare`; those tests skip where user namespaces are not allowed).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from inferencekit.datasets import load_dataset
from inferencekit.files import write_atomic
from inferencekit.grading import grade

SMALL = ["--limit", "2", "--max-new-tokens", "8", "--no-progress", "--model-arg", "n_threads=1"]


def environment(**extra: str) -> dict[str, str]:
    """The tests' environment (read when called: conftest's fixtures have set it up by then)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def cli(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=environment(**(env or {})), **kw)


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single error line of a refused command (asserting there is one, and no traceback)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("inferencekit: error:"), result.stderr
    return lines[0]


def run_folder(work: Path) -> Path:
    (path,) = work.glob("*/*+*+*")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished 2-problem run on the embedded model; tests work on copies (`copy_run`)."""
    work = tmp_path_factory.mktemp("small")
    result = cli("run", *SMALL, "--work-dir", work)
    assert result.returncode == 0, result.stderr
    return run_folder(work)


def copy_run(small_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(work dir, run folder) of a fresh copy of `small_run`."""
    work = tmp_path / "work"
    shutil.copytree(small_run.parents[1], work)
    return work, run_folder(work)


# ---------------------------------------------------------------- small fake OpenAI-compatible servers


class FakeServer:
    """/v1/models lists `model`; /v1/completions either fails with 500 echoing the request's Authorization header
    and `echo` (mode "echo"), or waits until `release` is set and answers a fixed completion (mode "hold")."""

    def __init__(self, model: str, mode: str, echo: str = "") -> None:
        self.release = threading.Event()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests += 1
                if mode == "echo":
                    said = f"rejected {self.headers.get('Authorization')} {echo}"
                    self._send(500, {"error": {"message": said, "type": "server_error"}})
                    return
                server.release.wait(120)
                self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": model,
                                 "choices": [{"index": 0, "text": " The answer is 2.", "finish_reason": "stop",
                                              "logprobs": None}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def openai_args(embedded_gguf: Path, url: str, work: Path) -> list[str]:
    return ["run", "--backend", "openai", "--model", embedded_gguf, "--model-arg", f"base_url={url}",
            "--model-arg", "max_retries=0", "--model-arg", "retry_delay=0.01", "--limit", "2",
            "--max-new-tokens", "8", "--no-progress", "--work-dir", work]


# ---------------------------------------------------------------- 1. secrets


@pytest.mark.parametrize("given", ["model_arg", "key_file", "environment"])
def test_an_api_key_reaches_no_file_of_the_run_folder(given, embedded_gguf, tmp_path):
    key = {"model_arg": "sk-live-0123456789abcdefXYZ", "key_file": "Zq7-local-key-5550123",
           "environment": "env-derived-key-9988776655"}[given]
    server = FakeServer(str(embedded_gguf), "echo", echo=f"(your key was {key})")
    work = tmp_path / "work"
    args, env = openai_args(embedded_gguf, server.url, work), {}
    if given == "model_arg":
        args += ["--model-arg", f"api_key={key}"]
    elif given == "key_file":
        (tmp_path / "key").write_text(key + "\n")
        args += ["--model-arg", f"api_key_file={tmp_path / 'key'}"]
    else:
        env["OPENAI_API_KEY"] = key
    try:
        result = cli(*args, env=env)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    path = run_folder(work)
    rows = lines(path)
    assert server.requests >= 2 and all(r["failed"] for r in rows)
    assert all("rejected" in r["error"] and "***" in r["error"] for r in rows)  # the error is kept, the key not
    assert "rejected" in (path / "run.log").read_text()
    argv = json.loads((path / "provenance.json").read_text())["invocations"][-1]["argv"]
    assert argv and "--model-arg" in argv
    if given == "model_arg":
        assert "api_key=***" in argv
    report = cli("report", path, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    for file in [*path.rglob("*"), *(tmp_path / "report").rglob("*")]:
        if file.is_file():
            assert key.encode() not in file.read_bytes(), file
    assert key not in result.stdout + result.stderr + report.stdout + report.stderr


# ---------------------------------------------------------------- 2. one writer per run folder


def test_a_second_writer_is_refused_naming_the_first(embedded_gguf, tmp_path):
    server = FakeServer(str(embedded_gguf), "hold")
    work = tmp_path / "work"
    args = openai_args(embedded_gguf, server.url, work)
    first = subprocess.Popen([sys.executable, "-m", "inferencekit.cli", *map(str, args)], env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while server.requests == 0 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert server.requests and first.poll() is None, "the first run should be waiting on the server"
        path = run_folder(work)
        second = cli(*args, timeout=120)
        line = one_line_error(second)
        assert f"PID {first.pid} on host {socket.gethostname()}" in line and "in use by inferencekit run" in line
        regrade = cli("evaluate", path, "--in-place", "--box-match", "any")
        assert f"PID {first.pid}" in one_line_error(regrade)
    finally:
        server.release.set()
        out, err = first.communicate(timeout=120)
        server.close()
    assert first.returncode == 0, err
    assert sorted(r["index"] for r in lines(path)) == [0, 1]  # each problem generated once, nothing lost
    assert len(json.loads((path / "provenance.json").read_text())["invocations"]) == 1


def test_a_lock_left_by_a_killed_process_is_taken_over(small_run, tmp_path):
    _, path = copy_run(small_run, tmp_path)
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys\nfrom inferencekit.results.lock import run_folder_lock\n"
         "with run_folder_lock(sys.argv[1], 'run'):\n    os.kill(os.getpid(), signal.SIGKILL)", str(path)],
        env=environment(), capture_output=True, text=True, timeout=60)
    assert holder.returncode == -9
    dead = json.loads((path / ".lock").read_text())["pid"]  # the dead holder's record stays, its flock is gone
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    result = cli("evaluate", path, "--in-place", "--box-match", "any")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((path / "config.yaml").read_text())["box_match"] == "any"


def test_concurrent_atomic_writes_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "config.yaml"
    code = ("import sys\nfrom pathlib import Path\nfrom inferencekit.files import write_atomic\n"
            "for i in range(400):\n    write_atomic(Path(sys.argv[1]), f'{sys.argv[2]} {i}\\n' * 50)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), name], env=environment(),
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b", "c")]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert len(set(target.read_text().splitlines())) == 1  # one writer's whole file, never a mix
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- 5. multi-file updates survive a kill


def test_evaluate_in_place_killed_between_renames_leaves_a_consistent_folder(small_run, tmp_path):
    _, path = copy_run(small_run, tmp_path)
    killed = cli("evaluate", path, "--in-place", "--box-match", "any",
                 env={"INFERENCEKIT_FAULT": "between-renames"})
    assert killed.returncode == -9, killed.stderr
    assert (path / ".journal.json").is_file()  # caught between the renames
    # the next command of any kind finishes the update before reading
    report = cli("report", path, "--out", tmp_path / "report")
    assert report.returncode == 0, report.stderr
    assert not (path / ".journal.json").exists() and not list(path.glob(".*.tmp"))
    config = yaml.safe_load((path / "config.yaml").read_text())
    metrics = json.loads((path / "metrics.json").read_text())
    assert config["box_match"] == metrics["box_match"] == "any"
    rows = lines(path)
    assert metrics["votes"]["majority"]["correct"] == sum(r["correct"]["majority"] for r in rows)
    assert metrics["votes"]["majority"]["n"] == len(rows) == 2


def test_merge_killed_between_renames_can_run_again(tmp_path):
    work = tmp_path / "work"
    for i in (1, 2):
        shard = cli("run", *SMALL, "--work-dir", work, "--shard", f"{i}/2")
        assert shard.returncode == 0, shard.stderr
    (path,) = work.glob("*/*+*+*")
    killed = cli("merge", path, env={"INFERENCEKIT_FAULT": "between-renames"})
    assert killed.returncode == -9, killed.stderr
    again = cli("merge", path)
    assert again.returncode == 0, again.stderr
    assert sorted(r["index"] for r in lines(path)) == [0, 1]
    assert json.loads((path / "merged.json").read_text()) == {"shards": 2, "problems": 2}
    assert json.loads((path / "metrics.json").read_text())["votes"]["majority"]["n"] == 2


# ---------------------------------------------------------------- 6. trust in what a run folder says


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_lost_provenance_does_not_let_a_changed_dataset_resume(damage, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": 2 * i}) + "\n"
                            for i in range(3)))
    args = ["run", *SMALL, "--dataset", data, "--work-dir", tmp_path / "work"]
    assert cli(*args).returncode == 0
    path = run_folder(tmp_path / "work")
    data.write_text(data.read_text().replace('"answer": 2}', '"answer": 3}'))  # the references changed
    if damage == "missing":
        (path / "provenance.json").unlink()
    else:
        (path / "provenance.json").write_text('{"model": ')
    line = one_line_error(cli(*args, "--limit", "3"))
    assert "provenance.json" in line and "--no-resume" in line
    assert len(lines(path)) == 2  # nothing old and new mixed


def test_lines_with_wrong_types_are_skipped_and_redone(small_run, tmp_path):
    work, path = copy_run(small_run, tmp_path)
    good = lines(path)
    good[0]["index"] = 0.9  # would have been int()-ed onto problem 0
    good[1]["candidates"] = "not a list"
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    for command in (["report", path, "--out", tmp_path / "report"], ["compare", path, path]):
        result = cli(*command)
        assert "Traceback" not in result.stderr
    rerun = cli("run", *SMALL, "--work-dir", work)
    assert rerun.returncode == 0, rerun.stderr
    log = (path / "run.log").read_text()
    assert log.count("skipping a corrupt line") >= 2 and "resuming" not in log
    rows = lines(path)
    assert len(rows) == 4 and sorted(r["index"] for r in rows[2:]) == [0, 1]  # both redone, appended
    assert json.loads((path / "metrics.json").read_text())["votes"]["majority"]["n"] == 2


@pytest.mark.parametrize("name", ["predictions.jsonl", "run.log"])
def test_a_symlinked_run_folder_file_is_not_written_through(name, small_run, tmp_path):
    work, path = copy_run(small_run, tmp_path)
    outside = tmp_path / "elsewhere.txt"
    shutil.copy(path / name, outside)
    before = outside.read_bytes()
    (path / name).unlink()
    (path / name).symlink_to(outside)
    line = one_line_error(cli("run", *SMALL, "--limit", "3", "--work-dir", work))
    assert name in line and "symbolic link" in line
    assert outside.read_bytes() == before


# ---------------------------------------------------------------- 7. the report escapes every value


def test_a_crafted_metrics_json_cannot_inject_markup(small_run, tmp_path):
    _, path = copy_run(small_run, tmp_path)
    metrics = json.loads((path / "metrics.json").read_text())
    vote = metrics["votes"]["majority"]
    vote["correct"] = '<base href="http://evil.example/">'
    vote["n"] = '<meta http-equiv="refresh" content="0;url=http://evil.example/">'
    vote["failed"] = '<form action="http://evil.example/"><input name=x></form>'
    (path / "metrics.json").write_text(json.dumps(metrics))
    result = cli("report", path, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<base" not in page and "<meta http-equiv=\"refresh" not in page and "<form" not in page
    assert "&lt;base href=" in page and "&lt;form action=" in page


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"votes": {"majority": {"accuracy": "high"}}}'])
def test_a_malformed_metrics_json_is_one_line(text, small_run, tmp_path):
    _, path = copy_run(small_run, tmp_path)
    (path / "metrics.json").write_text(text)
    assert "metrics.json" in one_line_error(cli("report", path, "--out", tmp_path / "report"))


# ---------------------------------------------------------------- 8. smaller cases


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    # extra_body (sent with each request to a server) takes any mapping: 9 levels of 9 aliases, 9**9 values
    levels = ["model_args:", "  extra_body:", "    a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"    {cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    assert bomb.stat().st_size < 1000
    result = cli("run", "--config", bomb, "--work-dir", tmp_path / "work", timeout=120, preexec_fn=_limit_memory)
    assert "expands to more than" in one_line_error(result)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("flag", [["--n", "100000"], ["--beam-width", "100000"], ["--max-new-tokens", "2000000"],
                                  ["--concurrency", "10000000"]])
def test_sizes_have_an_upper_bound(flag, tmp_path):
    line = one_line_error(cli("run", *flag, "--work-dir", tmp_path / "work", timeout=120))
    assert "less than or equal" in line or "invalid" in line
    assert not (tmp_path / "work").exists()


def test_a_dataset_file_name_cannot_leave_the_work_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "...jsonl").write_text(json.dumps({"question": "What is 1 plus 1?", "answer": 2}) + "\n")
    before = set(tmp_path.iterdir())
    result = cli("run", *SMALL, "--dataset", tmp_path / "data" / "...jsonl", "--work-dir", tmp_path / "w" / "work")
    assert result.returncode == 0, result.stderr
    assert set(tmp_path.iterdir()) - before == {tmp_path / "w"}
    (path,) = (tmp_path / "w" / "work").glob("*/*+*+*")
    assert path.resolve().is_relative_to((tmp_path / "w" / "work").resolve())


def test_a_float_reference_beyond_exact_integers_is_graded_right(tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text('{"question": "What is ten to the 23rd?", "answer": 1e23}\n'
                    '{"question": "What is 27?", "answer": 27.0}\n')
    big, small = load_dataset(str(data)).samples
    assert big.reference == "1e+23" and small.reference == "27"
    assert grade("So the answer is $\\boxed{10^{23}}$.", big.reference, "math")
    assert grade("The answer is 100000000000000000000000.", big.reference, "gsm8k")
    assert not grade("The answer is 99999999999999991611392.", big.reference, "gsm8k")


def test_chat_save_to_a_bad_path_keeps_the_conversation(tmp_path):
    good = tmp_path / "saved.json"
    script = f"Say hi.\n/save {tmp_path}/no/such/folder/x.json\n/save /proc/x.json\n/save {good}\n/exit\n"
    result = subprocess.run([sys.executable, "-m", "inferencekit.cli", "chat", "--max-new-tokens", "8"],
                            input=script, capture_output=True, text=True, timeout=300, env=environment())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.count("error: cannot save to") == 2
    saved = json.loads(good.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]


@pytest.fixture(scope="module")
def namespaces() -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-Urm", "true"]).returncode != 0:
        pytest.skip("user and mount namespaces are not available here")


def in_namespace(setup: str, *args: str) -> subprocess.CompletedProcess:
    """`inferencekit ARGS` in a private mount namespace after the shell commands `setup` (mounts)."""
    command = " ".join(map(str, [sys.executable, "-m", "inferencekit.cli", *args]))
    return subprocess.run(["unshare", "-Urm", "sh", "-ec", f"{setup}\nexec {command}"], capture_output=True,
                          text=True, timeout=300, env=environment())


def test_a_full_disk_is_one_line(namespaces, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    setup = f"mount -t tmpfs -o size=64k tmpfs {disk}\nhead -c 1M /dev/zero > {disk}/fill 2>/dev/null || true"
    line = one_line_error(in_namespace(setup, "run", *SMALL, "--work-dir", disk / "work"), code=1)
    assert "No space left on device" in line


def test_a_read_only_run_folder_is_one_line(namespaces, small_run, tmp_path):
    _, path = copy_run(small_run, tmp_path)
    before = (path / "config.yaml").read_text()
    setup = f"mount --bind {path} {path}\nmount -o remount,ro,bind {path}"
    line = one_line_error(in_namespace(setup, "evaluate", path, "--in-place", "--box-match", "any"), code=1)
    assert "Read-only file system" in line
    assert (path / "config.yaml").read_text() == before


def test_invalid_utf8_in_a_config_file_is_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"model: smollm2-135m\nsystem_prompt: caf\xe9\n")
    assert "not UTF-8" in one_line_error(cli("run", "--config", config, "--work-dir", tmp_path / "work"))


@pytest.mark.parametrize("text", ['[1, 2]\n', '{"question": "q", "answer": "1"}\n["q", "1"]\n'])
def test_a_dataset_row_that_is_a_json_array_is_one_line(text, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(text)
    line = one_line_error(cli("run", "--dataset", data, "--work-dir", tmp_path / "work"))
    assert "rows.jsonl" in line and "row" in line


def test_write_atomic_leaves_no_temporary_file_when_the_rename_fails(tmp_path):
    (tmp_path / "x.json").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        write_atomic(tmp_path / "x.json", "{}")
    assert not list(tmp_path.glob(".*.tmp"))
