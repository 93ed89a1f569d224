"""`inferencekit report`: CSV table, PNG plots and one self-contained HTML page, checked in headless Chromium."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inferencekit.results.evaluate import compute_metrics
from inferencekit.results.records import Record
from inferencekit.results.report import build_report
from inferencekit.results.store import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def write_run(path: Path, n: int, problems: int = 6, reward: bool = False) -> Path:
    """A real run folder with `n` candidates per problem (step scores when `reward`); candidate j is right when
    j < (index % (n + 1)), and the majority vote is right on even indices."""
    store = RunStore(path)
    votes = ["majority", "weighted"] if reward else ["majority"]
    store.write_config(f"model: fake\nmethod: {'best_of_n' if n > 1 else 'cot'}\nn: {n}\nvotes: {votes}\n"
                       f"reward_model: {'fake-prm' if reward else 'null'}\n")
    records = []
    for i in range(problems):
        cands = [
            {
                "text": f"step one\n\nso the answer is \\boxed{{{i if j < i % (n + 1) else 99}}}"
                + (f" {EVIL} <b>not bold</b>" if i == 1 else ""),
                "answer": str(i if j < i % (n + 1) else 99),
                "step_scores": [0.9, 0.5 + 0.1 * j] if reward else [],
                "tokens": 10 + j,
                "correct": j < i % (n + 1),
            }
            for j in range(n)
        ]
        ok = i % 2 == 0
        record = Record.from_dict({
            "index": i,
            "input": f"What is {i}? <img src=x onerror=alert(2)>" if i == 1 else f"What is {i}?",
            "reference": str(i),
            "candidates": cands,
            "predictions": {v: str(i) if ok else "99" for v in votes},
            "correct": {v: ok for v in votes},
            "usage": {"seconds": 0.5, "completion_tokens": sum(c["tokens"] for c in cands),
                      **({"reward_calls": 1} if reward else {})},
        })
        store.append(record)
        records.append(record)
    store.write_metrics(compute_metrics(records, votes, "last"))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("runs")
    runs = [write_run(root / "gsm8k" / "fake+none+cot", 1), write_run(root / "gsm8k" / "fake+prm+bon", 4, reward=True)]
    out = root / "report"
    proc = subprocess.run([sys.executable, "-m", "inferencekit.cli", "report", *map(str, runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "report written" in proc.stdout
    return out, {p.name: p for p in out.iterdir()}


def test_files_and_table(report):
    out, files = report
    plots = {"accuracy_vs_n.png", "accuracy_vs_tokens.png", "accuracy_vs_flops.png"}
    assert {"index.html", "metrics.csv", *plots} <= set(files)
    for name in ("accuracy_vs_n.png", "accuracy_vs_tokens.png"):
        data = files[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    rows = list(csv.DictReader(files["metrics.csv"].open()))
    assert [(r["run"], r["vote"]) for r in rows] == [
        ("gsm8k/fake+none+cot", "majority"), ("gsm8k/fake+prm+bon", "majority"), ("gsm8k/fake+prm+bon", "weighted")]
    assert float(rows[0]["accuracy"]) == pytest.approx(0.5) and rows[0]["n"] == "6"
    assert float(rows[1]["tokens_per_problem"]) == pytest.approx(46.0) and rows[1]["samples_per_problem"] == "4"
    assert float(rows[1]["reward_calls"]) == 6

    page = files["index.html"].read_text()
    assert page.count('<tr class="m">') == 3 and "[18.8%, 81.2%]" in page  # Wilson interval of 3 / 6
    assert page.count("data:image/png;base64,") == 3  # accuracy vs N, tokens and FLOPs
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing outside the page
    # model and dataset text escaped, never markup
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "<b>not bold</b>" not in page
    assert page.count("<script>") == 1  # the page's own filter script only
    assert "0.900 0.800" in page  # step scores of a candidate


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=90,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    out, files = report
    url = files["index.html"].resolve().as_uri()
    proc = _chromium(tmp_path / "profile", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console  # no script errors, no CSP violations
    assert 'data-ready="1"' in dom  # the page's own script ran
    assert len(re.findall(r'<tr class="m">', dom)) == 3 and "fake+prm+bon" in dom
    assert dom.count('<details class="s"') == 12
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>alert(1)" not in dom

    shot = out / "screenshot.png"
    proc = _chromium(tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,1400", url)
    assert proc.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC)
    if os.environ.get("INFERENCEKIT_REPORT_SCREENSHOT"):  # keep a copy for a person to look at
        shutil.copyfile(shot, os.environ["INFERENCEKIT_REPORT_SCREENSHOT"])


def test_metrics_recomputed_without_metrics_json(tmp_path):
    run = write_run(tmp_path / "d" / "r", 2)
    stored = build_report([run], tmp_path / "stored")["metrics.csv"].read_text()
    (run / "metrics.json").unlink()
    recomputed = build_report([run], tmp_path / "out")["metrics.csv"].read_text()
    assert recomputed == stored  # the same table, from the predictions alone
    (row,) = csv.DictReader(io.StringIO(recomputed))
    # majority is right on the even indices of 6; 10 + 11 tokens and 0.5 s per problem
    assert (row["vote"], float(row["accuracy"]), row["correct"], row["n"]) == ("majority", 0.5, "3", "6")
    assert float(row["tokens_per_problem"]) == 21 and float(row["seconds"]) == 3.0


def test_not_a_run_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "inferencekit.cli", "report", str(tmp_path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
