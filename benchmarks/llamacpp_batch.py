"""Batched vs one-sequence-at-a-time generation with the llama.cpp backend on the embedded model.

    python benchmarks/llamacpp_batch.py [--prompts 4] [--n 8] [--tokens 64] [--high-level]

The sequential run is the same generator limited to one sequence (max_batch_sequences=1), so it
produces the very same completions; `--high-level` also times llama_cpp.Llama.create_completion.
The last line is `ratio=<batched tok/s / sequential tok/s>`.
"""

from __future__ import annotations

import argparse
import time

from inferencekit.models.base import GeneratorSpec, SamplingParams
from inferencekit.models.embedded import embedded_gguf_path
from inferencekit.models.llamacpp import LlamaCppGenerator

QUESTIONS = [
    "Explain how photosynthesis works.",
    "Write a short story about a lighthouse keeper.",
    "Describe the rules of chess for a beginner.",
    "Why is the sky blue? Explain in detail.",
    "Give advice for someone learning to cook.",
    "Describe a walk through a busy market.",
    "What are the benefits of regular exercise?",
    "Explain what a prime number is, with examples.",
]


def run(gen: LlamaCppGenerator, prompts: list[str], params: SamplingParams) -> tuple[float, int, list]:
    start = time.perf_counter()
    out = gen.generate(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(c.tokens for cs in out for c in cs), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--high-level", action="store_true", help="also time llama_cpp.Llama.create_completion")
    args = ap.parse_args()

    path = str(embedded_gguf_path())
    spec = GeneratorSpec(name="smollm2", path=path, backend="llamacpp", n_ctx=1024, n_threads=args.threads)
    batched = LlamaCppGenerator(spec)
    single = LlamaCppGenerator(GeneratorSpec(**{**spec.__dict__, "max_batch_sequences": 1}))
    questions = (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    prompts = [batched.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.tokens, seed=1)

    run(batched, prompts[:1], params.replace(n=1, max_new_tokens=4))  # warm up
    t_b, n_b, out_b = run(batched, prompts, params)
    t_s, n_s, out_s = run(single, prompts, params)
    same = [[c.text for c in cs] for cs in out_b] == [[c.text for c in cs] for cs in out_s]
    print(f"batched:    {n_b} tokens in {t_b:.2f}s = {n_b / t_b:.1f} tok/s ({args.prompts} prompts x n={args.n})")
    print(f"sequential: {n_s} tokens in {t_s:.2f}s = {n_s / t_s:.1f} tok/s (same completions: {same})")
    if args.high_level:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=args.threads, verbose=False)
        start, n_h = time.perf_counter(), 0
        for p in prompts:
            for j in range(args.n):
                r = llm.create_completion(p, max_tokens=args.tokens, temperature=0.8, top_p=0.95, seed=j)
                n_h += r["usage"]["completion_tokens"]
        t_h = time.perf_counter() - start
        print(f"llama_cpp.Llama: {n_h} tokens in {t_h:.2f}s = {n_h / t_h:.1f} tok/s")
    print(f"ratio={(n_b / t_b) / (n_s / t_s):.2f}")


if __name__ == "__main__":
    main()
