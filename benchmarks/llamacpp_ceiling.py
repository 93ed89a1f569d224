"""How close a finished llama.cpp run came to the fastest the engine allows for its work.

    python benchmarks/llamacpp_ceiling.py RUN_FOLDER [--widths 8,16,32] [--threads T] [--lm-eval-seconds S]

The ceiling is the run's own work priced at the engine's best per-token costs, measured here with
llama.cpp's batch API (the settings our decode loop uses: one KV stream per sequence, flash attention
off) on the embedded model:
- prompt tokens computed x the cost of a prompt chunk as long as the run's mean computed part, decoded
  after a cached prefix as long as the rest of its mean prompt;
- generated tokens x the cost of a decode step with `width` sequences kept full (every step, no
  admissions, no tail), each at the run's mean context (prompt + half the mean completion), taking the
  cheapest of `--widths`.
Loading, tokenising, sampling and grading are left out, so no run can reach it. The run folder's
`metrics.json` gives the work and the seconds generating. Prints both, `--lm-eval-seconds` also
the best `lm-eval / inferencekit` ratio this engine allows on the run's job, and last
`ratio=<ceiling seconds / the run's seconds generating>` (1.0: the engine never waited).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import llama_cpp as lc

from inferencekit.models.embedded import embedded_gguf_path

CHUNK = 512  # the decode loop's batch size


class Engine:
    def __init__(self, threads: int) -> None:
        lc.llama_log_set(_quiet, ctypes.c_void_p(0))
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(embedded_gguf_path()).encode(), lc.llama_model_default_params())
        self.threads = threads

    def context(self, sequences: int, per_sequence: int):
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = sequences * per_sequence, sequences, CHUNK, CHUNK
        cp.kv_unified, cp.flash_attn_type = False, 0
        cp.n_threads = cp.n_threads_batch = self.threads
        return lc.llama_init_from_model(self.model, cp)

    @staticmethod
    def decode(ctx, batch, items: list[tuple[int, int, int]]) -> None:
        """One llama_decode of (token, position, sequence) items, logits for every item."""
        batch.n_tokens = len(items)
        for i, (tok, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, True
            batch.seq_id[i][0] = seq
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def fill(self, ctx, batch, seq: int, start: int, end: int) -> None:
        for a in range(start, end, CHUNK):
            self.decode(ctx, batch, [(_token(p), p, seq) for p in range(a, min(end, a + CHUNK))])

    def prompt_seconds_per_token(self, cached: int, computed: int, repeats: int = 3) -> float:
        ctx, batch = self.context(2, cached + computed + 8), lc.llama_batch_init(CHUNK, 0, 2)
        self.fill(ctx, batch, 0, 0, cached)
        mem, best = lc.llama_get_memory(ctx), float("inf")
        for _ in range(repeats):
            lc.llama_memory_seq_rm(mem, 1, -1, -1)
            lc.llama_memory_seq_cp(mem, 0, 1, -1, -1)
            start = time.perf_counter()
            self.fill(ctx, batch, 1, cached, cached + computed)
            best = min(best, time.perf_counter() - start)
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        return best / computed

    def decode_seconds_per_token(self, width: int, context: int, steps: int) -> float:
        ctx, batch = self.context(width, context + steps + 8), lc.llama_batch_init(CHUNK, 0, width)
        self.fill(ctx, batch, 0, 0, context)
        for seq in range(1, width):  # the same prompt in every stream: the cost does not depend on the tokens
            lc.llama_memory_seq_cp(lc.llama_get_memory(ctx), 0, seq, -1, -1)
        start = time.perf_counter()
        for step in range(steps):
            self.decode(ctx, batch, [(_token(context + step + seq), context + step, seq) for seq in range(width)])
            lc.llama_get_logits(ctx)
        seconds = time.perf_counter() - start
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        return seconds / (steps * width)


@lc.llama_log_callback
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


def _token(position: int) -> int:
    return 100 + (position * 7919) % 20000  # ordinary vocabulary ids; the cost does not depend on which


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder (llama.cpp backend)")
    ap.add_argument("--widths", default="8,16,32", help="decode widths to try (sequences kept full)")
    ap.add_argument("--steps", type=int, default=40, help="decode steps timed per width")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--lm-eval-seconds", type=float, default=None, help="lm-eval's wall on the same job")
    args = ap.parse_args()

    usage = json.loads((args.run / "metrics.json").read_text())["usage"]
    n = json.loads((args.run / "metrics.json").read_text())["n_samples"]
    generated, computed = usage["completion_tokens"], usage["computed_prompt_tokens"]
    prompt_mean, computed_mean = usage["prompt_tokens"] / n, max(2, round(computed / n))
    context = round(prompt_mean + usage["completion_tokens_per_sample"] / 2)

    engine = Engine(args.threads or os.cpu_count() or 1)
    per_prompt = engine.prompt_seconds_per_token(max(0, round(prompt_mean) - computed_mean), computed_mean)
    per_generated = {}
    for width in (int(w) for w in args.widths.split(",")):
        per_generated[width] = engine.decode_seconds_per_token(width, context, args.steps)
        print(f"decode, {width} sequences at context {context}: {1 / per_generated[width]:.1f} tokens/s")
    best = min(per_generated, key=per_generated.get)
    ceiling = computed * per_prompt + generated * per_generated[best]
    print(f"prompt: {computed_mean} tokens after {round(prompt_mean) - computed_mean} cached: "
          f"{1 / per_prompt:.1f} tokens/s")
    print(f"run: {generated} tokens generated, {computed} prompt tokens computed, {usage['seconds']:.1f} s generating")
    print(f"ceiling: {ceiling:.1f} s ({computed * per_prompt:.1f} s prompts + {generated * per_generated[best]:.1f} s "
          f"decoding at width {best})")
    if args.lm_eval_seconds:
        print(f"best lm-eval / inferencekit this engine allows: {args.lm_eval_seconds / ceiling:.2f} "
              f"(the run: {args.lm_eval_seconds / usage['seconds']:.2f}, seconds generating only)")
    print(f"ratio={ceiling / usage['seconds']:.2f}")


if __name__ == "__main__":
    main()
