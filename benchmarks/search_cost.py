"""Cost of step-level beam search against best-of-N: same model, N, problems and token cap, one process.

    python benchmarks/search_cost.py [--n 8] [--beam-width 4] [--problems 3] [--max-new-tokens 256]
                                     [--reward-model self_certainty|tiny-prm|llm_judge] [--seed S] [--threads T]

The policy is the embedded model (SmolLM2-135M, llama.cpp) on the first GSM8K-mini problems at
temperature 0.8. The reward model scores best-of-N's N solutions once and every beam-search round.
The default, `self_certainty`, is the embedded setup's reward model (the policy's own full next-token
distributions, read by the same llama.cpp engine). `tiny-prm` is a random token-classification PRM (Llama, hidden 256,
4 layers; transformers on CPU, built in a temporary folder): cheap, but its choices are noise, which
steers beam search into lineages no trained PRM would keep (this model's two-token loops), so its
`tokens_ratio` says more about random weights than about the engine. `llm_judge` asks the policy.
A warm-up call computes the prompts first, for both.
llama.cpp runs on one thread by default: on a small machine shared with other jobs its spinning
worker threads slow down many times over when another process takes a core, which swamps the
comparison. Prints each method's seconds and work; `tokens_ratio` (beam / best-of-N tokens generated:
the search's own extra work, pruned branches included) and `per_token_ratio` (seconds per generated
token, beam / best-of-N: the engine's overhead per unit of work); and last
`ratio=<beam seconds / best-of-n seconds>`, their product.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inferencekit.config import RunConfig
from inferencekit.datasets import load_dataset
from inferencekit.models import load_generator, resolve_model
from inferencekit.models.base import SamplingParams
from inferencekit.prompts import build_messages
from inferencekit.reward_models import load_reward_model
from inferencekit.search import Problem, get_method


def load_rm(name: str, generator, folder: str):
    if name == "tiny-prm":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from reward_batching import build_prm

        build_prm(Path(folder))
        return load_reward_model(folder, format="token_classification")
    return load_reward_model(name, generator=generator)


def timed(method, problems, generator, rm) -> tuple[float, float, int, list]:
    """Seconds in all, seconds scoring, tokens generated, candidates."""
    tokens, rm_seconds = generator.usage.completion_tokens, rm.usage.seconds
    start = time.perf_counter()
    with ThreadPoolExecutor(len(problems)) as pool:  # all problems at once, as the runner searches them
        candidates = [result.candidates for result in pool.map(method.search, problems)]
    seconds = time.perf_counter() - start
    return seconds, rm.usage.seconds - rm_seconds, generator.usage.completion_tokens - tokens, candidates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--reward-model", default="self_certainty")
    ap.add_argument("--seed", type=int, default=0, help="run seed: problem i samples with seed 1000 * seed + i")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads; 0: all cores (default 1, see above)")
    args = ap.parse_args()

    model_args = {"n_threads": args.threads} if args.threads else {}
    generator = load_generator(resolve_model("smollm2-135m", None, model_args))
    dataset = load_dataset("gsm8k-mini", limit=args.problems)
    problems = [
        Problem(s.index, s.input, generator.chat_prompt(build_messages(s, dataset)), 1000 * args.seed + s.index)
        for s in dataset.samples
    ]
    config = RunConfig(n=args.n, beam_width=args.beam_width, max_new_tokens=args.max_new_tokens, temperature=0.8)
    with tempfile.TemporaryDirectory() as folder:
        rm = load_rm(args.reward_model, generator, folder)
        generator.generate([p.prompt for p in problems], SamplingParams(max_new_tokens=1))  # warm-up
        rm.score([problems[0].question], [["Warm up.\n\nDone."]])
        results, work = {}, {}
        for name in ("best_of_n", "beam_search"):
            method = get_method(name)(config.model_copy(update={"method": name}), generator, rm)
            seconds, rm_seconds, tokens, candidates = timed(method, problems, generator, rm)
            results[name], work[name] = seconds, tokens
            print(f"{name}: {seconds:.2f} s, of which {rm_seconds:.2f} s scoring; {tokens} tokens generated "
                  f"({tokens / max(seconds - rm_seconds, 1e-9):.0f}/s); {sum(map(len, candidates))} candidates")
    generator.close()
    print(f"reward_model={args.reward_model} n={args.n} beam_width={args.beam_width} problems={args.problems} "
          f"max_new_tokens={args.max_new_tokens} seed={args.seed} threads={args.threads}")
    tokens_ratio = work["beam_search"] / work["best_of_n"]
    ratio = results["beam_search"] / results["best_of_n"]
    print(f"tokens_ratio={tokens_ratio:.2f} per_token_ratio={ratio / tokens_ratio:.2f}")
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
