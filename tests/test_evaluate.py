"""Votes, scaling curves and re-voting on resume, checked against values worked out by hand."""

from __future__ import annotations

import json

import pytest

from inferencekit.config import RunConfig
from inferencekit.datasets import load_dataset
from inferencekit.grading import Grader
from inferencekit.models import resolve_model
from inferencekit.results.evaluate import compute_metrics, grade_records
from inferencekit.results.provenance import begin_provenance
from inferencekit.results.records import CandidateRecord, Record
from inferencekit.results.store import RunStore, run_dir_for
from inferencekit.runner import run


def candidates(answers: list[str], right: list[bool], scores: list[float]) -> list[CandidateRecord]:
    return [CandidateRecord(f"... \\boxed{{{a}}}", tokens=3, step_scores=[0.5, s], answer=a, correct=ok)
            for a, ok, s in zip(answers, right, scores, strict=True)]


def test_maj_at_k_and_weighted_at_k_values_match_a_hand_computation():
    # Problem 0: answers 1 1 2 3, the two 1s right, last step scores .3 .2 .9 .1.
    #   pairs (in candidate order; a tie goes to the answer seen first):
    #   majority  {1,1} 1 ok, {1,2} 1 ok, {1,3} 1 ok, {1,2} 1 ok, {1,3} 1 ok, {2,3} 2 wrong  -> 5/6
    #   weighted  {1,1} ok, {.3 vs .9} wrong, {.3 vs .1} ok, {.2 vs .9} wrong, {.2 vs .1} ok, {2,3} wrong -> 3/6
    #   all four: majority 1 (ok); weighted 1: .5 vs 2: .9 -> 2 (wrong)
    # Problem 1: four right answers: every curve is 1.
    records = [
        Record(0, reference="1", candidates=candidates(["1", "1", "2", "3"], [True, True, False, False],
                                                        [0.3, 0.2, 0.9, 0.1])),
        Record(1, reference="5", candidates=candidates(["5"] * 4, [True] * 4, [0.4] * 4)),
    ]
    curves = compute_metrics(records, ["majority"], "last")["curves"]
    assert curves["pass@k"] == pytest.approx({"1": (0.5 + 1) / 2, "2": (1 - 1 / 6 + 1) / 2, "4": 1.0})
    assert curves["maj@k"] == pytest.approx({"1": (0.5 + 1) / 2, "2": (5 / 6 + 1) / 2, "4": 1.0})
    assert curves["weighted@k"] == pytest.approx({"1": (0.5 + 1) / 2, "2": (3 / 6 + 1) / 2, "4": (0 + 1) / 2})


def test_box_match_any_makes_the_vote_right_through_an_earlier_box():
    # Two candidates answer 7 (their last box) and win the majority; one of them boxed the gold 2 first,
    # so under --box-match any the vote for 7 is right, under last it is wrong.
    texts = ["So \\boxed{7}", "First \\boxed{2}, then on reflection \\boxed{7}", "So \\boxed{5}"]

    def graded(box_match: str) -> Record:
        record = Record(0, reference="2", candidates=[CandidateRecord(t, tokens=5) for t in texts])
        with Grader(workers=1) as grader:
            grade_records([record], grader, style="math", votes=["majority"], aggregation="last",
                          box_match=box_match)
        return record

    lenient, strict = graded("any"), graded("last")
    assert [c.answer for c in lenient.candidates] == ["7", "7", "5"] == [c.answer for c in strict.candidates]
    assert [c.correct for c in lenient.candidates] == [False, True, False]
    assert lenient.predictions == strict.predictions == {"majority": "7"}
    assert lenient.correct == {"majority": True} and strict.correct == {"majority": False}


def test_a_changed_vote_list_on_resume_revotes_the_stored_candidates(tmp_path):
    # A finished run voted by majority only; resumed with weighted added, nothing is generated (no model
    # loads) and the new vote is counted from the stored answers and step scores: majority is right on
    # problem 0 only, weighted (scores of the last step) on problem 1 only.
    old = RunConfig(dataset="gsm8k-mini", limit=2, method="best_of_n", n=3, reward_model="self_certainty",
                    backend="llamacpp", votes=["majority"], work_dir=str(tmp_path))
    spec = resolve_model(old.model, old.backend, old.model_args)
    path = run_dir_for(tmp_path, "gsm8k-mini", spec.name, "self_certainty", old.exp_name)
    store = RunStore(path)
    store.write_config(old.to_yaml())
    # as a run records it: a folder with results and no record of the model's hash is not resumed
    begin_provenance(path, old, spec, load_dataset("gsm8k-mini", limit=2), resume=False).write()
    stored = [
        Record(0, reference="1", candidates=candidates(["1", "1", "2"], [True, True, False], [0.1, 0.1, 0.9])),
        Record(1, reference="4", candidates=candidates(["3", "3", "4"], [False, False, True], [0.1, 0.1, 0.9])),
    ]
    for record in stored:
        record.predictions = {"majority": record.candidates[0].answer}
        record.correct = {"majority": record.index == 0}
        store.append(record)
    before = store.predictions_path.read_bytes()

    result = run(old.model_copy(update={"votes": ["majority", "weighted"]}), show_progress=False)
    assert result.problems_generated == 0 and store.predictions_path.read_bytes() == before
    votes = result.metrics["votes"]
    assert (votes["majority"]["correct"], votes["weighted"]["correct"]) == (1, 1)
    assert json.loads((path / "metrics.json").read_text())["votes"]["weighted"]["correct"] == 1
    # weighted alone: counted from the candidates again (problem 1 right), not from majority's verdicts
    result = run(old.model_copy(update={"votes": ["weighted"]}), show_progress=False)
    assert result.metrics["votes"]["weighted"]["correct"] == 1 and "majority" not in result.metrics["votes"]
