"""The compute frontier of a sweep: per cell and budget, accuracy with its uncertainty against what it cost.

One row per (cell, budget), seeds pooled, from the runs' own records and each run's main vote (its first):
- `accuracy`: the mean over seeds of each seed's accuracy; `ci_low`/`ci_high`: Wilson's 95% interval over all
  (problem, seed) outcomes pooled; `seed_se`: the standard error of the mean over seeds (seeds > 1);
- `tokens_per_problem` (generated), `flops_per_problem`, `seconds_per_problem` (wall time shared among the
  problems in flight), means over the finished problems of all seeds;
- `finished`: every seed's run has finished every problem, none failed (a sweep still running, or stopped, has
  unfinished rows: their problems are the first ones to finish, not a fair sample of the dataset);
- `pareto`: no other finished row reaches at least its accuracy with at most its tokens (one of them strictly
  better); an unfinished row is never on the frontier;
- `vs_baseline_*`: a paired comparison with the baseline cell's budget of nearest tokens per problem, on the
  (problem, seed) pairs both finished (seeds both ran; when they share none, each of this row's seeds
  against the baseline's first): the accuracy difference with a 95% interval from the per-problem mean
  differences (problems are the independent units: a problem's seeds move together; clipped to [-1, 1]), and
  the exact McNemar p on the discordant pairs.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferencekit.files import write_atomic
from inferencekit.results.compare import mcnemar_exact
from inferencekit.results.metrics import Z95, wilson_interval
from inferencekit.results.store import RunStore

COLUMNS = ("cell", "method", "budget_key", "budget", "seeds", "problems", "finished", "vote", "accuracy", "ci_low",
           "ci_high", "seed_se", "tokens_per_problem", "flops_per_problem", "seconds_per_problem", "pareto",
           "vs_baseline_budget", "vs_baseline_pairs", "vs_baseline_diff", "vs_baseline_ci_low", "vs_baseline_ci_high",
           "vs_baseline_p")
FILES = ("frontier.csv", "frontier.md", "index.html", "frontier.png")
AXES = (("tokens_per_problem", "generated tokens per problem"), ("flops_per_problem", "FLOPs per problem"),
        ("seconds_per_problem", "wall seconds per problem"))

Outcomes = dict[int, dict[int, bool]]  # seed -> problem index -> main vote right


@dataclass
class Point:
    """One (cell, budget): its runs' outcomes and costs, all seeds."""

    cell: str
    method: str
    budget_key: str
    budget: Any
    vote: str
    outcomes: Outcomes = field(default_factory=dict)
    tokens: list[float] = field(default_factory=list)  # per finished problem, all seeds
    flops: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    finished: bool = True  # every planned seed's run has finished every problem


def seed_pooled_accuracy(outcomes: Outcomes) -> dict[str, Any]:
    """Mean over seeds of each seed's accuracy, Wilson's interval over the pooled outcomes, the seeds' SE."""
    per_seed = [sum(v.values()) / len(v) for v in outcomes.values() if v]
    correct = sum(sum(v.values()) for v in outcomes.values())
    n = sum(len(v) for v in outcomes.values())
    lo, hi = wilson_interval(correct, n)
    se = statistics.stdev(per_seed) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else None
    problems = len({i for v in outcomes.values() for i in v})
    return {"accuracy": statistics.fmean(per_seed) if per_seed else 0.0, "ci_low": lo, "ci_high": hi,
            "seed_se": se, "problems": problems, "seeds": len(per_seed)}


def paired_comparison(a: Outcomes, b: Outcomes) -> dict[str, Any] | None:
    """`a` against baseline `b` on the (problem, seed) pairs both hold: difference of accuracies, its 95%
    interval (normal, from the per-problem mean differences), exact McNemar p; None without pairs."""
    common = sorted(set(a) & set(b))
    seed_pairs = [(s, s) for s in common] if common else [(s, min(b)) for s in sorted(a)] if b else []
    by_problem: dict[int, list[int]] = {}
    right_a = right_b = 0  # discordant pairs: only a right, only b right
    for sa, sb in seed_pairs:
        for index in sorted(set(a[sa]) & set(b[sb])):
            x, y = bool(a[sa][index]), bool(b[sb][index])
            by_problem.setdefault(index, []).append(int(x) - int(y))
            right_a += x and not y
            right_b += y and not x
    if not by_problem:
        return None
    diffs = [statistics.fmean(d) for d in by_problem.values()]
    diff = statistics.fmean(diffs)
    half = Z95 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    # a difference of two accuracies lies in [-1, 1]; the normal interval of a few problems can reach past it
    return {"pairs": sum(len(d) for d in by_problem.values()), "diff": diff, "ci_low": max(-1.0, diff - half),
            "ci_high": min(1.0, diff + half), "p": mcnemar_exact(right_a, right_b)}


def pareto_flags(costs: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """Whether each point is on the frontier: no other costs at most as much and is at least as accurate,
    one of the two strictly."""
    points = list(zip(costs, accuracies, strict=True))
    return [not any(c <= cost and a >= acc and (c < cost or a > acc) for c, a in points)
            for cost, acc in points]


def frontier_flags(rows: Sequence[dict[str, Any]], cost: str) -> list[bool]:
    """`pareto_flags` of the finished rows against `cost`; unfinished rows are off the frontier."""
    done = [r for r in rows if r["finished"]]
    flags = dict(zip(map(id, done), pareto_flags([r[cost] for r in done], [r["accuracy"] for r in done]), strict=True))
    return [flags.get(id(r), False) for r in rows]


def _nearest(candidates: list[dict[str, Any]], tokens: float) -> dict[str, Any]:
    def distance(row: dict[str, Any]) -> float:
        t = row["tokens_per_problem"]
        return abs(math.log(t) - math.log(tokens)) if t > 0 and tokens > 0 else abs(t - tokens)

    return min(candidates, key=distance)


def frontier_rows(points: list[Point], baseline: str | None) -> list[dict[str, Any]]:
    """One row per point with the columns of `COLUMNS` (empty strings where a value does not apply)."""
    rows = []
    for p in points:
        mean = lambda xs: statistics.fmean(xs) if xs else 0.0  # noqa: E731
        rows.append({"cell": p.cell, "method": p.method, "budget_key": p.budget_key, "budget": p.budget,
                     "vote": p.vote, **seed_pooled_accuracy(p.outcomes), "finished": p.finished,
                     "tokens_per_problem": mean(p.tokens), "flops_per_problem": mean(p.flops),
                     "seconds_per_problem": mean(p.seconds)})
    for row, flag in zip(rows, frontier_flags(rows, "tokens_per_problem"), strict=True):
        row["pareto"] = flag
    base = [(r, p) for r, p in zip(rows, points, strict=True) if p.cell == baseline and r["problems"]]
    for row, point in zip(rows, points, strict=True):
        row.update({k: "" for k in COLUMNS if k.startswith("vs_baseline")})
        if not base or point.cell == baseline or not row["problems"]:
            continue
        brow = _nearest([r for r, _ in base], row["tokens_per_problem"])
        bpoint = next(p for r, p in base if r is brow)
        paired = paired_comparison(point.outcomes, bpoint.outcomes)
        if paired is not None:
            row.update({"vs_baseline_budget": brow["budget"], "vs_baseline_pairs": paired["pairs"],
                        "vs_baseline_diff": paired["diff"], "vs_baseline_ci_low": paired["ci_low"],
                        "vs_baseline_ci_high": paired["ci_high"], "vs_baseline_p": paired["p"]})
    for row in rows:
        row["seed_se"] = "" if row["seed_se"] is None else row["seed_se"]
    return rows


# ---------------------------------------------------------------- reading a sweep folder


def load_points(folder: str | Path) -> tuple[list[Point], str | None]:
    """The sweep's (cell, budget) points from its run folders (runs not started yet are left out), and its
    baseline cell."""
    from inferencekit.sweep.spec import plan, read_spec

    folder = Path(folder)
    spec = read_spec(folder)
    points: dict[tuple[str, str], Point] = {}
    unfinished: set[tuple[str, str]] = set()
    for planned in plan(spec):
        run_dir = _run_folder(folder, planned.exp_name)
        store = RunStore(run_dir) if run_dir is not None else None
        config = store.read_config() if store is not None else {}
        key = (planned.cell, repr(planned.budget))  # a cell without a budget axis is one point
        everything = store.records() if store is not None else []
        records = [r for r in everything if not r.failed]
        if store is None or len(records) < len(everything) or store.read_metrics().get("n_samples") != len(records):
            unfinished.add(key)  # metrics.json is written when a run has no problem left
        if not records:
            continue
        budget = planned.budget if planned.budget is not None else config.get(planned.budget_key)
        vote = (config.get("votes") or ["majority"])[0]
        point = points.setdefault(key, Point(
            planned.cell, str(config.get("method")), planned.budget_key, budget, vote))
        point.outcomes[planned.seed] = {r.index: bool(r.correct.get(vote, False)) for r in records}
        point.tokens += [float(r.usage.get("completion_tokens", 0)) for r in records]
        point.flops += [float(r.usage.get("flops", 0.0)) for r in records]
        point.seconds += [float(r.usage.get("seconds", 0.0)) for r in records]
    for key, point in points.items():
        point.finished = key not in unfinished
    return list(points.values()), spec.baseline


def _run_folder(folder: Path, exp_name: str) -> Path | None:
    """The run folder of experiment `exp_name` in a sweep folder: `<dataset>/<model>+<reward model>+<exp_name>`."""
    found = [p for p in folder.glob(f"*/*+*+{exp_name}") if RunStore(p).exists()]
    return found[0] if found else None


# ---------------------------------------------------------------- files


def write_frontier(folder: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write frontier.csv, frontier.md, frontier.png and index.html for the sweep in `folder` (into `out`,
    default the sweep folder); return the files by name."""
    from inferencekit.sweep.spec import read_spec

    folder = Path(folder)
    out = Path(out) if out is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    points, baseline = load_points(folder)
    rows = frontier_rows(points, baseline)
    png = plot_frontier(rows)
    files = {name: out / name for name in FILES}
    write_atomic(files["frontier.csv"], _csv(rows))
    write_atomic(files["frontier.md"], render_markdown(rows, baseline))
    write_atomic(files["frontier.png"], png)
    write_atomic(files["index.html"], render_html(rows, baseline, png, read_spec(folder).name))
    return files


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: Any, kind: str = "") -> str:
    if value == "" or value is None:
        return ""
    if kind == "%":
        return f"{value:.1%}"
    if kind == "+%":
        return f"{value:+.1%}"
    if kind == "p":
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.1f}"
    return str(value)


HEADERS = ("cell", "method", "budget", "seeds", "problems", "accuracy", "95% CI", "tokens / problem",
           "FLOPs / problem", "seconds / problem", "Pareto", "vs baseline (budget)", "difference [95% CI]",
           "McNemar p")


def _cells(row: dict[str, Any]) -> list[str]:
    vs = row["vs_baseline_diff"]
    diff = "" if vs == "" else (f"{_fmt(vs, '+%')} [{_fmt(row['vs_baseline_ci_low'], '+%')}, "
                                f"{_fmt(row['vs_baseline_ci_high'], '+%')}]")
    se = "" if row["seed_se"] == "" else f" ± {_fmt(row['seed_se'], '%')}"
    problems = str(row["problems"]) + ("" if row["finished"] else " (unfinished)")
    return [row["cell"], row["method"], f"{row['budget_key']}={row['budget']}", str(row["seeds"]),
            problems, f"{_fmt(row['accuracy'], '%')}{se}",
            f"[{_fmt(row['ci_low'], '%')}, {_fmt(row['ci_high'], '%')}]", _fmt(row["tokens_per_problem"]),
            _fmt(row["flops_per_problem"]), f"{row['seconds_per_problem']:.2f}", "yes" if row["pareto"] else "",
            _fmt(row["vs_baseline_budget"]), diff, _fmt(row["vs_baseline_p"], "p")]


def render_markdown(rows: list[dict[str, Any]], baseline: str | None) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    notes = [(f"Accuracy of each cell's first vote, mean over seeds (± its standard error with 2+ seeds); 95% CI: "
              f"Wilson over all problem-seed outcomes. Compared with `{baseline}` at its budget of nearest tokens, "
              "on the same problems and seeds (exact McNemar p).")] if baseline else []
    if not all(r["finished"] for r in rows):
        notes.append("Unfinished: a run of the row has problems left (or failed ones); its problems are the first "
                     "to finish, not a fair sample, and it is left off the Pareto frontier (hollow in the plot).")
    return "\n".join(lines) + "\n" + ("\n" + " ".join(notes) + "\n" if notes else "\n")


def render_html(rows: list[dict[str, Any]], baseline: str | None, png: bytes, name: str) -> str:
    """The frontier page: every value escaped, the plot inline, no script."""
    from inferencekit.results.report import CSS, E

    head = "".join(f"<th>{E(h)}</th>" for h in HEADERS)
    body = "\n".join("<tr>" + "".join(f'<td class="l">{E(c)}</td>' for c in _cells(r)) + "</tr>" for r in rows)
    image = base64.b64encode(png).decode()
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{E(name)}: compute frontier</title><style>{CSS}</style></head>
<body><h1>{E(name)}: compute frontier</h1>
<p class="muted">baseline: {E(str(baseline or "none"))}</p>
<table id="frontier"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<p><img alt="accuracy against tokens, FLOPs and seconds per problem" src="data:image/png;base64,{image}"
style="max-width:100%"></p>
</body></html>
"""


def plot_frontier(rows: list[dict[str, Any]]) -> bytes:
    """PNG: accuracy (95% CI bars) against tokens, FLOPs and seconds per problem, one line per cell over its
    budgets, the Pareto frontier of each axis drawn as a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from inferencekit.results.report import _png

    fig, axes = plt.subplots(1, len(AXES), figsize=(6 * len(AXES), 4.4))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    for ax, (key, label) in zip(axes, AXES, strict=True):
        for i, cell in enumerate(cells):
            color, marker = f"C{i % 10}", "os^"[i // 10 % 3]  # ten colours, then other markers
            mine = sorted((r for r in rows if r["cell"] == cell), key=lambda r: r[key])
            # the mean over seeds can leave the pooled interval when seeds finished different problem counts
            below = [max(0.0, r["accuracy"] - r["ci_low"]) for r in mine]
            above = [max(0.0, r["ci_high"] - r["accuracy"]) for r in mine]
            ax.errorbar([r[key] for r in mine], [r["accuracy"] for r in mine], yerr=[below, above],
                        fmt="-" + marker, color=color, capsize=3, markersize=4, label=cell)
            late = [r for r in mine if not r["finished"]]  # drawn hollow
            ax.plot([r[key] for r in late], [r["accuracy"] for r in late], marker, markerfacecolor="white",
                    markeredgecolor=color, markersize=6)
        flags = frontier_flags(rows, key)
        front = sorted((r[key], r["accuracy"]) for r, f in zip(rows, flags, strict=True) if f)
        if front:  # hollow diamonds on the frontier's points: a frontier of one point shows too
            ax.plot([x for x, _ in front], [y for _, y in front], drawstyle="steps-post", color="black",
                    linestyle="--", linewidth=1, marker="D", markersize=9, markerfacecolor="none", label="frontier")
        if rows and all(r[key] > 0 for r in rows):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels at 2, 3, ... x 10^k overlap
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_title(f"accuracy vs {label}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    rows_of_legend = math.ceil(len(labels) / 8)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    data = _png(fig)
    plt.close(fig)
    return data
