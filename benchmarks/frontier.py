"""The compute frontier: accuracy against generated tokens for every test-time method, same model and data.

    python benchmarks/frontier.py [--dataset arith|gsm8k-mini] [--problems 50] [--max-new-tokens 256]
                                  [--work-dir frontier-runs] [--out frontier-report] [--threads 1] [--tiny]

Runs, with the embedded model (SmolLM2-135M, llama.cpp) and `self_certainty` as the reward model
(`mean_logprob` for particle_filter, whose logit weights need scores in (0, 1)), each
method at 2-3 budgets (N = samples, particles or width; Self-Refine: chains): cot, best_of_n,
beam_search, dvts, particle_filter, rebase, self_consistency (ESC), deepconf (online) and self_refine,
and budget_forcing at three thinking budgets (its N column is the budget; `<think>` opened in the prompt),
plus self_consistency without early stopping (plain majority voting on the same sample stream as ESC:
sample j has the same seed in both, so ESC's samples are a prefix of it) as the baseline of the savings.
Every run is a normal run folder (resumable: rerunning skips finished runs); `inferencekit report` over
all of them writes one table (metrics.csv, index.html) and the accuracy-vs-tokens plot. This script
prints a table of each run's main vote (weighted for reward-guided methods, DeepConf's confidence
weighting, majority otherwise), tokens and FLOPs (2 x parameters x tokens through the model, prompt
tokens computed included) per problem, then the tokens saved by the early-stopping methods against
plain majority voting: at the same N, and at equal accuracy (the cheapest plain-majority run at least as
accurate). The dataset is the built-in arithmetic demo (`arith`) when this install has it, else
`gsm8k-mini` (or name one with --dataset). `--tiny` is a smoke setting (2 problems, 48 tokens, small N).
The last line is `ratio=<ESC tokens / plain majority tokens at the largest N>`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import inferencekit  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inferencekit.cli import main as cli
from inferencekit.config import RunConfig
from inferencekit.datasets import dataset_names
from inferencekit.runner import run

PARAMS = 134_515_008  # SmolLM2-135M
REWARD_VOTES = "majority,weighted,best,borda"


def plan(budgets: list[int], tiny: bool, max_new_tokens: int) -> list[tuple[str, str, int, dict]]:
    """(label, method, budget, settings) of every run."""
    small, big = budgets[0], budgets[-1]
    runs: list[tuple[str, str, int, dict]] = [("cot", "cot", 1, {"temperature": 0.0, "votes": ["majority"]})]
    for n in budgets:
        rm = {"reward_model": "self_certainty", "votes": REWARD_VOTES.split(",")}
        runs += [
            ("best_of_n", "best_of_n", n, rm),
            ("beam_search", "beam_search", n, {**rm, "beam_width": min(4, n)}),
            ("dvts", "dvts", n, {**rm, "beam_width": min(4, n)}),
            ("particle_filter", "particle_filter", n, {**rm, "reward_model": "mean_logprob"}),  # weights in (0, 1)
            ("rebase", "rebase", n, rm),
            ("self_consistency_esc", "self_consistency", n, {"esc_window": max(2, n // 4)}),
            ("majority", "self_consistency", n, {"sc_stop": "none"}),
        ]
        if n > small or len(budgets) < 3:
            warm = max(2, n // 4)
            runs.append(("deepconf_online", "deepconf", n, {"deepconf_mode": "online", "deepconf_warmup": warm,
                                                            "deepconf_window": 16 if tiny else 32,
                                                            "deepconf_chunk": 16 if tiny else 32,
                                                            "votes": ["majority", "weighted"]}))
    for chains in sorted({1, max(1, small // 2), max(1, big // 4)}):
        runs.append(("self_refine", "self_refine", chains, {"refine_steps": 2}))
    for fraction in (4, 2, 1):  # accuracy against thinking tokens: N is the thinking budget here
        budget = max(8, max_new_tokens // fraction)
        runs.append(("budget_forcing", "budget_forcing", budget, {
            "n": 1, "thinking_delimiters": ["<think>", "</think>"], "thinking_budget": budget, "wait": 1}))
    return runs


MAIN_VOTE = {"cot": "majority", "self_consistency_esc": "majority", "majority": "majority",
             "deepconf_online": "weighted", "self_refine": "majority", "budget_forcing": "majority"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="default: arith when available, else gsm8k-mini")
    ap.add_argument("--problems", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--budgets", default="4,8,16", help="comma-separated N (default 4,8,16)")
    ap.add_argument("--work-dir", default="frontier-runs")
    ap.add_argument("--out", default="frontier-report")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="smoke test: 2 problems, 48 tokens, N in 2,4")
    args = ap.parse_args()
    if args.tiny:
        args.problems, args.max_new_tokens, args.budgets = 2, 48, "2,4"
    arith = [name for name in dataset_names() if "arith" in name]
    dataset = args.dataset or (arith[0] if arith else "gsm8k-mini")
    if not args.dataset and not arith:
        print("no built-in arithmetic dataset in this install: using gsm8k-mini (--dataset to choose)")
    budgets = [int(b) for b in args.budgets.split(",")]
    logging.getLogger("inferencekit").setLevel(logging.WARNING)

    results = []
    for label, method, n, settings in plan(budgets, args.tiny, args.max_new_tokens):
        config = RunConfig(**{
            "dataset": dataset, "limit": args.problems, "method": method, "temperature": 0.8, "n": n,
            "max_new_tokens": args.max_new_tokens, "max_steps": 3 if args.tiny else 12, "seed": args.seed,
            "work_dir": args.work_dir, "exp_name": f"frontier-{label}-{n}", "model_args": {"n_threads": args.threads},
            **settings})
        result = run(config, show_progress=False)
        usage, votes = result.metrics["usage"], result.metrics["votes"]
        vote = MAIN_VOTE.get(label, "weighted")
        per = max(1, result.metrics["n_samples"])
        tokens = usage.get("completion_tokens", 0) / per
        through = (usage.get("computed_prompt_tokens", 0) + usage.get("reward_computed_prompt_tokens", 0)) / per
        results.append({"label": label, "n": n, "vote": vote, "accuracy": votes[vote]["accuracy"],
                        "tokens": tokens, "flops": 2 * PARAMS * (tokens + through), "dir": result.run_dir})
        print(f"{label:22} N={n:<3} {vote:9} accuracy={votes[vote]['accuracy']:.3f} tokens/problem={tokens:8.1f}",
              flush=True)

    cli(["report", *[str(r["dir"]) for r in results], "--out", args.out])
    lines = ["| method | N | vote | accuracy | tokens / problem | GFLOPs / problem |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['n']} | {r['vote']} | {r['accuracy']:.3f} | {r['tokens']:.1f} | "
              f"{r['flops'] / 1e9:.1f} |" for r in results]
    table = "\n".join(lines)
    Path(args.out, "frontier.md").write_text(table + "\n")
    print(f"\ndataset={dataset} problems={args.problems} max_new_tokens={args.max_new_tokens} seed={args.seed}\n")
    print(table)

    plain = {r["n"]: r for r in results if r["label"] == "majority"}
    print("\ntokens saved against plain majority voting:")
    for r in results:
        if r["label"] not in ("self_consistency_esc", "deepconf_online"):
            continue
        same = plain.get(r["n"])
        equal = min((p for p in plain.values() if p["accuracy"] >= r["accuracy"]), key=lambda p: p["tokens"],
                    default=None)
        at_equal = (f"{equal['tokens'] - r['tokens']:+.1f} vs majority N={equal['n']}" if equal
                    else "no majority run is as accurate")
        print(f"  {r['label']:22} N={r['n']:<3} same N: {same['tokens'] - r['tokens']:+.1f} tokens/problem "
              f"(accuracy {r['accuracy']:.3f} vs {same['accuracy']:.3f}); equal accuracy: {at_equal}")
    esc = next(r for r in results if r["label"] == "self_consistency_esc" and r["n"] == budgets[-1])
    print(f"ratio={esc['tokens'] / max(plain[budgets[-1]]['tokens'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
