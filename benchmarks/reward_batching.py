"""Batched vs one-at-a-time reward model scoring, offline.

Builds a random token-classification PRM (Llama, hidden 256, 4 layers) with SmolLM2's tokenizer
(from the embedded GGUF) in a temporary folder, then scores the same solutions of varied length
(2-10 steps of 8-60 words) twice: all in one `score` call (length-sorted, packed batches) and one
solution per call. Checks that both give the same scores, prints both times and, last,
`ratio=<one-at-a-time seconds / batched seconds>`.

    python benchmarks/reward_batching.py [--solutions 64] [--device cpu|cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from inferencekit.models.embedded import embedded_gguf_path
from inferencekit.reward_models import load_reward_model

WORDS = "the sum of two numbers is then equal to we add subtract multiply divide so answer step next value".split()


def build_prm(folder: Path, tokenizer_dir: str | None = None) -> None:
    """Save a random 2-label Llama token classifier and SmolLM2's tokenizer to `folder`.

    The tokenizer comes from the embedded GGUF, or from `tokenizer_dir` (a saved copy of it).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForTokenClassification(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def make_solutions(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """`n` solutions of 2-10 steps of 8-60 words, spread over n // 8 questions."""
    rng = random.Random(seed)
    questions = [f"Question {q}: " + " ".join(rng.choices(WORDS, k=20)) + "?" for q in range(max(1, n // 8))]
    solutions: list[list[str]] = [[] for _ in questions]
    for i in range(n):
        steps = [" ".join(rng.choices(WORDS, k=rng.randint(8, 60))) + "." for _ in range(rng.randint(2, 10))]
        solutions[i % len(questions)].append("\n\n".join(steps))
    return questions, solutions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--tokenizer", default=None, help="a saved SmolLM2 tokenizer folder instead of the GGUF")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_prm(Path(tmp), args.tokenizer)
        rm = load_reward_model(
            tmp,
            format="token_classification",
            device=args.device,
            dtype=args.dtype,
            max_tokens_per_batch=args.max_tokens_per_batch,
        )
        questions, solutions = make_solutions(args.solutions)
        rm.score(questions[:1], [solutions[0][:2]])  # warm-up
        if rm.device.startswith("cuda"):
            torch.cuda.synchronize()
        calls0, tokens0 = rm.usage.calls, rm.usage.prompt_tokens

        start = time.perf_counter()
        batched = rm.score(questions, solutions)
        batched_s = time.perf_counter() - start
        batched_calls, tokens = rm.usage.calls - calls0, rm.usage.prompt_tokens - tokens0

        start = time.perf_counter()
        single = [[rm.score([q], [[s]])[0][0] for s in sols] for q, sols in zip(questions, solutions, strict=True)]
        single_s = time.perf_counter() - start

    pairs = [
        (a, b)
        for qa, qb in zip(batched, single, strict=True)
        for sa, sb in zip(qa, qb, strict=True)
        for a, b in zip(sa, sb, strict=True)
    ]
    worst = max(abs(a - b) for a, b in pairs if not (math.isnan(a) and math.isnan(b)))
    dtype = next(rm.model.parameters()).dtype
    print(f"device={rm.device} dtype={dtype} solutions={args.solutions} steps={len(pairs)} tokens={tokens}")
    print(f"batched: {batched_s:.3f} s in {batched_calls} forward passes")
    print(f"one-at-a-time: {single_s:.3f} s in {args.solutions} forward passes")
    print(f"max |batched - one-at-a-time| = {worst:.2e}")
    print(f"ratio={single_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
