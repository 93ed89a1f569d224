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
    columns = ["vote", "accuracy", "95% CI", "correct / n", "failed", "truncated", "open <think>", "no answer"]
    for col in columns:
        table.add_column(col, justify="right" if col != "vote" else "left")
    rates = [f"{health.get(k, 0.0):.1%}" for k in ("truncated_rate", "unclosed_think_rate", "no_answer_rate")]
    for name, m in metrics["votes"].items():
        lo, hi = m["ci95"]
        table.add_row(name, f"{m['accuracy']:.1%}", f"[{lo:.1%}, {hi:.1%}]", f"{m['correct']} / {m['n']}",
                      str(m.get("failed", 0)), *rates)
    console.print(table)
    if health.get("candidates"):
        console.print(f"of {health['candidates']} outputs: {health['truncated']} hit the token cap"
                      f"{' (raise --max-new-tokens)' if health['truncated'] else ''}, {health['unclosed_think']} left "
                      f"<think> open, {health['no_answer']} gave no answer")
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
