"""`inferencekit evaluate` writes named evaluations beside a run and never leaves the run inconsistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inferencekit.config import RunConfig
from inferencekit.errors import UserError
from inferencekit.results.evaluate import compute_metrics
from inferencekit.results.records import Record
from inferencekit.results.reevaluate import evaluation_dirs, evaluation_name, reevaluate
from inferencekit.results.store import RunStore

VOTES = ["majority", "weighted", "best", "min_vote", "last_vote"]


def write_run(path: Path) -> Path:
    """A run with step scores where min and last aggregation disagree: candidate 0 (answer = reference) has a
    low first step and a high last step, candidates 1 and 2 (a wrong answer) the reverse."""
    store = RunStore(path)
    config = RunConfig(model="fake", dataset="gsm8k-mini", method="best_of_n", n=3, reward_model="fake-prm",
                       aggregation="min", votes=VOTES)
    store.write_config(config.to_yaml())
    records = []
    for i in range(4):
        steps = [[0.1, 0.99], [0.7, 0.2], [0.7, 0.3]]
        cands = [
            {"text": f"step\n\nThe answer is {ans}.", "answer": ans, "step_scores": s, "tokens": 5,
             "finish_reason": "stop", "correct": ans == str(i)}
            for ans, s in zip([str(i), "77", "77"], steps, strict=True)
        ]
        records.append(Record.from_dict({"index": i, "style": "gsm8k", "input": f"q{i}", "reference": str(i),
                                         "candidates": cands, "usage": {"completion_tokens": 15}}))
    from inferencekit.results.evaluate import apply_votes

    apply_votes(records, VOTES, "min")
    for r in records:
        store.append(r)
    store.write_metrics(compute_metrics(records, VOTES, "min"))
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    return {n: (path / n).read_bytes() for n in ("config.yaml", "metrics.json", "predictions.jsonl")}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_other_settings_go_to_a_named_evaluation_and_the_run_is_untouched(tmp_path):
    run = write_run(tmp_path / "run")
    before = snapshot(run)
    result = reevaluate(run, votes="weighted,majority", aggregation="last")
    assert snapshot(run) == before  # config.yaml, metrics.json, predictions.jsonl: byte for byte
    assert result.name == "aggregation=last,votes=weighted+majority"
    assert result.path == run / "evaluations" / result.name
    config = yaml.safe_load((result.path / "config.yaml").read_text())
    assert config["aggregation"] == "last" and config["votes"] == ["weighted", "majority"]
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert list(metrics["votes"]) == ["weighted", "majority"] and metrics["aggregation"] == "last"
    # last aggregation prefers candidate 0 (right); min preferred the wrong pair
    assert metrics["votes"]["weighted"]["accuracy"] == 1.0
    assert json.loads((run / "metrics.json").read_text())["votes"]["weighted"]["accuracy"] == 0.0
    about = json.loads((result.path / "evaluation.json").read_text())
    assert about["changes"] == {"votes": ["weighted", "majority"], "aggregation": "last"}
    assert evaluation_dirs(run) == [result.path]


def test_in_place_changes_config_and_metrics_together(tmp_path):
    run = write_run(tmp_path / "run")
    result = reevaluate(run, aggregation="last", votes=["weighted"], in_place=True)
    assert result.path == run and result.name is None and not (run / "evaluations").exists()
    config = yaml.safe_load((run / "config.yaml").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["aggregation"] == metrics["aggregation"] == "last"
    assert config["votes"] == list(metrics["votes"]) == ["weighted"]
    assert not list(run.glob(".*.tmp"))


def test_names_and_errors(tmp_path):
    run = write_run(tmp_path / "run")
    assert evaluation_name({}) == "regrade"
    assert reevaluate(run).path.name == "regrade"
    assert reevaluate(run, box_match="any", name="lenient").path == run / "evaluations" / "lenient"
    with pytest.raises(UserError, match="either --in-place"):
        reevaluate(run, name="x", in_place=True)
    with pytest.raises(UserError, match="evaluation name"):
        reevaluate(run, name="../escape")
    with pytest.raises(UserError, match="aggregation"):
        reevaluate(run, aggregation="max")
    with pytest.raises(UserError, match="unknown key 'no_such_setting'"):
        reevaluate(run, no_such_setting=1)


def test_cli_report_and_compare_address_evaluations(tmp_path):
    run = write_run(tmp_path / "data" / "fake+fake-prm+default")
    before = snapshot(run)
    result = cli("evaluate", str(run), "--aggregation", "last", "--name", "last")
    assert result.returncode == 0, result.stderr
    assert f"evaluation written to: {run / 'evaluations' / 'last'}" in " ".join(result.stdout.split())
    assert snapshot(run) == before
    report = cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert report.returncode == 0, report.stderr
    rows = (tmp_path / "rep" / "metrics.csv").read_text().splitlines()
    assert any("[evaluation last]" in r for r in rows) and any("[evaluation" not in r for r in rows[1:])
    compared = cli("compare", str(run), str(run / "evaluations" / "last"), "--vote", "weighted", "--format", "json")
    assert compared.returncode == 0, compared.stderr
    data = json.loads(compared.stdout)
    assert data["accuracy_a"] == 0.0 and data["accuracy_b"] == 1.0 and data["cells"]["b_only"] == 4
    in_place = cli("evaluate", str(run), "--aggregation", "last", "--in-place")
    assert in_place.returncode == 0, in_place.stderr
    assert json.loads((run / "metrics.json").read_text())["votes"]["weighted"]["accuracy"] == 1.0
    assert yaml.safe_load((run / "config.yaml").read_text())["aggregation"] == "last"
    bad = cli("evaluate", str(run), "--name", "a/b")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "evaluation name" in bad.stderr
