"""`inferencekit sweep` and the frontier report: a real sweep on the embedded model, killed and resumed; the
report's statistics against hand computations."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from inferencekit.cli import main
from inferencekit.results.frontier import (
    Point,
    frontier_rows,
    paired_comparison,
    pareto_flags,
    render_html,
    seed_pooled_accuracy,
)

# 2 methods x 2 budgets x 2 seeds = 8 runs of 3 problems
SPEC = {
    "name": "tiny",
    "settings": {"dataset": "arith", "limit": 3, "temperature": 0.8, "max_new_tokens": 16, "batch_size": 2,
                 "model_args": {"n_threads": 1}},
    "seeds": [0, 1],
    "baseline": "bon",
    "cells": [{"name": "bon", "method": "best_of_n", "n": [1, 2]},
              {"name": "sc", "method": "cot", "votes": ["majority"], "n": [1, 2]}],
}
RUNS = 8
DESIGN_COLUMNS = {"cell", "method", "budget", "seeds", "problems", "accuracy", "ci_low", "ci_high",
                  "tokens_per_problem", "flops_per_problem", "seconds_per_problem", "pareto", "vs_baseline_diff",
                  "vs_baseline_p"}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def run_folders(sweep_dir: Path) -> dict[str, Path]:
    return {p.name.rsplit("+", 1)[1]: p for p in sweep_dir.glob("*/*+*+*")}


def results(sweep_dir: Path) -> dict[str, list]:
    """Per run: each problem's index, candidate texts and votes (the last line per index, as a resume reads)."""
    out = {}
    for exp, path in run_folders(sweep_dir).items():
        rows = {}
        for line in (path / "predictions.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[row["index"]] = (row["index"], [c["text"] for c in row["candidates"]], row["predictions"])
        out[exp] = [rows[i] for i in sorted(rows)]
    return out


def saved(sweep_dir: Path) -> int:
    """Problems saved so far in all the sweep's runs (lines of their predictions.jsonl)."""
    return sum(p.read_bytes().count(b"\n") for p in sweep_dir.glob("*/*/predictions.jsonl"))


def wait_while_running(proc: subprocess.Popen, done: Callable[[], bool], timeout: float = 240) -> None:
    """Poll until `done()` holds, the process ends, or `timeout` seconds pass (a bound on a hang, not a timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not done():
        time.sleep(0.05)


def frontier(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "frontier.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, int, Path]:
    """One uninterrupted sweep, run in this process with every llama.cpp model construction counted."""
    from inferencekit.models.llamacpp import LlamaCppGenerator
    from inferencekit.sweep import sweep

    work = tmp_path_factory.mktemp("sweep")
    spec = write_spec(work / "spec.yaml", SPEC)
    constructed = []
    real_init = LlamaCppGenerator.__init__

    def counting_init(self, *args, **kwargs):
        constructed.append(1)
        real_init(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(LlamaCppGenerator, "__init__", counting_init)
        result = sweep(spec, work_dir=work / "out", show_progress=False)
    assert len(result.runs) == RUNS and result.loads == 1
    return result.folder, len(constructed), spec


def test_the_engine_is_loaded_once_for_the_whole_sweep(reference):
    _, constructed, _ = reference
    assert constructed == 1


def test_every_cell_budget_and_seed_is_a_normal_run_folder(reference):
    folder, _, _ = reference
    runs = run_folders(folder)
    assert sorted(runs) == sorted(f"{c}-n{n}-seed{s}" for c in ("bon", "sc") for n in (1, 2) for s in (0, 1))
    for exp, path in runs.items():
        config = yaml.safe_load((path / "config.yaml").read_text())
        assert config["seed"] == int(exp[-1]) and config["n"] == int(exp.split("-n")[1][0])
        assert config["work_dir"] == str(folder) and path.parent.name == "arith"
        metrics = json.loads((path / "metrics.json").read_text())
        assert metrics["votes"]["majority"]["n"] == 3
        log = (path / "run.log").read_text()
        assert exp in log and all(other not in log for other in runs if other != exp)  # each run logs its own
    assert yaml.safe_load((folder / "sweep.yaml").read_text())["name"] == "tiny"


def test_frontier_files_agree_with_the_run_folders(reference):
    folder, _, _ = reference
    rows = frontier(folder)
    assert DESIGN_COLUMNS <= set(rows[0]) and len(rows) == 4
    assert all(name in os.listdir(folder) for name in ("frontier.csv", "frontier.md", "index.html", "frontier.png"))
    runs = run_folders(folder)
    for row in rows:
        assert row["seeds"] == "2" and row["problems"] == "3"
        outcomes, tokens = {}, []
        for seed in (0, 1):
            lines = (runs[f"{row['cell']}-n{row['budget']}-seed{seed}"] / "predictions.jsonl").read_text()
            recs = [json.loads(line) for line in lines.splitlines()]
            outcomes[seed] = {r["index"]: r["correct"]["majority"] for r in recs}
            tokens += [r["usage"]["completion_tokens"] for r in recs]
        assert float(row["accuracy"]) == pytest.approx(seed_pooled_accuracy(outcomes)["accuracy"])
        assert float(row["tokens_per_problem"]) == pytest.approx(sum(tokens) / 6)
        assert float(row["flops_per_problem"]) > 0 and float(row["seconds_per_problem"]) > 0
        assert (row["vs_baseline_diff"] == "") == (row["cell"] == "bon")


def test_sigkill_mid_sweep_then_rerun_equals_an_uninterrupted_sweep(reference, tmp_path):
    ref_folder, _, spec = reference
    args = [sys.executable, "-m", "inferencekit.cli", "sweep", str(spec), "--work-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    folder = tmp_path / "tiny"
    wait_while_running(proc, lambda: saved(folder) >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = saved(folder)
    assert 4 <= killed_at < 3 * RUNS, "the sweep should have been killed part way"
    assert not (folder / "frontier.csv").exists()
    torn = next(folder.glob("*/*/predictions.jsonl"))
    with torn.open("ab") as f:  # as if the kill had torn a line in half
        f.write(b'{"index": 2, "input": "torn')

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert results(folder) == results(ref_folder)
    # wall time, and FLOPs of prompt tokens computed (fewer when a prompt was still cached), vary from run to run
    varying = ("seconds_per_problem", "flops_per_problem")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in varying} for r in rows]  # noqa: E731
    assert drop(frontier(folder)) == drop(frontier(ref_folder))
    resumed = sum("already finished" in (p / "run.log").read_text() for p in run_folders(folder).values())
    assert resumed >= 1


def test_ctrl_c_stops_every_run_in_flight(tmp_path):
    """The first SIGINT reaches all the runs a sweep has in flight (before, only the last one started): each
    saves what finished, stops admitting problems and says so in its run.log, and the sweep exits 130."""
    limit = 40  # problems per run, far more than the runs have in flight (4 runs x concurrency 4)
    spec = write_spec(tmp_path / "long.yaml", {
        "name": "long", "seeds": [0, 1], "baseline": "bon",
        "settings": {"dataset": "arith", "limit": limit, "temperature": 0.8, "max_new_tokens": 48,
                     "batch_size": 2, "model_args": {"n_threads": 1}},
        "cells": [{"name": "bon", "method": "best_of_n", "n": [2, 4]}]})
    args = [sys.executable, "-m", "inferencekit.cli", "sweep", str(spec), "--work-dir", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    folder = tmp_path / "long"
    wait_while_running(proc, lambda: saved(folder) >= 1)
    at_signal = saved(folder)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the sweep kept running after SIGINT")
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    # only problems that were in flight could still be saved; before the fix, the runs the signal missed ran on
    assert saved(folder) <= at_signal + 4 * 4, (at_signal, saved(folder))
    assert not (folder / "frontier.csv").exists()
    logs = [p / "run.log" for p in run_folders(folder).values()]
    assert len(logs) == 4 and all("stopping (SIGINT)" in log.read_text() for log in logs)


def test_a_finished_sweep_reruns_without_loading_anything(reference):
    from inferencekit.sweep import sweep

    folder, _, spec = reference
    result = sweep(spec, work_dir=folder.parent, show_progress=False)
    assert result.loads == 0 and sum(r.problems_generated for r in result.runs) == 0


def test_a_changed_spec_is_refused_naming_the_keys(reference, tmp_path, capsys):
    folder, _, _ = reference
    changed = json.loads(json.dumps(SPEC))
    changed["settings"]["temperature"] = 0.5
    changed["cells"][0]["n"] = [1, 3]
    changed["settings"]["limit"] = 2  # how many problems: not a result-defining change
    before = (folder / "sweep.yaml").read_text()
    assert main(["sweep", str(write_spec(tmp_path / "spec.yaml", changed)), "--work-dir", str(folder.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "settings.temperature: 0.8 -> 0.5" in err and "cells.bon.n: [1, 2] -> [1, 3]" in err
    assert "limit" not in err
    assert (folder / "sweep.yaml").read_text() == before


def test_reordered_cells_are_the_same_spec_and_resume_in_the_new_order(reference, tmp_path):
    """The order of cells is the order runs start in (and rows are listed in): it can change mid-sweep."""
    import shutil

    from inferencekit.sweep import sweep

    folder, _, _ = reference
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    reordered = {**SPEC, "cells": SPEC["cells"][::-1]}
    result = sweep(write_spec(tmp_path / "spec.yaml", reordered), work_dir=tmp_path, show_progress=False)
    assert result.loads == 0 and sum(r.problems_generated for r in result.runs) == 0
    assert [row["cell"] for row in frontier(copy)] == ["sc", "sc", "bon", "bon"]
    assert results(copy) == results(folder)


def test_a_run_folder_with_other_settings_is_refused_before_anything_runs(reference, tmp_path, capsys):
    import shutil

    folder, _, spec = reference
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    runs = run_folders(copy)
    edited = runs["sc-n2-seed1"] / "config.yaml"  # the last run in spec order: found before the others resume
    config = yaml.safe_load(edited.read_text())
    config["temperature"] = 0.5
    edited.write_text(yaml.safe_dump(config))
    logs = {exp: (path / "run.log").read_text() for exp, path in runs.items()}
    assert main(["sweep", str(spec), "--work-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cell 'sc'" in err and "temperature: 0.5 -> 0.8" in err
    assert {exp: (path / "run.log").read_text() for exp, path in runs.items()} == logs  # no run started


def test_report_of_a_sweep_folder_rewrites_the_frontier_files(reference, capsys):
    folder, _, _ = reference
    before = frontier(folder)
    (folder / "frontier.csv").unlink()
    (folder / "index.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert "frontier written" in capsys.readouterr().out
    assert frontier(folder) == before
    assert (folder / "index.html").read_text().startswith("<!DOCTYPE html>")


def test_a_reward_model_is_loaded_once_for_all_cells_that_use_it(tmp_path):
    from inferencekit.sweep import sweep

    spec = {"name": "rm", "settings": {"dataset": "arith", "limit": 1, "max_new_tokens": 4, "temperature": 0.8,
                                        "reward_model": "mean_logprob", "votes": ["weighted", "majority"],
                                        "model_args": {"n_threads": 1}},
            "cells": [{"name": "bon", "method": "best_of_n", "n": [1, 2]}, {"name": "pf", "method": "particle_filter",
                                                                            "n": 2, "max_steps": 2}]}
    result = sweep(write_spec(tmp_path / "spec.yaml", spec), work_dir=tmp_path, show_progress=False)
    assert len(result.runs) == 3 and result.loads == 2  # the generator and the reward model, once each
    assert all(r.metrics["votes"]["weighted"]["n"] == 1 for r in result.runs)


def test_shards_split_the_runs_and_report_joins_them(tmp_path, capsys):
    spec = {"name": "sharded", "settings": {"dataset": "arith", "limit": 1, "max_new_tokens": 4,
                                             "model_args": {"n_threads": 1}},
            "cells": [{"name": "greedy", "method": "cot", "max_new_tokens": [4, 6]}]}
    path = write_spec(tmp_path / "spec.yaml", spec)
    work = ["--work-dir", str(tmp_path), "--no-progress"]
    assert main(["sweep", str(path), "--shard", "2/2", *work]) == 0
    folder = tmp_path / "sharded"
    assert sorted(run_folders(folder)) == ["greedy-max_new_tokens6-seed0"]
    assert not (folder / "frontier.csv").exists() and "once every shard has finished" in capsys.readouterr().out
    assert main(["sweep", str(path), "--shard", "1/2", *work]) == 0
    assert main(["report", str(folder)]) == 0
    assert [(r["cell"], r["budget_key"], r["budget"]) for r in frontier(folder)] == [
        ("greedy", "max_new_tokens", "4"), ("greedy", "max_new_tokens", "6")]


@pytest.mark.parametrize(("change", "message"), [
    ({"cells": [{"name": "a", "method": "cot", "beam_widht": 4}], "baseline": None},
     "cell 'a': unknown setting 'beam_widht'"),
    ({"cells": [{"name": "a", "method": "cot", "n": [1, 2], "beam_width": [2, 4]}], "baseline": None},
     "one budget axis"),
    ({"baseline": "nope"}, "baseline 'nope' is not a cell; accepted: bon, sc"),
    ({"settings": {"seed": 3}}, "'seed' is set by the sweep"),
    ({"settings": {"n": [1, 2]}}, "budget axes belong in a cell"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "run name(s) bon-n1-seed0, bon-n2-seed0, sc-n1-seed0, sc-n2-seed0 would be made twice"),
    ({"cells": [{"name": "a", "method": "cot", "n": [1]}, {"name": "a-n1", "method": "cot"}], "baseline": None},
     "run name(s) a-n1-seed0, a-n1-seed1 would be made twice"),
    ({"cells": [{"name": "a", "method": "beam_search", "n": [2]}], "baseline": None},
     "cell 'a': method beam_search needs"),
    ({"cels": []}, "unknown key 'cels'"),
    ({"cells": [{"name": "a", "method": "cot", "temperature": -1}], "baseline": None}, "cell 'a'"),
])
def test_spec_mistakes_are_one_line(change, message, tmp_path, capsys):
    bad = write_spec(tmp_path / "bad.yaml", {**SPEC, **change})
    assert main(["sweep", str(bad), "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "tiny").exists()


# ---------------------------------------------------------------- the statistics, by hand


def test_seed_pooled_accuracy_by_hand():
    stats = seed_pooled_accuracy({0: {0: True, 1: False, 2: True, 3: True}, 1: {0: True, 1: False, 2: False, 3: True}})
    assert stats["accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert stats["seed_se"] == pytest.approx(0.125)  # stdev(0.75, 0.5) = 0.17678 / sqrt(2)
    # Wilson for 5 of 8: centre (0.625 + z^2/16) / (1 + z^2/8), half z sqrt(0.625 * 0.375 / 8 + z^2/256) / (1 + z^2/8)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((0.305745, 0.863154), abs=1e-5)
    assert stats["problems"] == 4 and stats["seeds"] == 2
    one = seed_pooled_accuracy({0: {0: True, 1: False}})
    assert one["accuracy"] == 0.5 and one["seed_se"] is None


def test_paired_comparison_by_hand():
    a = {0: {0: True, 1: True, 2: False, 3: True, 4: False}}
    b = {0: {0: False, 1: True, 2: False, 3: False, 4: True, 5: True}}  # problem 5: only the baseline ran it
    got = paired_comparison(a, b)
    # per-problem differences 1, 0, 0, 1, -1: mean 0.2, sample sd sqrt(0.7), SE sqrt(0.7 / 5)
    half = 1.959964 * math.sqrt(0.7 / 5)
    assert got["pairs"] == 5 and got["diff"] == pytest.approx(0.2)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-5)
    assert got["p"] == pytest.approx(1.0)  # 2 vs 1 discordant: 2 * (1 + 3) / 8, capped at 1
    many = paired_comparison({0: {i: True for i in range(6)}}, {0: {i: i == 5 for i in range(6)}})
    assert many["p"] == pytest.approx(2 / 32) and many["diff"] == pytest.approx(5 / 6)  # 5 vs 0: 2 * 1 / 2^5


def test_paired_comparison_pools_seeds_by_problem():
    a = {0: {0: True, 1: False}, 1: {0: True, 1: True}}
    b = {0: {0: False, 1: False}, 1: {0: True, 1: False}}
    got = paired_comparison(a, b)
    # problem 0: differences 1 (seed 0), 0 (seed 1); problem 1: 0, 1 -> both means 0.5, no spread
    assert got["pairs"] == 4 and got["diff"] == pytest.approx(0.5)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.5, 0.5))
    assert got["p"] == pytest.approx(0.5)  # 2 vs 0 discordant: 2 * 1 / 4
    # no seed in common: each of a's seeds against the baseline's first
    other = paired_comparison({7: {0: True, 1: True}}, {0: {0: False, 1: True}, 1: {0: True, 1: True}})
    assert other["pairs"] == 2 and other["diff"] == pytest.approx(0.5)
    assert paired_comparison({0: {0: True}}, {0: {1: True}}) is None
    split = paired_comparison({0: {0: True, 1: False}}, {0: {0: False, 1: True}})  # +1 and -1: 1.96 either side
    assert split["diff"] == 0 and (split["ci_low"], split["ci_high"]) == (-1.0, 1.0)


def test_pareto_set_by_hand():
    costs = [10, 20, 20, 30, 5, 10]
    accs = [0.5, 0.6, 0.55, 0.6, 0.2, 0.5]
    # (20, .55) loses to (20, .6); (30, .6) to (20, .6); the two equal (10, .5) points both stay
    assert pareto_flags(costs, accs) == [True, True, False, False, True, True]


def test_rows_compare_with_the_baseline_budget_of_nearest_tokens():
    def point(cell, budget, tokens, right):
        p = Point(cell, "m", "n", budget, "majority")
        p.outcomes = {0: dict(enumerate(right))}
        p.tokens = [tokens] * len(right)
        return p

    points = [point("base", 1, 10, [True, False, False, False]), point("base", 4, 40, [True, True, False, False]),
              point("x", 2, 35, [True, True, True, False]), point("x", 8, 12, [False, False, False, False])]
    rows = frontier_rows(points, "base")
    assert [r["vs_baseline_budget"] for r in rows] == ["", "", 4, 1]
    assert rows[2]["vs_baseline_diff"] == pytest.approx(0.25) and rows[3]["vs_baseline_diff"] == pytest.approx(-0.25)
    assert [r["pareto"] for r in rows] == [True, False, True, False]
    assert rows[0]["seed_se"] == "" and rows[2]["vs_baseline_pairs"] == 4


def test_an_unfinished_run_marks_its_row_and_keeps_it_off_the_frontier(reference, tmp_path):
    """What `inferencekit report` says of a sweep still running: rows whose runs have problems left (or a seed
    not started) are marked, never on the Pareto frontier, and a row whose seeds finished different problem
    counts (its mean over seeds outside the pooled interval) still plots."""
    import shutil

    from inferencekit.results.frontier import load_points, plot_frontier, render_markdown, write_frontier

    folder = tmp_path / "tiny"
    shutil.copytree(reference[0], folder)
    runs = run_folders(folder)
    lines = (runs["bon-n2-seed1"] / "predictions.jsonl").read_text().splitlines(keepends=True)
    (runs["bon-n2-seed1"] / "predictions.jsonl").write_text("".join(lines[:1]))  # 1 of 3 problems, as if running
    shutil.rmtree(runs["sc-n1-seed1"])  # not started
    write_frontier(folder)
    rows = {(r["cell"], r["budget"]): r for r in frontier(folder)}
    assert {k: r["finished"] for k, r in rows.items()} == {
        ("bon", "1"): "True", ("bon", "2"): "False", ("sc", "1"): "False", ("sc", "2"): "True"}
    assert rows[("bon", "2")]["problems"] == "3" and rows[("sc", "1")]["seeds"] == "1"
    assert all(r["pareto"] == "False" for k, r in rows.items() if r["finished"] == "False")
    finished = [r for r in rows.values() if r["finished"] == "True"]
    flags = pareto_flags([float(r["tokens_per_problem"]) for r in finished], [float(r["accuracy"]) for r in finished])
    assert [r["pareto"] == "True" for r in finished] == flags
    points, _ = load_points(folder)
    table = render_markdown(frontier_rows(points, "bon"), "bon")
    assert table.count("(unfinished)") == 2 and "left off the Pareto frontier" in table

    lopsided = Point("x", "m", "n", 1, "majority", outcomes={0: dict.fromkeys(range(50), False), 1: {0: True}},
                     tokens=[10.0] * 51, finished=False)
    row = frontier_rows([lopsided], None)[0]
    assert row["accuracy"] == pytest.approx(0.5) and row["ci_high"] < 0.5  # mean of 0/50 and 1/1; pooled 1/51
    assert plot_frontier([row]).startswith(b"\x89PNG")


def test_the_page_escapes_every_value():
    row = {**{k: "" for k in ("vs_baseline_budget", "vs_baseline_diff", "vs_baseline_ci_low", "vs_baseline_ci_high",
                               "vs_baseline_p", "seed_se")},
           "cell": "<script>alert(1)</script>", "method": "a&b", "budget_key": "n", "budget": "<i>", "seeds": 1,
           "problems": 1, "finished": True, "accuracy": 1.0, "ci_low": 0.2, "ci_high": 1.0, "tokens_per_problem": 1.0,
           "flops_per_problem": 0.0, "seconds_per_problem": 0.0, "pareto": True}
    page = render_html([row], "<b>", b"png", "x<y")
    assert "<script>" not in page and "<i>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "a&amp;b" in page and "x&lt;y" in page


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", ["frontier.yaml", "frontier-smoke.yaml"])
def test_the_shipped_specs_are_valid(name, tmp_path):
    from inferencekit.search import method_names
    from inferencekit.sweep.execute import _configs
    from inferencekit.sweep.spec import load_spec

    spec = load_spec(BENCHMARKS / name)
    configs = _configs(spec, tmp_path, {})  # every run's config resolved and checked, nothing loaded
    assert {c.dataset for _, c in configs} == {"arith"}
    if name == "frontier.yaml":  # what issue 23 asks of the published frontier
        assert {c.method for _, c in configs} == set(method_names())
        assert all(c.limit >= 120 for _, c in configs) and max(c.n for _, c in configs) >= 16
        for cell in spec.cells:
            mine = [(p, c) for p, c in configs if p.cell == cell.name]
            assert len({repr(p.budget) for p, _ in mine}) >= 3, cell.name
            if mine[0][1].temperature > 0:
                assert len({p.seed for p, _ in mine}) >= 2, cell.name
            if mine[0][1].reward_model is not None:  # particle filtering needs scores in (0, 1)
                expected = "mean_logprob" if mine[0][1].method == "particle_filter" else "self_certainty"
                assert mine[0][1].reward_model == expected
        assert any(p.budget_key == "thinking_budget" for p, _ in configs)
