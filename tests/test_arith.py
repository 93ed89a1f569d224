"""The built-in `arith` dataset: the GPT-3 paper's arithmetic tasks, shipped and regenerable byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from inferencekit.datasets import dataset_names, load_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_arith.py"


def test_the_script_regenerates_the_shipped_file_byte_for_byte(tmp_path):
    import inferencekit

    shipped = Path(inferencekit.__file__).parent / "presets" / "data" / "arith" / "test.jsonl"
    out = tmp_path / "test.jsonl"
    made = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert out.read_bytes() == shipped.read_bytes()
    check = subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(shipped)], capture_output=True)
    assert check.returncode == 0
    out.write_bytes(out.read_bytes().replace(b"plus", b"minus", 1))
    assert subprocess.run([sys.executable, str(SCRIPT), "--check", "--out", str(out)]).returncode == 1


def test_problems_are_right_and_balanced():
    assert "arith" in dataset_names()
    data = load_dataset("arith")
    assert data.style == "gsm8k" and len(data.samples) == 240 and data.files
    tasks = Counter(s.meta["task"] for s in data.samples)
    assert tasks == {"1da": 40, "1ds": 40, "2da": 40, "2ds": 40, "3da": 40, "3ds": 40}
    assert [s.meta["task"] for s in data.samples[:6]] == ["1da", "1ds", "2da", "2ds", "3da", "3ds"]  # interleaved
    for s in data.samples:
        a, op, b = re.fullmatch(r"What is (\d+) (plus|minus) (\d+)\?", s.input).groups()
        bound = 10 ** int(s.meta["task"][0])
        assert int(a) < bound and int(b) < bound
        assert int(s.reference) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
    assert load_dataset("arith", limit=20).samples == data.samples[:20]
