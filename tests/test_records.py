"""One record type reads and writes predictions.jsonl; old run folders still load; one answer-style decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferencekit.config import RunConfig
from inferencekit.datasets import load_dataset
from inferencekit.errors import UserError
from inferencekit.grading import answer_style
from inferencekit.results.compare import compare_runs
from inferencekit.results.records import CandidateRecord, Record, graded_style
from inferencekit.results.reevaluate import reevaluate
from inferencekit.results.report import load_run
from inferencekit.results.store import RunStore

# Lines as an early version wrote them: no style, prompt, finish_reason, unclosed_think, cost shares or
# per-candidate `correct`; index 1 written twice (a redo appended after a failure), then a torn last line.
OLD_LINES = [
    {"index": 0, "input": "How many?", "reference": "5",
     "candidates": [{"text": "The answer is \\boxed{5 \\text{ apples}}", "answer": None, "step_scores": [],
                     "tokens": 9},
                    {"text": "I think it is 6.", "answer": None, "step_scores": [], "tokens": 6}],
     "predictions": {"majority": "5"}, "correct": {"majority": True}, "usage": {"completion_tokens": 15}},
    {"index": 1, "input": "Twice?", "reference": "8", "failed": True, "error": "server gone", "candidates": [],
     "predictions": {}, "correct": {}, "usage": {}},
    {"index": 1, "input": "Twice?", "reference": "8",
     "candidates": [{"text": "So 8.", "answer": "8", "step_scores": [], "tokens": 3},
                    {"text": "So 8.", "answer": "8", "step_scores": [], "tokens": 3}],
     "predictions": {"majority": "8"}, "correct": {"majority": True}, "usage": {"completion_tokens": 6}},
]


def write_old_run(path: Path, dataset: str = "gsm8k-mini") -> Path:
    path.mkdir(parents=True)
    config = RunConfig(model="fake", dataset=dataset, method="best_of_n", n=2, votes=["majority"])
    (path / "config.yaml").write_text(config.to_yaml())
    text = "".join(json.dumps(line) + "\n" for line in OLD_LINES) + '{"index": 2, "inp'
    (path / "predictions.jsonl").write_text(text)
    return path


def test_an_old_run_folder_loads_with_the_last_record_per_index(tmp_path):
    records = RunStore(write_old_run(tmp_path / "old")).records()
    assert [r.index for r in records] == [0, 1]  # the torn line is skipped, index 1's redo wins
    assert not records[1].failed and records[1].candidates[0].answer == "8"
    first = records[0].candidates[0]
    assert first.finish_reason is None and first.unclosed_think is None and first.usage is None
    assert first.correct is None and records[0].style is None and records[0].prompt is None
    # written back, an old line gains no field it did not have
    assert records[0].to_dict() == OLD_LINES[0] and records[1].to_dict() == OLD_LINES[2]


def test_an_old_run_folder_evaluates_reports_and_compares(tmp_path):
    run = write_old_run(tmp_path / "old")
    result = reevaluate(run, votes="majority")
    graded = RunStore(result.path).records()
    # no style recorded: the dataset's name decides (GSM8K style reduces the boxed answer to its number)
    assert [c.answer for c in graded[0].candidates] == ["5", "6"]
    assert [c.correct for c in graded[0].candidates] == [True, False]
    assert graded[0].candidates[0].unclosed_think is False
    assert result.metrics["votes"]["majority"]["accuracy"] == 1.0 and result.metrics["n_samples"] == 2
    assert result.metrics["health"]["truncated"] == 0  # no finish_reason: not counted as truncated
    assert load_run(run, "old").n == 2
    assert compare_runs(run, result.path)["cells"]["both_right"] == 2


def test_the_record_round_trips_and_keeps_unknown_keys():
    record = Record(
        3, input="q", reference="7", style="math", prompt="p",
        candidates=[CandidateRecord("t", tokens=4, step_scores=[0.5, None], answer="7", correct=True,
                                    finish_reason="length", unclosed_think=False, usage={"seconds": 0.1},
                                    meta={"rounds": 2}, extra={"from_the_future": [1]})],
        predictions={"majority": "7"}, correct={"majority": True}, usage={"seconds": 0.1},
        extra={"note": "kept"},
    )
    line = record.to_line()
    assert line.endswith("\n") and "\n" not in line[:-1]
    data = json.loads(line)
    assert list(data)[:4] == ["index", "style", "input", "reference"]  # DESIGN.md's fields, then the rest
    assert data["candidates"][0]["from_the_future"] == [1] and data["note"] == "kept"
    assert Record.from_line(line) == record
    failed = Record.from_dict(data)
    failed.mark_failed("boom")
    assert failed.to_dict()["failed"] is True and failed.to_dict()["error"] == "boom"
    assert failed.candidates == [] and failed.predictions == {} and failed.correct == {}


def test_answer_style_is_decided_in_one_place(tmp_path):
    # 1. a declared style wins over the name; a bad one is refused with the accepted values
    assert answer_style("gsm8k", declared="math") == "math"
    assert answer_style("my-arith", declared="GSM8K") == "gsm8k"
    with pytest.raises(UserError, match="accepted: math, gsm8k"):
        answer_style("x", declared="latex")
    # 2. a file's reference: GSM8K's #### mark means gsm8k style, anything else math, whatever the name
    assert answer_style("gsm8k/test.jsonl", reference="\\frac{1}{2}") == "math"
    assert answer_style("data.jsonl", reference="so 3 + 4 = 7\n#### 7") == "gsm8k"
    # 3. the name
    assert answer_style("openai/gsm8k") == "gsm8k" and answer_style("math500") == "math"
    # callers: a local file, a preset, and a stored run all go through it
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "q", "answer": "a\n#### 7"}) + "\n")
    assert load_dataset(str(tmp_path / "d.jsonl")).style == "gsm8k"
    assert load_dataset("arith").style == "gsm8k"  # declared by its preset, though the name says math
    assert graded_style([Record(0), Record(1, style="math")], "gsm8k-mini") == "math"
    assert graded_style([Record(0)], "gsm8k-mini") == "gsm8k"
