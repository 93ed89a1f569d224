"""One sweep against its runs one after another: what one engine shared by all cells buys.

    python benchmarks/sweep_throughput.py [--spec benchmarks/frontier-smoke.yaml] [--work-dir sweep-throughput]
                                          [--threads N]

Runs the spec's grid twice, each from scratch in its own folder: `inferencekit run --config RUN.yaml` for each
(cell, budget, seed) in turn (a process, a model load and a run each: what a user's shell loop does), then
`inferencekit sweep SPEC.yaml` (one process, one load, every run's problems in flight together). Both write the
same run folders; the script checks that they hold the same answers, then prints the wall seconds of each and
`ratio = serial seconds / sweep seconds` (target >= 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inferencekit.sweep.spec import load_spec, plan

HERE = Path(__file__).resolve().parent


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "inferencekit.cli", *args, "--no-progress"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def answers(folder: Path) -> dict[str, list]:
    """Per run folder: each problem's candidate texts and votes."""
    out = {}
    for run in sorted(folder.glob("*/*/*+*+*")):
        rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        out[run.name] = sorted((r["index"], [c["text"] for c in r["candidates"]], r["predictions"]) for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(HERE / "frontier-smoke.yaml"))
    ap.add_argument("--work-dir", default="sweep-throughput")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the model's default)")
    args = ap.parse_args()
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    spec = load_spec(args.spec)
    if args.threads:
        spec.settings["model_args"] = {**spec.settings.get("model_args", {}), "n_threads": args.threads}
    spec_file = work / "spec.yaml"
    work.mkdir(parents=True)
    spec_file.write_text(json.dumps(spec.model_dump()))  # JSON is YAML
    runs = plan(spec)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for planned in runs:  # the same folders the sweep makes, one `inferencekit run` each
            config = planned.config(work / "serial" / spec.name)
            path = Path(tmp, f"{planned.exp_name}.yaml")
            path.write_text(config.to_yaml())
            cli("run", "--config", str(path))
    serial = time.perf_counter() - start

    start = time.perf_counter()
    cli("sweep", str(spec_file), "--work-dir", str(work / "sweep"))
    swept = time.perf_counter() - start

    same = answers(work / "serial") == answers(work / "sweep")
    problems = sum(len(v) for v in answers(work / "sweep").values())
    print(f"grid: {len(runs)} runs of {spec.settings.get('limit')} problems ({problems} in all), spec {args.spec}")
    print(f"serial (inferencekit run, cell after cell): {serial:.1f} s")
    print(f"sweep (inferencekit sweep, one engine):     {swept:.1f} s")
    print(f"same answers: {same}")
    print(f"ratio = {serial / swept:.2f}")


if __name__ == "__main__":
    main()
