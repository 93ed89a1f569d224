"""Scale-out for real: pools of llama.cpp servers on 127.0.0.1, their faults, retries, shards, Ray actors.

Servers run the embedded model with one thread each (`python -m llama_cpp.server`), are started in
fixtures and always killed. Faults are real: SIGKILL of a server process, a proxy answering 429/503.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")

from inferencekit.config import RunConfig  # noqa: E402
from inferencekit.errors import UserError  # noqa: E402
from inferencekit.models import load_generator, resolve_model  # noqa: E402
from inferencekit.models.base import GenerationError, SamplingParams  # noqa: E402
from inferencekit.runner import run  # noqa: E402
from llama_servers import GGUF, Server, free_port  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture
def servers():
    """Start servers on demand; all are killed at the end whatever happened."""
    started: list[Server] = []

    def start(k: int = 1, port: int | None = None) -> list[Server]:
        new = [Server(port).start() for _ in range(k)]
        started.extend(new)
        return new

    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="module")
def two_servers():
    pair = [Server(), Server()]
    try:
        for s in pair:
            s.start()
        yield pair
    finally:
        for s in pair:
            s.kill()


def pool(urls: list[str], **args):
    return load_generator(resolve_model(GGUF, backend="openai", model_args={"base_url": ",".join(urls), **args}))


def cli(args: list[str], work: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", "run", *args, "--no-progress", "--work-dir", str(work)],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )


def spawn_run(args: list[str], work: Path, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """`inferencekit run` as a job of its own (a new session): killing it takes its grading workers too."""
    return subprocess.Popen(
        [sys.executable, "-m", "inferencekit.cli", "run", *args, "--no-progress", "--work-dir", str(work)],
        stdout=stdout, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL a spawned run and every process of its session, as a scheduler ends a job."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def last_per_index(path: Path) -> dict[int, dict]:
    return {r["index"]: r for r in lines(path)}


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


SMALL = dict(dataset="gsm8k-mini", limit=2, max_new_tokens=20, seed=3)


def config(work: Path, **changes) -> RunConfig:
    return RunConfig(**{**SMALL, "model": GGUF, "work_dir": str(work), **changes})


def outcome(result) -> tuple[dict, list]:
    records = sorted(lines(result.run_dir / "predictions.jsonl"), key=lambda r: r["index"])  # completion order
    return ({v: m["accuracy"] for v, m in result.metrics["votes"].items()},
            [(r["index"], [(c["text"], c["answer"]) for c in r["candidates"]]) for r in records])


# -- pools: same answers as the in-process engine ---------------------------------------------------------


@pytest.mark.parametrize("method", ["cot", "best_of_n", "beam_search"])
def test_pool_of_two_matches_the_in_process_engine(method, two_servers, tmp_path):
    extra = {"n": 2, "beam_width": 2, "max_steps": 2, "reward_model": "llm_judge"} if method == "beam_search" else {}
    if method == "best_of_n":
        extra = {"n": 3}
    local = run(config(tmp_path / "local", method=method, backend="llamacpp", model_args={"n_threads": 1}, **extra),
                show_progress=False)
    urls = [s.url for s in two_servers]
    args = {"base_url": urls}  # no extra_body: the openai backend sends neutral sampling settings itself
    served = run(config(tmp_path / "pool", method=method, backend="openai", model_args=args, **extra),
                 show_progress=False)
    assert outcome(served) == outcome(local)
    assert len(outcome(served)[1]) == 2


def test_affinity_keeps_a_problem_on_one_server_and_spreads_the_rest(two_servers):
    gen = pool([s.url for s in two_servers])
    try:
        params = SamplingParams(max_new_tokens=4)
        prompts = [f"Say {k}." for k in range(8)]
        for key in ("problem-a", "problem-b"):
            before = list(gen.requests_per_replica)
            gen.bind(affinity=key).generate(prompts, params)
            sent = [a - b for a, b in zip(gen.requests_per_replica, before, strict=True)]
            assert sorted(sent) == [0, 8]  # all eight on one server
        before = list(gen.requests_per_replica)
        gen.generate(prompts, params)  # no affinity: least outstanding spreads them
        sent = [a - b for a, b in zip(gen.requests_per_replica, before, strict=True)]
        assert min(sent) >= 2 and sum(sent) == 8
    finally:
        gen.close()


def test_health_check_names_a_dead_endpoint_and_another_model(two_servers):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match=f"{dead}: does not answer"):
        pool([two_servers[0].url, dead])
    other = resolve_model("some-other-model", backend="openai", model_args={"base_url": two_servers[0].url})
    with pytest.raises(UserError, match="serves .*SmolLM2.*, not some-other-model"):
        load_generator(other)


# -- faults ------------------------------------------------------------------------------------------------


FAULT_RUN = ["--backend", "openai", "--model", GGUF, "--method", "best_of_n", "--n", "2", "--temperature", "0.7",
             "--max-new-tokens", "24", "--batch-size", "2", "--limit", "6"]


def wait_for_first_record(work: Path) -> None:
    """Until the run under `work` has appended its first problem (a kill then lands mid-run)."""
    wait_for(lambda: len(lines(next(iter(work.glob("*/*/predictions.jsonl")), Path("/nonexistent")))) >= 1)


def test_sigkill_of_one_server_mid_run_loses_nothing(servers, tmp_path):
    a, b = servers(2)
    args = [*FAULT_RUN, "--model-arg", f"base_url={a.url},{b.url}", "--model-arg", "retry_delay=0.05"]
    proc = spawn_run(args, tmp_path, stdout=subprocess.PIPE)
    try:
        wait_for_first_record(tmp_path)
        b.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        kill_job(proc)
    assert proc.returncode == 0, err
    (path,) = tmp_path.glob("*/*/predictions.jsonl")
    records = lines(path)
    assert sorted(r["index"] for r in records) == list(range(6))  # every sample once
    assert not any(r.get("failed") for r in records)
    assert all(len(r["candidates"]) == 2 for r in records)
    log = (path.parent / "run.log").read_text()
    assert f"request to {b.url} failed" in log  # its in-flight requests went to the other server


def test_the_only_server_dies_samples_fail_then_a_rerun_completes_them(servers, tmp_path):
    (only,) = servers(1)
    args = [*FAULT_RUN, "--model-arg", f"base_url={only.url}", "--model-arg", "retry_delay=0.05",
            "--model-arg", "max_retries=2"]
    proc = spawn_run(args, tmp_path, stdout=subprocess.PIPE)
    try:
        wait_for_first_record(tmp_path)
        only.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        kill_job(proc)
    assert proc.returncode == 0, err
    assert "failed" in err and "rerun the same command" in err and "Traceback" not in err
    (path,) = tmp_path.glob("*/*/predictions.jsonl")
    first = last_per_index(path)
    failed = [i for i, r in first.items() if r.get("failed")]
    assert failed and len(first) == 6
    assert all("connection failed" in first[i]["error"] for i in failed)
    metrics = json.loads((path.parent / "metrics.json").read_text())
    assert metrics["failed"] == len(failed) and metrics["votes"]["majority"]["n"] == 6 - len(failed)

    servers(1, port=only.port)  # the server is back: a rerun of the same command redoes the failed ones
    again = cli(args, tmp_path)
    assert again.returncode == 0, again.stderr
    final = last_per_index(path)
    assert sorted(final) == list(range(6)) and not any(r.get("failed") for r in final.values())
    assert sorted(r["index"] for r in lines(path)[len(first):]) == sorted(failed)  # only those were redone
    assert json.loads((path.parent / "metrics.json").read_text())["votes"]["majority"]["n"] == 6


class FlakyProxy:
    """Answers the first completion requests with the `faults` statuses (a 429 with `Retry-After: retry_after`),
    then passes requests on."""

    def __init__(self, upstream: str, faults: list[int], retry_after: str = "1") -> None:
        self.faults, self.retry_after = list(faults), retry_after
        self.seen: list[int] = []  # status answered, per completion request
        self.keys: set[str] = set()  # Authorization headers received
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(upstream + self.path.removeprefix("/v1"), data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as response:
                    data = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                proxy.keys.add(self.headers.get("Authorization", ""))
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = proxy.faults.pop(0) if proxy.faults else 200
                proxy.seen.append(status)
                if status == 200:
                    return self._forward(body)
                data = b'{"error": {"message": "busy"}}'
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", proxy.retry_after)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retries_then_give_up_with_generation_error(two_servers):
    proxy = FlakyProxy(two_servers[0].url, [429, 503])
    gen = pool([proxy.url], retry_delay=0.05)
    try:
        (completion,) = gen.generate(["Say yes."], SamplingParams(max_new_tokens=4))[0]
        assert completion.text
        assert proxy.seen == [429, 503, 200]  # two retries, then it passed
        assert gen.failures_per_replica == [2]

        proxy.faults = [503] * 10
        proxy.seen.clear()
        with pytest.raises(GenerationError, match=r"HTTP 503.*after 6 attempts"):
            gen.generate(["Say no."], SamplingParams(max_new_tokens=4))
        assert len(proxy.seen) == 6  # the first try and max_retries=5 retries
    finally:
        gen.close()
        proxy.close()


def test_a_replica_that_asks_to_wait_is_sent_nothing_meanwhile(two_servers):
    # Retry-After honoured without a clock: the replica that answered 429 "wait 300 s" gets no request
    # while the other serves the retry and every later prompt (each prompt's own affinity).
    proxy = FlakyProxy(two_servers[0].url, [429], retry_after="300")
    gen = pool([proxy.url, two_servers[1].url], retry_delay=0.05)
    try:
        for k in range(6):
            (completion,) = gen.generate([f"Say {k}."], SamplingParams(max_new_tokens=2))[0]
            assert completion.text
        assert proxy.seen == [429] and gen.failures_per_replica == [1, 0]
        assert gen.requests_per_replica == [1, 6]
    finally:
        gen.close()
        proxy.close()


# -- shards ------------------------------------------------------------------------------------------------


SHARD_RUN = ["--model", GGUF, "--model-arg", "n_threads=1", "--method", "best_of_n", "--n", "2", "--temperature",
             "0.8", "--max-new-tokens", "16", "--limit", "7", "--batch-size", "1", "--exp-name", "e"]


def test_three_shards_one_killed_and_resumed_merge_to_the_unsharded_run(tmp_path):
    whole = cli(SHARD_RUN, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    work = tmp_path / "sharded"
    procs = {i: spawn_run([*SHARD_RUN, "--shard", f"{i}/3"], work) for i in (1, 2, 3)}
    try:
        shard2 = lambda: next(iter(work.glob("*/*/shard-2-of-3/predictions.jsonl")), Path("/nonexistent"))  # noqa: E731
        wait_for(lambda: len(lines(shard2())) >= 1)
        kill_job(procs[2])
        for i, p in procs.items():
            p.wait(timeout=300)
            assert i == 2 or p.returncode == 0, p.stderr.read()
    finally:
        for p in procs.values():
            kill_job(p)
    (run_dir,) = work.glob("*/*")
    assert sorted(p.name for p in run_dir.iterdir()) == ["shard-1-of-3", "shard-2-of-3", "shard-3-of-3"]
    partial = len(lines(shard2()))
    merge = subprocess.run([sys.executable, "-m", "inferencekit.cli", "merge", str(run_dir)], capture_output=True,
                           text=True, env=ENV, timeout=120)
    if partial < 2:  # killed before it finished (it holds problems 1 and 4 of 0..6): merge refuses
        assert merge.returncode == 2 and "shard 2/3 is unfinished" in merge.stderr
    resumed = cli([*SHARD_RUN, "--shard", "2/3"], work)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["index"] for r in lines(shard2())) == [1, 4]  # kept what it had, appended the rest once

    merge = subprocess.run([sys.executable, "-m", "inferencekit.cli", "merge", str(run_dir)], capture_output=True,
                           text=True, env=ENV, timeout=120)
    assert merge.returncode == 0, merge.stderr
    (whole_dir,) = (tmp_path / "whole").glob("*/*")
    # a candidate's `usage` is its share of the costs (prompt-cache hits vary); all else must match
    results = lambda cands: [{k: v for k, v in c.items() if k != "usage"} for c in cands]  # noqa: E731
    key = lambda r: (r["index"], results(r["candidates"]), r["predictions"], r["correct"])  # noqa: E731
    merged_rows, single_rows = (sorted(lines(d / "predictions.jsonl"), key=lambda r: r["index"])
                                for d in (run_dir, whole_dir))
    assert [key(r) for r in merged_rows] == [key(r) for r in single_rows]
    merged, single = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, whole_dir))
    assert merged["votes"] == single["votes"] and merged["n_samples"] == 7
    assert merged.get("curves") == single.get("curves")


def test_merge_refuses_shards_with_other_settings(tmp_path):
    import shutil

    from inferencekit.results.shards import merge

    for i in (1, 2):
        assert cli([*SHARD_RUN, "--limit", "2", "--shard", f"{i}/2"], tmp_path).returncode == 0
    (run_dir,) = tmp_path.glob("*/*")
    assert merge(run_dir)["n_samples"] == 2
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    cfg = other / "shard-2-of-2" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_new_tokens: 16", "max_new_tokens: 17"))
    with pytest.raises(UserError, match=r"shard 2/2 was run with other settings .*max_new_tokens: 16 vs 17"):
        merge(other)
    shutil.rmtree(other / "shard-1-of-2")
    with pytest.raises(UserError, match=r"shard\(s\) 1/2 not run yet"):
        merge(other)


def test_bad_shard_is_one_clear_error(tmp_path):
    result = cli(["--shard", "4/3", "--limit", "1"], tmp_path)
    assert result.returncode == 2 and "1 <= I <= K" in result.stderr and result.stderr.count("\n") == 1


# -- Ray ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    yield ray
    ray.shutdown()


def test_ray_actor_killed_mid_run_same_result_as_one_process(ray_cluster, tmp_path, monkeypatch):
    from inferencekit.models import ray_executor

    pools: list = []
    original = ray_executor.RayPool.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(ray_executor.RayPool, "__init__", spy)
    same = dict(method="cot", limit=6, max_new_tokens=48, batch_size=2, model_args={"n_threads": 1})
    local = run(config(tmp_path / "local", **same), show_progress=False)

    killed: list[int] = []

    def kill_mid_run() -> None:
        wait_for(lambda: bool(pools) and pools[0]._states[1].outstanding > 0)
        ray_cluster.kill(pools[0].actors[1], no_restart=False)  # Ray restarts it; its request goes elsewhere
        killed.append(1)

    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    result = run(config(tmp_path / "ray", executor="ray", replicas=2, **same), show_progress=False)
    killer.join(timeout=5)
    assert killed and pools[0].failures_per_replica[1] >= 1
    assert outcome(result) == outcome(local)
    assert sorted(r["index"] for r in lines(result.run_dir / "predictions.jsonl")) == list(range(6))


def test_ray_per_problem_usage_is_exactly_the_in_process_engines(ray_cluster, tmp_path):
    """Each actor returns the work done for each request, so a problem's usage is the same under Ray."""
    same = dict(method="best_of_n", n=2, temperature=0.8, limit=3, max_new_tokens=24, concurrency=1,
                model_args={"n_threads": 1})
    local = run(config(tmp_path / "local", **same), show_progress=False)
    result = run(config(tmp_path / "ray", executor="ray", replicas=1, **same), show_progress=False)
    assert outcome(result) == outcome(local)
    keys = ("calls", "prompt_tokens", "computed_prompt_tokens", "completion_tokens")
    usage = {r["index"]: {k: r["usage"][k] for k in keys} for r in lines(local.run_dir / "predictions.jsonl")}
    assert {r["index"]: {k: r["usage"][k] for k in keys} for r in lines(result.run_dir / "predictions.jsonl")} == usage
    assert all(u["calls"] == 1 and u["computed_prompt_tokens"] < u["prompt_tokens"] for u in usage.values())


def test_a_client_error_is_not_retried_and_frees_the_batch_slots(two_servers):
    proxy = FlakyProxy(two_servers[0].url, [400])
    gen = pool([proxy.url], max_batch_sequences=1)  # one request in flight: the second prompt waits for a slot
    try:
        with pytest.raises(GenerationError, match=r"HTTP 400.*after 1 attempt\)"):
            gen.generate(["Say a.", "Say b."], SamplingParams(max_new_tokens=4))
        assert proxy.seen[:1] == [400] and len(proxy.seen) <= 2  # the 400 not retried
        (completion,) = gen.generate(["Say c."], SamplingParams(max_new_tokens=4))[0]  # no slot was left taken
        assert completion.text and gen.failures_per_replica == [0]
    finally:
        gen.close()
        proxy.close()


def test_the_api_key_comes_from_a_file_and_is_written_nowhere(two_servers, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-test-secret-123\n")
    proxy = FlakyProxy(two_servers[0].url, [])
    try:
        result = run(config(tmp_path / "work", limit=1, max_new_tokens=4, backend="openai",
                            model_args={"base_url": proxy.url, "api_key_file": str(key_file)}), show_progress=False)
    finally:
        proxy.close()
    assert proxy.keys == {"Bearer sk-test-secret-123"}
    written = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"config.yaml", "predictions.jsonl", "metrics.json", "run.log"}
    assert not any("sk-test-secret-123" in p.read_text() for p in written)


def test_retry_delays_follow_retry_after_else_jittered_exponential_backoff():
    from inferencekit.models.openai import _retry_after
    from inferencekit.models.pool import RetryPolicy

    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 50 < _retry_after({"retry-after": later}) <= 60
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({}) is None
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert policy.delay(0, retry_after=7.0) == 7.0 and RetryPolicy(max_retry_after=5).delay(0, 60.0) == 5
    for attempt, cap in ((0, 0.5), (1, 1.0), (2, 2.0), (5, 4.0)):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2  # full jitter up to the cap
