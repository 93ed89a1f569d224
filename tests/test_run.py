"""End to end through the real command line, on the embedded GGUF model and on a tiny HF model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inferencekit.cli import main

FAST = ["--limit", "3", "--max-new-tokens", "40", "--no-progress", "--batch-size", "2"]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferencekit.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def run_dir(work: Path) -> Path:
    (path,) = work.glob("*/*+*+*")
    return path


def records(path: Path) -> list[dict]:
    """The records by index (a run appends each problem as it finishes, several being in flight at once)."""
    rows = [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["index"])


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory) -> Path:
    """One uninterrupted greedy run on the embedded model, shared by the tests below."""
    work = tmp_path_factory.mktemp("greedy")
    result = cli("run", *FAST, "--limit", "4", "--work-dir", str(work))
    assert result.returncode == 0, result.stderr
    assert "majority" in result.stdout and "tokens" in result.stdout
    return run_dir(work)


def test_run_folder_has_the_fixed_layout(greedy_run):
    assert greedy_run.parent.name == "gsm8k-mini" and greedy_run.name == "smollm2-135m+none+default"
    config = yaml.safe_load((greedy_run / "config.yaml").read_text())
    assert config["model"] == "smollm2-135m" and config["backend"] == "llamacpp" and config["limit"] == 4
    rows = records(greedy_run)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        assert {"index", "input", "reference", "candidates", "predictions", "correct", "usage"} <= set(row)
        (cand,) = row["candidates"]
        assert {"text", "answer", "step_scores", "tokens"} <= set(cand)
        assert 0 < cand["tokens"] <= 40 and cand["text"]
        assert row["usage"]["completion_tokens"] == cand["tokens"]
    metrics = json.loads((greedy_run / "metrics.json").read_text())
    m = metrics["votes"]["majority"]
    assert m["n"] == 4 and m["correct"] == sum(r["correct"]["majority"] for r in rows)
    assert 0 <= m["ci95"][0] <= m["accuracy"] <= m["ci95"][1] <= 1
    assert metrics["usage"]["completion_tokens"] == sum(r["candidates"][0]["tokens"] for r in rows)
    assert "resuming" not in (greedy_run / "run.log").read_text()


def test_rerun_resumes_without_generating(greedy_run):
    before = (greedy_run / "predictions.jsonl").read_bytes()
    result = cli("run", *FAST, "--limit", "4", "--work-dir", str(greedy_run.parents[1]))
    assert result.returncode == 0, result.stderr
    assert (greedy_run / "predictions.jsonl").read_bytes() == before
    assert "4 of 4 samples already finished" in (greedy_run / "run.log").read_text()


def test_sigkill_then_resume_gives_the_same_results(greedy_run, tmp_path):
    args = ["run", *FAST, "--limit", "4", "--batch-size", "1", "--work-dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "inferencekit.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    predictions = tmp_path / "gsm8k-mini" / "smollm2-135m+none+default" / "predictions.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if predictions.is_file() and predictions.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = predictions.read_bytes().count(b"\n")
    assert 2 <= killed_at < 4, "the run should have been killed part way"
    with predictions.open("ab") as f:  # and as if the kill had torn a line in half
        f.write(b'{"index": 2, "input": "torn')
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    resumed = run_dir(tmp_path)
    assert f"{killed_at} of 4 samples already finished" in (resumed / "run.log").read_text()
    strip = lambda rows: [(r["index"], r["candidates"][0]["text"], r["predictions"]) for r in rows]  # noqa: E731
    assert strip(records(resumed)) == strip(records(greedy_run))
    metrics = lambda p: json.loads((p / "metrics.json").read_text())["votes"]  # noqa: E731
    assert metrics(resumed) == metrics(greedy_run)


def test_changed_settings_are_refused_unless_no_resume(greedy_run, tmp_path):
    work = str(greedy_run.parents[1])
    result = cli("run", *FAST, "--limit", "4", "--work-dir", work, "--temperature", "0.5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "temperature: 0.0 -> 0.5" in result.stderr
    assert "--no-resume" in result.stderr and "Traceback" not in result.stderr


def test_no_resume_starts_over_and_keeps_old_results(tmp_path):
    first = cli("run", *FAST, "--limit", "1", "--work-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    path = run_dir(tmp_path)
    old = (path / "predictions.jsonl").read_text()
    again = cli("run", *FAST, "--limit", "1", "--work-dir", str(tmp_path), "--max-new-tokens", "8", "--no-resume")
    assert again.returncode == 0, again.stderr
    assert (path / "previous-1" / "predictions.jsonl").read_text() == old
    assert records(path)[0]["candidates"][0]["tokens"] <= 8


def test_best_of_n_with_votes_and_scaling_curves(tmp_path):
    result = cli("run", *FAST, "--limit", "2", "--method", "best_of_n", "--n", "4", "--temperature", "0.8",
                 "--seed", "3", "--work-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = run_dir(tmp_path)
    rows = records(path)
    assert all(len(r["candidates"]) == 4 for r in rows)
    assert len({c["text"] for c in rows[0]["candidates"]}) > 1  # sampled, not copies
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["curves"]) == {"pass@k", "maj@k"}
    assert list(metrics["curves"]["pass@k"]) == ["1", "2", "4"]
    pass_k = list(metrics["curves"]["pass@k"].values())
    assert pass_k == sorted(pass_k)  # pass@k never falls with k
    assert "pass@k" in result.stdout
    # The prompt's KV cache is shared between the 4 samples: fewer prompt tokens computed than sent.
    assert metrics["usage"]["computed_prompt_tokens"] < metrics["usage"]["prompt_tokens"]


def test_evaluate_regrades_without_generating(greedy_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(greedy_run, copy)
    rows = records(copy)
    rows[0]["candidates"][0]["text"] = f"... so the answer is \\boxed{{{rows[0]['reference']}}}"
    (copy / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("evaluate", str(copy), "--in-place")
    assert result.returncode == 0, result.stderr
    again = records(copy)
    assert again[0]["correct"]["majority"] is True and again[0]["predictions"]["majority"] == rows[0]["reference"]
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["votes"]["majority"]["correct"] == sum(r["correct"]["majority"] for r in again)
    assert not (copy / "evaluations").exists()
    bad = cli("evaluate", str(copy), "--vote", "weighted")
    assert bad.returncode == 2 and "need step scores" in bad.stderr


def test_tiny_hf_model_through_the_cli(tiny_llama_dir, tmp_path):
    result = cli("run", "--model", str(tiny_llama_dir), "--limit", "2", "--max-new-tokens", "6", "--no-progress",
                 "--work-dir", str(tmp_path), "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    path = run_dir(tmp_path)
    assert path.name == f"{tiny_llama_dir.name}+none+default"
    assert yaml.safe_load((path / "config.yaml").read_text())["backend"] == "hf"
    assert all(r["candidates"][0]["tokens"] <= 6 for r in records(path))
    # FLOPs use the loaded model's parameter count; its weight files are hashed
    from transformers import AutoModelForCausalLM

    provenance = json.loads((path / "provenance.json").read_text())
    assert provenance["model"]["n_params"] == AutoModelForCausalLM.from_pretrained(tiny_llama_dir).num_parameters()
    assert any(name.endswith(".safetensors") for name in provenance["model"]["files"])
    assert provenance["invocations"][0]["engine"]["torch_dtype"] == "torch.float32"


def test_local_dataset_file_and_gguf_path(tmp_path):
    from inferencekit.models.embedded import embedded_gguf_path

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {i} + {i}?", "a": 2 * i}) + "\n" for i in range(2)))
    result = cli("run", "--model", str(embedded_gguf_path()), "--dataset", str(data), "--input-field", "q",
                 "--reference-field", "a", "--max-new-tokens", "24", "--no-progress", "--work-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = run_dir(tmp_path)
    assert path.parent.name == "sums" and path.name.startswith("SmolLM2-135M-Instruct.Q4_1+none+")
    assert [r["reference"] for r in records(path)] == ["0", "2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["run", "--dataset", "gsm9k"], "unknown dataset 'gsm9k'; accepted: aime24, amc23, arith, gsm8k"),
        (["run", "--method", "magic"], "unknown method 'magic'; accepted: beam_search, best_of_n, budget_forcing, cot"),
        (["run", "--vote", "majority,mode"], "unknown vote 'mode'; accepted: "),
        (["run", "--vote", "weighted"], "need step scores: give --reward-model"),
        (["run", "--n", "many"], "argument --n: invalid int value: 'many'"),
        (["run", "--temperature", "-1"], "temperature: Input should be greater than or equal to 0"),
        (["run", "--aggregation", "max"], "aggregation: Input should be 'min', 'last', 'prod', 'mean' or 'model'"),
        (["run", "--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["run", "--model", "/nope/x.gguf"], "model file not found: /nope/x.gguf"),
        (["run", "--dataset", "math500", "--data-dir", "/nope"], "no test.jsonl/.json/.csv/.parquet in /nope/math500"),
        (["run", "--model-arg", "n_gpu=1"], "unknown model argument(s) n_gpu; accepted:"),
        (["evaluate", "/nope/run"], "/nope/run is not a run folder"),
        (["run", "--model-arg", "n_ctx=[1,"], "invalid model argument: n_ctx: Input should be a valid integer"),
        (["run", "--vote", ""], "votes: List should have at least 1 item"),
        (["run", "--model-arg", "n_ctx=64"], "does not fit the context of 64: raise it with --model-arg n_ctx=N"),
        (["run", "--reward-model", "no-such-prm"], "no-such-prm"),
        (["list", "widgets"], "invalid choice: 'widgets'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(args, message, tmp_path):
    result = cli(*args, "--work-dir", str(tmp_path)) if args[0] == "run" else cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_model_that_fails_to_load_says_why(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    result = cli("run", "--model", str(bad), "--limit", "1", "--work-dir", str(tmp_path))
    assert result.returncode == 2 and "could not load model" in result.stderr and str(bad) in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(("what", "expected"), [("models", "smollm2-135m"), ("datasets", "math500"),
                                                ("methods", "best_of_n"), ("votes", "weighted")])
def test_list(what, expected):
    result = cli("list", what)
    assert result.returncode == 0 and expected in result.stdout


def test_a_native_crash_prints_the_python_stacks_of_every_thread():
    # without it a fault inside llama.cpp or torch ends the process with at most one line from the C library
    code = "import ctypes; from inferencekit.cli import main; main(['list', 'methods']); ctypes.string_at(0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in result.stderr and "line 1 in <module>" in result.stderr


def test_version():
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"inferencekit {version('inferencekit')}"


@pytest.mark.parametrize("method", [
    ["--method", "best_of_n", "--n", "3"],
    ["--method", "beam_search", "--n", "4", "--beam-width", "2", "--reward-model", "self_certainty"],
])
def test_problems_in_flight_do_not_change_the_results(method, tmp_path):
    """Seeded sampling gives the same predictions with one problem at a time and with eight at once."""
    runs = []
    for k in ("1", "8"):
        result = cli("run", *FAST, "--limit", "8", "--max-new-tokens", "16", "--temperature", "0.8", "--seed", "5",
                     *method, "--concurrency", k, "--work-dir", str(tmp_path / k), timeout=900)
        assert result.returncode == 0, result.stderr
        runs.append(records(run_dir(tmp_path / k)))
    one, eight = runs
    assert [r["index"] for r in eight] == list(range(8))
    assert [[c["text"] for c in r["candidates"]] for r in one] == [[c["text"] for c in r["candidates"]] for r in eight]
    # step scores too, to the bit (a candidate's `usage` is its share of the costs: prompt-cache hits vary)
    assert [[_without_usage(c) for c in r["candidates"]] for r in one] == [
        [_without_usage(c) for c in r["candidates"]] for r in eight]
    assert [r["predictions"] for r in one] == [r["predictions"] for r in eight]
    assert len({c["text"] for r in one for c in r["candidates"]}) > 8  # sampled, not copies
    # each problem's usage is its own: the same whatever ran beside it
    keys = ("completion_tokens", "prompt_tokens", "calls")
    assert [[r["usage"][k] for k in keys] for r in one] == [[r["usage"][k] for k in keys] for r in eight]


def _without_usage(candidate: dict) -> dict:
    return {k: v for k, v in candidate.items() if k != "usage"}


def test_best_of_n_with_a_reward_model_then_revote(tmp_path):
    votes = "majority,weighted,best,min_vote,last_vote"
    result = cli("run", *FAST, "--limit", "2", "--method", "best_of_n", "--n", "4", "--temperature", "0.8",
                 "--reward-model", "mean_logprob", "--aggregation", "min", "--vote", votes,
                 "--work-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = run_dir(tmp_path)
    assert path.name == "smollm2-135m+mean_logprob+default"
    live = records(path)
    for row in live:
        assert set(row["predictions"]) == set(votes.split(","))
        for cand in row["candidates"]:
            assert cand["step_scores"] and all(0 < s <= 1 for s in cand["step_scores"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["curves"]) == {"pass@k", "maj@k", "weighted@k"}
    assert metrics["usage"]["reward_calls"] > 0 and metrics["usage"]["reward_prompt_tokens"] > 0
    # Scoring with the policy's own llama.cpp model counts as reward-model work, not generation.
    from inferencekit.models import load_generator, resolve_model

    policy = load_generator(resolve_model("smollm2-135m"))
    assert metrics["usage"]["prompt_tokens"] == 4 * sum(policy.count_tokens(r["prompt"]) for r in live)
    policy.close()
    # Re-voting the stored step scores with the same settings reproduces the live votes exactly ...
    same = cli("evaluate", str(path), "--vote", votes, "--aggregation", "min")
    assert same.returncode == 0, same.stderr
    assert [r["predictions"] for r in records(path / "evaluations" / "regrade")] == [r["predictions"] for r in live]
    # ... and another aggregation changes only what depends on it, in an evaluation of its own: the run's
    # config.yaml and metrics.json keep agreeing with each other.
    run_files = {n: (path / n).read_bytes() for n in ("config.yaml", "metrics.json", "predictions.jsonl")}
    other = cli("evaluate", str(path), "--vote", "majority,min_vote,last_vote,weighted", "--aggregation", "last")
    assert other.returncode == 0, other.stderr
    evaluation = path / "evaluations" / "aggregation=last,votes=majority+min_vote+last_vote+weighted"
    for before, after in zip(live, records(evaluation), strict=True):
        for name in ("majority", "min_vote", "last_vote"):
            assert after["predictions"][name] == before["predictions"][name]
    assert json.loads((evaluation / "metrics.json").read_text())["aggregation"] == "last"
    assert {n: (path / n).read_bytes() for n in run_files} == run_files
    assert json.loads((path / "metrics.json").read_text())["aggregation"] == "min"
    assert yaml.safe_load((path / "config.yaml").read_text())["aggregation"] == "min"


def test_reward_model_args_reach_the_reward_model(tiny_llama_dir, tiny_prm_dir, tmp_path, capsys):
    # The same seeded candidates scored by the tiny token-classification PRM: a format option (add_bos) and a
    # loader setting (max_length, inputs cut from the left) each change the step scores the run records.
    base = ["run", "--model", str(tiny_llama_dir), "--dtype", "float32", "--reward-model", str(tiny_prm_dir),
            "--method", "best_of_n", "--n", "2", "--temperature", "0.8", "--limit", "1", "--max-new-tokens", "12",
            "--no-progress", "--vote", "majority,weighted"]

    def scored(*extra: str) -> tuple[list[str], str]:  # in this process: torch is imported once
        work = tmp_path / str(len(list(tmp_path.iterdir())))
        assert main([*base, *extra, "--work-dir", str(work)]) == 0
        (row,) = records(run_dir(work))
        return [c["text"] for c in row["candidates"]], json.dumps([c["step_scores"] for c in row["candidates"]])

    texts, plain = scored()
    no_bos_texts, no_bos = scored("--reward-model-arg", "add_bos=false")
    with pytest.warns(UserWarning, match="longer than 8 tokens and were cut from the left"):
        cut_texts, cut = scored("--reward-model-arg", "max_length=8")
    assert no_bos_texts == cut_texts == texts and plain != no_bos and plain != cut
    capsys.readouterr()
    assert main(["run", *FAST, "--limit", "1", "--method", "best_of_n", "--n", "2", "--reward-model", "self_certainty",
                 "--reward-model-arg", "colour=blue", "--work-dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) colour" in err and err.count("\n") == 1


def test_unreadable_run_config_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("temperature: [unclosed\n")
    result = cli("evaluate", str(tmp_path))
    assert result.returncode == 2 and "cannot be read" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "config.yaml").write_text("no_such_key: 1\n")
    result = cli("evaluate", str(tmp_path))
    assert result.returncode == 2 and "unknown key 'no_such_key'" in result.stderr


def test_where_a_model_runs_may_change_on_resume(greedy_run):
    before = (greedy_run / "predictions.jsonl").read_bytes()
    result = cli("run", *FAST, "--limit", "4", "--work-dir", str(greedy_run.parents[1]), "--model-arg", "n_threads=1")
    assert result.returncode == 0, result.stderr
    # accepted as a resume: nothing regenerated, the records untouched, the new setting recorded
    assert (greedy_run / "predictions.jsonl").read_bytes() == before
    last = json.loads((greedy_run / "provenance.json").read_text())["invocations"][-1]
    assert last["generated"] == 0
    assert yaml.safe_load((greedy_run / "config.yaml").read_text())["model_args"]["n_threads"] == 1


class _FailsOnce:
    """The problems the test method below has failed already (it fails each once, as a dead server would)."""

    failed: set[int] = set()


def test_a_failed_problem_is_recorded_and_redone_without_stopping_the_others(tmp_path):
    from inferencekit.config import RunConfig
    from inferencekit.models.base import GenerationError
    from inferencekit.runner import run
    from inferencekit.search.base import METHODS, register_method
    from inferencekit.search.sampling import BestOfN

    @register_method("fails_once_for_test")
    class FailsOnce(BestOfN):
        def search(self, problem):
            if problem.index == 1 and 1 not in _FailsOnce.failed:
                _FailsOnce.failed.add(1)
                raise GenerationError("server at 127.0.0.1:1 gave up\nafter 3 tries")
            return super().search(problem)

    config = RunConfig(method="fails_once_for_test", limit=3, max_new_tokens=8, work_dir=str(tmp_path), concurrency=3)
    try:
        first = run(config, show_progress=False)
        again = run(config, show_progress=False)  # resuming redoes only the failed problem, appended
    finally:
        METHODS.unregister("fails_once_for_test")
    lines = [json.loads(line) for line in (first.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == [0, 1, 1, 2]  # the redo is appended, nothing rewritten
    (failed,) = [r for r in lines if r.get("failed")]
    assert failed["index"] == 1 and failed["candidates"] == []
    assert failed["error"] == "server at 127.0.0.1:1 gave up after 3 tries"  # one line
    assert all(r["candidates"] for r in lines if not r.get("failed"))  # the others ran beside it
    assert first.metrics["votes"]["majority"]["n"] == 2  # the failed problem counts in no accuracy
    assert again.problems_generated == 1  # resuming redid only the failed problem
    assert lines[-1]["index"] == 1 and not lines[-1].get("failed")
    assert again.metrics["votes"]["majority"]["n"] == 3
