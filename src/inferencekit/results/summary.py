"""The results table printed at the end of a run or an evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(metrics: dict[str, Any], run_dir: Path | str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{run_dir}", title_justify="left")
    health = metrics.get("health") or {}
    for col in ("vote", "accuracy", "95% CI", "correct / n", "failed"):
        table.add_column(col, justify="right" if col != "vote" else "left")
    for name, m in metrics["votes"].items():
        lo, hi = m["ci95"]
        table.add_row(name, f"{m['accuracy']:.1%}", f"[{lo:.1%}, {hi:.1%}]", f"{m['correct']} / {m['n']}",
                      str(m.get("failed", 0)))
    console.print(table)
    if health:
        outputs = Table(title="outputs", title_justify="left")
        for col in ("outputs", "truncated", "open <think>", "no answer", "failed problems"):
            outputs.add_column(col, justify="right")
        outputs.add_row(str(health.get("candidates", 0)), *(
            f"{health.get(k, 0)} ({health.get(f'{k}_rate', 0.0):.1%})" for k in ("truncated", "unclosed_think",
                                                                                  "no_answer")
        ), str(health.get("failed_samples", 0)))
        console.print(outputs)
        if health.get("truncated"):
            console.print("some outputs hit the token cap: raise --max-new-tokens")
    if metrics.get("failed"):
        console.print(f"[bold red]{metrics['failed']} problem(s) failed[/] (not counted in accuracy; their "
                      "errors are in predictions.jsonl): rerun the same command to retry them")
    for curve, values in metrics.get("curves", {}).items():
        console.print(f"{curve}: " + "  ".join(f"k={k} {v:.1%}" for k, v in values.items()))
    usage = metrics.get("usage", {})
    seconds = usage.get("seconds", 0.0)
    tokens = usage.get("completion_tokens", 0)
    rate = f", {tokens / seconds:.0f} tokens/s" if seconds else ""
    line = f"tokens: {tokens} generated ({usage.get('completion_tokens_per_sample', 0)} per problem){rate}"
    prompt, computed = usage.get("prompt_tokens", 0), usage.get("computed_prompt_tokens", 0)
    line += f"; prompt tokens {prompt:.0f} ({computed:.0f} computed)"
    line += f"; {seconds:.1f} s generating"
    if usage.get("reward_calls"):
        line += f"; reward model: {usage['reward_calls']:.0f} calls, {usage.get('reward_prompt_tokens', 0):.0f} tokens"
    if usage.get("flops"):
        line += f"; {usage['flops']:.3g} FLOPs"
    console.print(line)
