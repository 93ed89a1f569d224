"""A run folder's reproducibility record: what it holds, cached hashing, refusal of changed inputs on resume,
and that rerunning a finished run's config.yaml reproduces its predictions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inferencekit.results.provenance import hash_files, sha256_file

FAST = ["--max-new-tokens", "16", "--no-progress", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCEKIT_CACHE_DIR", str(tmp_path / "cache"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferencekit.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def run_dir(work: Path) -> Path:
    (path,) = work.glob("*/*+*+*")
    return path


def texts(path: Path) -> list[tuple[int, list[str]]]:
    rows = [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
    return sorted((r["index"], [c["text"] for c in r["candidates"]]) for r in rows)  # appended as each finishes


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 5000)
    digest = hashlib.sha256(b"x" * 5000).hexdigest()
    assert sha256_file(f) == digest
    cache = tmp_path / "cache" / "sha256.json"
    entries = json.loads(cache.read_text())
    (key,) = entries
    # A cached digest is trusted without reading the file again: poison it and it comes back.
    cache.write_text(json.dumps({key: "cached"}))
    assert sha256_file(f) == "cached"
    # A changed file (size and mtime) is hashed again, and its stale entry dropped.
    f.write_bytes(b"y" * 5001)
    assert sha256_file(f) == hashlib.sha256(b"y" * 5001).hexdigest()
    assert len(json.loads(cache.read_text())) == 1
    both = hash_files([f, tmp_path / "cache" / "sha256.json"], tmp_path)
    assert set(both["files"]) == {"weights.bin", "cache/sha256.json"} and len(both["sha256"]) == 64


def test_record_of_a_real_run(tmp_path, embedded_gguf):
    result = cli("run", *FAST, "--limit", "2", "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    path = run_dir(tmp_path / "w")
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["model"]["sha256"] == hashlib.sha256(embedded_gguf.read_bytes()).hexdigest()
    assert 100e6 < prov["model"]["n_params"] < 200e6  # SmolLM2-135M
    import inferencekit

    shipped = Path(inferencekit.__file__).parent / "presets" / "data" / "gsm8k-mini" / "test.jsonl"
    assert prov["dataset"]["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    (inv,) = prov["invocations"]
    for package in ("python", "torch", "transformers", "llama-cpp-python", "math-verify", "openai"):
        assert inv["versions"][package], package
    assert inv["machine"]["cores"] == os.cpu_count() and inv["machine"]["cpu"]
    assert inv["engine"]["n_ctx"] == 2048 and inv["engine"]["threads"] >= 1 and "flash_attn" in inv["engine"]
    assert inv["engine"]["amx"] == "auto" and isinstance(inv["engine"]["use_extra_bufts"], bool)  # which was used
    assert inv["finished"] >= inv["started"] and inv["generated"] == 2 and inv["failed"] == 0
    if (Path(inferencekit.__file__).parents[2] / ".git").exists():
        assert len(inv["inferencekit"]["git"]["commit"]) == 40
    # A resume adds an invocation and keeps the identity.
    again = cli("run", *FAST, "--limit", "2", "--work-dir", str(tmp_path / "w"))
    assert again.returncode == 0, again.stderr
    prov2 = json.loads((path / "provenance.json").read_text())
    assert len(prov2["invocations"]) == 2 and prov2["model"] == prov["model"]


def test_changed_dataset_or_model_bytes_are_refused_on_resume(tmp_path, embedded_gguf):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": 2 * i}) + "\n"
                            for i in range(3)))
    model = tmp_path / "model.gguf"
    shutil.copyfile(embedded_gguf, model)
    args = ["run", *FAST, "--limit", "1", "--model", str(model), "--dataset", str(data),
            "--work-dir", str(tmp_path / "w")]
    assert cli(*args).returncode == 0
    with data.open("a") as f:  # same first problem, other file
        f.write(json.dumps({"question": "What is 9 plus 9?", "answer": 18}) + "\n")
    refused = cli(*args)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "was run with another dataset" in refused.stderr and "--no-resume" in refused.stderr
    assert cli(*args, "--no-resume").returncode == 0  # starting over is allowed
    with model.open("ab") as f:
        f.write(b"\0")
    refused = cli(*args)
    assert refused.returncode == 2 and "was run with another model" in refused.stderr


@pytest.mark.parametrize("sampling", [[], ["--method", "best_of_n", "--n", "2", "--temperature", "0.8", "--seed", "7"]],
                         ids=["greedy", "seeded-sampling"])
def test_rerunning_config_yaml_reproduces_predictions(tmp_path, sampling):
    first = cli("run", *FAST, "--limit", "2", *sampling, "--work-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    original = run_dir(tmp_path / "a")
    again = cli("run", "--config", str(original / "config.yaml"), "--no-progress", "--work-dir", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    copy = run_dir(tmp_path / "b")
    assert copy.relative_to(tmp_path / "b") == original.relative_to(tmp_path / "a")
    assert texts(copy) == texts(original) and len(texts(copy)) == 2
    if sampling:
        assert len(set(texts(copy)[0][1])) == 2  # really sampled
    conf = lambda p: {k: v for k, v in yaml.safe_load((p / "config.yaml").read_text()).items() if k != "work_dir"}  # noqa: E731
    assert conf(copy) == conf(original)
    prov = [json.loads((p / "provenance.json").read_text()) for p in (original, copy)]
    assert prov[0]["model"]["sha256"] == prov[1]["model"]["sha256"]
    assert prov[0]["dataset"]["sha256"] == prov[1]["dataset"]["sha256"]


def test_a_data_dir_reached_through_a_symlink_is_hashed(tmp_path):
    """`--data-dir` through a symlink: the files' common root is resolved, so their names must be too
    (this raised ValueError: a path through the link is not relative to the real folder)."""
    from inferencekit.datasets import Dataset
    from inferencekit.results.identity import dataset_identity

    real = tmp_path / "real" / "mini"
    real.mkdir(parents=True)
    (real / "test.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    (real / "train.jsonl").write_text('{"problem": "2+2", "answer": "4"}\n')
    (tmp_path / "link").symlink_to(tmp_path / "real")
    through_link = [tmp_path / "link" / "mini" / name for name in ("test.jsonl", "train.jsonl")]
    ident = dataset_identity(Dataset("mini", [], files=through_link), "mini")
    direct = dataset_identity(Dataset("mini", [], files=[real / "test.jsonl", real / "train.jsonl"]), "mini")
    assert set(ident["files"]) == {"test.jsonl", "train.jsonl"} and ident == direct
