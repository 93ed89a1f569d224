"""What inferencekit costs over the engine it drives: best-of-N on GSM8K, ours vs the engine's own API kept full.

    python benchmarks/engine_overhead.py [--backend llamacpp|hf] [--limit 20] [--n 8] [--max-new-tokens 256]

Ours: `inferencekit.runner.run` (best_of_n, the embedded SmolLM2-135M GGUF, temperature 0.8) end to end:
problems in flight, continuous batching, grading, the run folder. Its tokens per second are the
generated tokens over the generation seconds the run records (the problems' shared wall time).
Raw: the same prompts (the runner's own, read back from its run folder) and the same number of
samples, driven directly with the engine's API and kept full:

- llamacpp: a minimal continuous-batching loop on llama.cpp's batch API (`llama_decode`, one sampler
  chain per sequence: top-p, temperature, seeded draw), `--width` sequences with a KV stream each
  (llama.cpp's faster layout for many sequences: a unified cache makes every query read every
  sequence's cells), each finished sequence's slot refilled at the next step with the next sample's
  prompt (evaluated in the same batch); the same llama.cpp thread count on both sides;
- hf: transformers' continuous batching (`model.generate_batch`, paged attention) on the GGUF
  dequantised to float32, falling back to one padded `model.generate` where it is missing.

Both sides count the tokens they generated (EOS included) over their own generation seconds; model
loading is outside both. The last line is `ratio=<ours tok/s / raw tok/s>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from inferencekit.config import RunConfig
from inferencekit.models.embedded import embedded_gguf_path
from inferencekit.results.store import RunStore
from inferencekit.runner import run

ROOT = Path(__file__).resolve().parents[1]
# the shipped data: ../shared/data beside the checkout (DESIGN.md), or the workplace's copy
DATA = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
            ROOT.parent / "shared" / "data")


def ours(args: argparse.Namespace, work: Path) -> tuple[float, int, list[str]]:
    """(generation seconds, tokens, prompts) of the job through inferencekit."""
    config = RunConfig(
        model="smollm2-135m", backend=args.backend, dataset="gsm8k", data_dir=str(args.data_dir), limit=args.limit,
        method="best_of_n", n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, work_dir=str(work),
        model_args={"dtype": "float32"} if args.backend == "hf" else {"n_threads": args.threads},
    )
    start = time.perf_counter()
    result = run(config, show_progress=False)
    wall = time.perf_counter() - start
    usage = result.metrics["usage"]
    records = RunStore(result.run_dir).records()  # by index
    print(f"inferencekit: {usage['completion_tokens']} tokens in {usage['seconds']:.1f} s generating "
          f"({wall:.1f} s wall with loading and grading)")
    return usage["seconds"], usage["completion_tokens"], [r.prompt or "" for r in records]


def raw_llamacpp(prompts: list[str], args: argparse.Namespace) -> tuple[float, int]:
    """Continuous batching written directly on llama.cpp's batch API."""
    import llama_cpp as lc

    from inferencekit.models.llamacpp.amx import decide
    from inferencekit.models.llamacpp.gguf import GGUFModel

    # the weights as `llama_cpp.Llama` loads them, without AMX buffers where they crash (amx.py)
    llm = GGUFModel(embedded_gguf_path(), extra_bufts=decide().extra_bufts)
    toks = [llm.tokenize(p, add_bos=True) for p in prompts]
    per = -(-(max(len(t) for t in toks) + args.max_new_tokens) // 256) * 256
    width = min(args.width, len(prompts) * args.n)
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = width * per, width, 2048, 2048
    cp.kv_unified = False  # a stream per sequence: attention reads only its own cells (much faster here)
    cp.n_threads = cp.n_threads_batch = args.threads
    ctx = lc.llama_init_from_model(llm.model, cp)
    mem = lc.llama_get_memory(ctx)
    vocab = llm.vocab
    batch = lc.llama_batch_init(2048, 0, 1)
    queue = [(i, j) for i in range(len(prompts)) for j in range(args.n)]
    free = list(range(width))
    live: dict[int, dict] = {}  # sequence -> its state
    generated = 0
    start = time.perf_counter()
    while queue or live:
        items: list[tuple[int, int, int, bool]] = []
        for seq, s in live.items():
            items.append((s["last"], s["pos"], seq, True))
        while queue and free and len(items) + len(toks[queue[0][0]]) <= 2048:
            (i, j), seq = queue.pop(0), free.pop()
            lc.llama_memory_seq_rm(mem, seq, -1, -1)
            chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(0.95, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(0.8))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(1000 * i + j))
            live[seq] = {"pos": len(toks[i]), "count": 0, "sampler": chain, "last": None}
            items += [(t, p, seq, p == len(toks[i]) - 1) for p, t in enumerate(toks[i])]
        batch.n_tokens = len(items)
        rows = {}
        for k, (tok, pos, seq, out) in enumerate(items):
            batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = tok, pos, 1, out
            batch.seq_id[k][0] = seq
            if out:
                rows[seq] = k
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for seq, k in rows.items():
            s = live[seq]
            if s["last"] is not None:
                s["pos"] += 1
            tok = lc.llama_sampler_sample(s["sampler"], ctx, k)
            s["count"] += 1
            generated += 1
            if lc.llama_vocab_is_eog(vocab, tok) or s["count"] >= args.max_new_tokens:
                lc.llama_sampler_free(s["sampler"])
                del live[seq]
                free.append(seq)
            else:
                s["last"] = tok
    seconds = time.perf_counter() - start
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    llm.close()
    return seconds, generated


def raw_hf(prompts: list[str], args: argparse.Namespace) -> tuple[float, int]:
    """transformers' continuous batching (generate_batch), else one padded generate call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    path = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    inputs = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(args.n)]
    config = GenerationConfig(do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    start = time.perf_counter()
    if hasattr(model, "generate_batch"):
        # no_grad, not inference_mode: generate_batch decodes in a thread of its own, where tensors made under
        # inference mode cannot be updated in place (transformers 5.19: every request fails with no tokens)
        with torch.no_grad():
            out = model.generate_batch(inputs=inputs, generation_config=config)
        failed = [o.error for o in out.values() if getattr(o, "error", None)]
        if failed:
            raise SystemExit(f"generate_batch failed {len(failed)} of {len(out)} requests: {failed[0]}")
        generated = sum(len(o.generated_tokens) for o in out.values())
        how = "generate_batch"
    else:
        tokenizer.padding_side = "left"
        tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer([p for p in prompts for _ in range(args.n)], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.inference_mode():
            seqs = model.generate(**enc, generation_config=config)
        new = seqs[:, enc["input_ids"].shape[1]:]
        generated = int(sum(min(len(row), int((row == tokenizer.eos_token_id).nonzero()[0]) + 1)
                            if (row == tokenizer.eos_token_id).any() else len(row) for row in new))
        how = "generate"
    seconds = time.perf_counter() - start
    print(f"raw transformers via {how}")
    return seconds, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["llamacpp", "hf"], default="llamacpp")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="inferencekit --batch-size (concurrency: twice it)")
    ap.add_argument("--width", type=int, default=64, help="raw llama.cpp: sequences decoded together")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="llama.cpp threads, the same on both sides (default: all cores)")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t_ours, n_ours, prompts = ours(args, Path(tmp))
    t_raw, n_raw = (raw_llamacpp if args.backend == "llamacpp" else raw_hf)(prompts, args)
    print(f"raw engine:   {n_raw} tokens in {t_raw:.1f} s")
    ours_rate, raw_rate = n_ours / t_ours, n_raw / t_raw
    print(f"{args.backend}: inferencekit {ours_rate:.1f} tok/s, raw {raw_rate:.1f} tok/s "
          f"({args.limit} problems x {args.n} samples, {args.max_new_tokens} new tokens)")
    print(f"ratio={ours_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
