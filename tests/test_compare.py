"""`inferencekit compare`: 2x2 cells, exact McNemar p-value, intersection of index sets, md/json output."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest

from inferencekit.errors import UserError
from inferencekit.results.compare import compare_runs, format_markdown, mcnemar_exact
from inferencekit.results.evaluate import compute_metrics
from inferencekit.results.records import Record
from inferencekit.results.store import RunStore


def write_run(path: Path, outcomes: dict[int, tuple[bool, bool]], answer: str = "a") -> Path:
    """A real run folder: config, one record per index with votes majority and best, and metrics.

    `outcomes[index] = (majority correct, best correct)`.
    """
    store = RunStore(path)
    store.write_config("model: fake\nvotes: [majority, best]\n")
    records = []
    for index, (maj, best) in outcomes.items():
        reference = str(index)
        record = Record.from_dict({
            "index": index,
            "input": f"problem {index} | with a pipe",
            "reference": reference,
            "candidates": [{"text": "t", "answer": reference if maj else answer, "step_scores": [], "tokens": 3}],
            "predictions": {"majority": reference if maj else f"{answer}{index}", "best": reference},
            "correct": {"majority": maj, "best": best},
            "usage": {"seconds": 0.1, "completion_tokens": 3},
        })
        store.append(record)
        records.append(record)
    store.write_metrics(compute_metrics(records, ["majority", "best"], "last"))
    return path


# Run A vs B on indices 0..9 with the majority vote: 2 both right, 1 A only, 6 B only, 1 both wrong.
A_RIGHT = {0, 1, 2}
B_RIGHT = {0, 1, 3, 4, 5, 6, 7, 8}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", {i: (i in A_RIGHT, True) for i in range(10)}, answer="x")
    b = write_run(tmp_path / "b", {i: (i in B_RIGHT, False) for i in range(10)}, answer="y")
    return a, b


def test_mcnemar_exact_matches_hand_computation():
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (comb(7, 0) + comb(7, 1)) / 2**7) == pytest.approx(0.125)
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # capped: the two tails overlap
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)


def test_cells_and_p_value(runs):
    a, b = runs
    result = compare_runs(a, b, show=10)
    assert result["vote"] == "majority"  # the first vote both runs have
    assert result["cells"] == {"both_right": 2, "a_only": 1, "b_only": 6, "both_wrong": 1}
    assert result["shared"] == 10 and result["only_in_a"] == result["only_in_b"] == 0
    assert result["accuracy_a"] == pytest.approx(0.3) and result["accuracy_b"] == pytest.approx(0.8)
    assert result["mcnemar_p"] == pytest.approx(0.125)
    a_only = result["samples"]["a_only"]
    assert [s["index"] for s in a_only] == [2]
    assert a_only[0] == {"index": 2, "reference": "2", "answer_a": "2", "answer_b": "y2",
                         "input": "problem 2 | with a pipe"}
    assert [s["index"] for s in result["samples"]["b_only"]] == [3, 4, 5, 6, 7, 8]
    assert [s["index"] for s in result["samples"]["both_wrong"]] == [9]
    assert len(compare_runs(a, b, show=2)["samples"]["b_only"]) == 2

    other = compare_runs(a, b, vote="best")  # A all right, B all wrong: p = 2 / 2^10
    assert other["cells"] == {"both_right": 0, "a_only": 10, "b_only": 0, "both_wrong": 0}
    assert other["mcnemar_p"] == pytest.approx(2 / 1024)


def test_intersection_of_index_sets(tmp_path: Path):
    a = write_run(tmp_path / "a", {i: (i % 2 == 0, True) for i in range(8)})  # 0..7
    b = write_run(tmp_path / "b", {i: (True, True) for i in range(4, 12)})  # 4..11
    result = compare_runs(a, b)
    assert result["shared"] == 4 and result["only_in_a"] == 4 and result["only_in_b"] == 4
    assert result["cells"] == {"both_right": 2, "a_only": 0, "b_only": 2, "both_wrong": 0}
    assert "compared on the intersection (4 only in A, 4 only in B" in format_markdown(result)


def test_errors(tmp_path: Path, runs):
    a, b = runs
    with pytest.raises(UserError, match="not a run folder"):
        compare_runs(tmp_path / "missing", b)
    with pytest.raises(UserError, match="share no sample indices"):
        compare_runs(a, write_run(tmp_path / "c", {50: (True, True)}))
    with pytest.raises(UserError, match="vote 'weighted' is not graded in both runs; accepted: majority, best"):
        compare_runs(a, b, vote="weighted")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", "compare", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_markdown_json_and_errors(runs, tmp_path: Path):
    a, b = runs
    md = _cli(str(a), str(b), "--show", "3")
    assert md.returncode == 0, md.stderr
    assert "| **A right** | 2 | 1 |" in md.stdout and "| **A wrong** | 6 | 1 |" in md.stdout
    assert "p = 0.125" in md.stdout
    assert "## A wrong, B right (3 of 6 shown)" in md.stdout
    assert "| 2 | 2 | 2 | y2 | problem 2 \\| with a pipe |" in md.stdout  # pipes in text cannot break the table

    js = _cli(str(a), str(b), "--format", "json", "--vote", "best")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["vote"] == "best" and data["cells"]["a_only"] == 10 and data["mcnemar_p"] == pytest.approx(2 / 1024)

    bad = _cli(str(a), str(tmp_path / "nope"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli(str(a), str(b), "--vote", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("inferencekit: error: vote 'nope'")
