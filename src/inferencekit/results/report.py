"""A report across runs: a metrics table (CSV), accuracy plots (PNG) and one self-contained HTML page.

The page needs nothing outside itself: CSS inline, plots as data URIs, a small inline script for the
sample filter. All text from runs (model output included) is escaped with `html.escape`, and a
Content-Security-Policy allows only that one script (by hash), so run text can never act as markup.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from inferencekit.errors import UserError, first_line
from inferencekit.redact import redact
from inferencekit.results.evaluate import compute_metrics
from inferencekit.results.lock import settle
from inferencekit.results.records import Record
from inferencekit.results.store import RunStore, write_atomic

COLUMNS = ("run", "vote", "accuracy", "ci95_low", "ci95_high", "correct", "n", "failed", "samples_per_problem",
           "tokens_per_problem", "flops_per_problem", "seconds", "reward_calls", "truncation_rate",
           "unclosed_think_rate", "no_answer_rate")
PLOTS = (("accuracy_vs_n", "N (samples per problem)"), ("accuracy_vs_tokens", "generated tokens per problem"),
         ("accuracy_vs_flops", "FLOPs per problem (generator + reward model)"))


@dataclass
class Run:
    label: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    records: list[Record]

    @property
    def n(self) -> int:
        n = self.config.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
        return max((len(r.candidates) for r in self.records), default=1)

    @property
    def tokens_per_problem(self) -> float:
        usage = self.metrics.get("usage", {})
        return float(usage.get("completion_tokens_per_sample") or usage.get("completion_tokens", 0) / max(
            1, len(self.records)))

    @property
    def flops_per_problem(self) -> float:
        """Estimated FLOPs per problem that ran; 0 when the parameter count was unknown."""
        ran = self.metrics.get("n_samples") or len([r for r in self.records if not r.failed])
        return float(self.metrics.get("usage", {}).get("flops", 0.0)) / max(1, ran)

    def x_scale(self, axis: str) -> float:
        """What one sample per problem costs on a plot's x axis (1 on the N axis)."""
        if axis == "accuracy_vs_tokens":
            return self.tokens_per_problem / self.n
        if axis == "accuracy_vs_flops":
            return self.flops_per_problem / self.n
        return 1.0


def load_run(path: str | Path, label: str) -> Run:
    """One run folder; metrics are recomputed from the predictions when metrics.json is missing."""
    store = RunStore(path)
    settle(store.path)  # an update a crash left half done is finished first
    config = store.read_config()  # UserError when not a run folder
    records = store.records()
    metrics = _checked_metrics(store.read_metrics(), store.path)
    if not metrics:
        votes = list(records[0].correct if records else config.get("votes", []))
        metrics = compute_metrics(records, votes, config.get("aggregation", "last"))
    return Run(label, store.path, config, metrics, records)


class _VoteMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    accuracy: float
    ci95: tuple[float, float]


class _Metrics(BaseModel):
    """What the report computes with in a metrics.json (the rest is shown as escaped text)."""

    model_config = ConfigDict(extra="allow")
    votes: dict[str, _VoteMetrics] = {}
    usage: dict[str, float] = {}
    health: dict[str, float] = {}
    curves: dict[str, dict[int, float]] = {}
    n_samples: int | None = None


def _checked_metrics(metrics: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run's metrics.json with its numbers checked; one-line `UserError` when it is malformed."""
    if not metrics:
        return metrics
    try:
        return _Metrics.model_validate(metrics).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise UserError(f"{path}/metrics.json is malformed ({first_line(exc.errors()[0]['msg'])} at "
                        f"{'.'.join(map(str, exc.errors()[0]['loc']))}); delete it to have it recomputed") from None


def with_evaluations(paths: list[Path]) -> list[Path]:
    """Each run folder followed by its named evaluations (`RUN/evaluations/<name>`), each folder once."""
    from inferencekit.results.reevaluate import evaluation_dirs

    out: list[Path] = []
    for path in paths:
        for p in (path, *evaluation_dirs(path)):
            if p.resolve() not in {q.resolve() for q in out}:
                out.append(p)
    return out


def _label(path: Path) -> str:
    p = path.resolve()
    if p.parent.name == "evaluations":  # a named evaluation of a run
        return f"{p.parents[2].name}/{p.parents[1].name} [evaluation {p.name}]"
    return f"{p.parent.name}/{p.name}"


def _labels(paths: list[Path]) -> list[str]:
    """Short unique names: `<dataset>/<run folder>` (an evaluation's name beside), numbered when two agree."""
    labels = [_label(p) for p in paths]
    return [f"{lab} ({i + 1})" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def table_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run and vote, with the columns of `COLUMNS`."""
    rows = []
    for run in runs:
        usage = run.metrics.get("usage", {})
        health = run.metrics.get("health", {})
        for vote, m in run.metrics.get("votes", {}).items():
            rows.append({
                "run": run.label, "vote": vote, "accuracy": m["accuracy"], "ci95_low": m["ci95"][0],
                "ci95_high": m["ci95"][1], "correct": m["correct"], "n": m["n"],
                "failed": m.get("failed", run.metrics.get("failed", 0)), "samples_per_problem": run.n,
                "tokens_per_problem": round(run.tokens_per_problem, 2), "flops_per_problem": run.flops_per_problem,
                "seconds": usage.get("seconds", 0.0), "reward_calls": round(usage.get("reward_calls", 0), 2),
                "truncation_rate": health.get("truncated_rate", 0.0),
                "unclosed_think_rate": health.get("unclosed_think_rate", 0.0),
                "no_answer_rate": health.get("no_answer_rate", 0.0),
            })
    return rows


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_accuracy(runs: list[Run]) -> dict[str, bytes]:
    """PNG bytes of accuracy vs N (the scaling curves; runs without curves as one point at their N), vs generated
    tokens and vs FLOPs per problem (the k-sample point of a curve costs k / N of the run's per-problem cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, xlabel in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, run in enumerate(runs):
            scale = run.x_scale(name)
            if scale <= 0:
                continue  # no token counts or no parameter count: nothing to place on a log axis
            color = f"C{i % 10}"
            curves = run.metrics.get("curves") or {}
            for style, (curve, values) in zip(("-o", "--s", ":^"), curves.items(), strict=False):
                ks = sorted(values, key=int)
                ax.plot([int(k) * scale for k in ks], [values[k] for k in ks], style, color=color,
                        label=f"{run.label} {curve}")
            if not curves:
                for vote, m in run.metrics.get("votes", {}).items():
                    lo, hi = m["ci95"]
                    x = run.n * scale
                    ax.errorbar([x], [m["accuracy"]], yerr=[[m["accuracy"] - lo], [hi - m["accuracy"]]], fmt="o",
                                color=color, capsize=3, label=f"{run.label} {vote}")
        ax.set_xscale("log", base=2 if name == "accuracy_vs_n" else 10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out[name] = _png(fig)
        plt.close(fig)
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- HTML

E = html.escape
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
td{white-space:nowrap}td.l{text-align:left;white-space:normal}th{background:#f3f3f3;text-align:left}
img{max-width:49%;border:1px solid #ddd}pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:4px 0}
details{border:1px solid #ddd;margin:4px 0;padding:2px 8px}summary{cursor:pointer}
.ok{color:#08730f}.no{color:#b00020}.cand{border-left:3px solid #ccc;padding-left:8px;margin:6px 0}
.muted{color:#666}#filter{margin:0.5em 0}
"""
# Filters the sample list; marks the body when it ran (the browser test checks that it did).
SCRIPT = """
const q=document.getElementById('q'),w=document.getElementById('wrong');
function f(){const t=q.value.toLowerCase();for(const d of document.querySelectorAll('details.s')){
const hit=(!t||d.textContent.toLowerCase().includes(t))&&(!w.checked||d.dataset.ok==='0');d.hidden=!hit;}}
q.addEventListener('input',f);w.addEventListener('change',f);document.body.dataset.ready='1';
"""


def _mark(ok: Any) -> str:
    return '<span class="ok">✓</span>' if ok else '<span class="no">✗</span>'


def _scores(scores: Any) -> str:
    if not scores:
        return "none"
    return " ".join("nan" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s:.3f}" for s in scores)


def _sample_html(run: Run, record: Record, open_: bool = False) -> str:
    correct = record.correct
    first_ok = next(iter(correct.values()), False)
    if record.failed:
        return (f'<details class="s" data-ok="0"><summary>{E(run.label)} #{E(str(record.index))} '
                f'<span class="no">failed</span> <span class="muted">{E(redact(str(record.error or "")))}</span>'
                f"</summary><pre>{E(str(record.input))}</pre></details>")
    predictions = record.predictions.items()
    votes = " ".join(f"{E(v)}: {E(str(a))} {_mark(correct.get(v))}" for v, a in predictions)
    parts = [
        f'<details class="s" data-ok="{int(bool(first_ok))}"{" open" * open_}>'
        f'<summary>{E(run.label)} #{E(str(record.index))} '
        f'{_mark(first_ok)} <span class="muted">{E(" ".join(str(record.input).split())[:110])}</span>'
        "</summary>",
        f"<p><b>input</b></p><pre>{E(str(record.input))}</pre>",
        f"<p><b>reference</b> {E(str(record.reference))} &nbsp; <b>votes</b> {votes}</p>",
    ]
    for j, cand in enumerate(record.candidates):
        parts.append(
            f'<div class="cand"><b>candidate {j + 1}</b> answer {E(str(cand.answer))} '
            f"{_mark(cand.correct)} · {E(str(cand.tokens))} tokens · ended by "
            f"{E(str(cand.finish_reason or '?'))}{' · &lt;think&gt; left open' * bool(cand.unclosed_think)}"
            f" · step scores "
            f"{E(_scores(cand.step_scores))}<pre>{E(cand.text)}</pre></div>"
        )
    parts.append("</details>")
    return "\n".join(parts)


def render_html(runs: list[Run], rows: list[dict[str, Any]], plots: dict[str, bytes], max_samples: int) -> str:
    """The report page; `max_samples` bounds the samples listed per run."""
    head = "".join(f"<th>{E(c)}</th>" for c in ("run", "vote", "accuracy", "95% CI", "correct / n", "failed", "N",
                                                 "tokens / problem", "FLOPs / problem", "seconds", "reward calls",
                                                 "truncated", "open <think>", "no answer"))
    body = "\n".join(
        f'<tr class="m"><td class="l">{E(r["run"])}</td><td class="l">{E(r["vote"])}</td>'
        f"<td>{r['accuracy']:.1%}</td><td>[{r['ci95_low']:.1%}, {r['ci95_high']:.1%}]</td>"
        f"<td>{E(str(r['correct']))} / {E(str(r['n']))}</td><td>{E(str(r['failed']))}</td>"
        f"<td>{E(str(r['samples_per_problem']))}</td>"
        f"<td>{r['tokens_per_problem']:.1f}</td><td>{r['flops_per_problem']:.3g}</td>"
        f"<td>{r['seconds']:.1f}</td><td>{r['reward_calls']:.3g}</td><td>{r['truncation_rate']:.1%}</td>"
        f"<td>{r['unclosed_think_rate']:.1%}</td><td>{r['no_answer_rate']:.1%}</td></tr>"
        for r in rows
    )
    imgs = "".join(
        f'<img alt="{E(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in plots.items()
    )
    samples = []
    for run in runs:
        shown = run.records[:max_samples]
        samples.append(f"<h3>{E(run.label)} <span class='muted'>({len(shown)} of {len(run.records)} samples; "
                       f"{E(str(run.config.get('model')))}, {E(str(run.config.get('method')))}, "
                       f"reward model {E(str(run.config.get('reward_model') or 'none'))})</span></h3>")
        # the first run's first wrong sample starts open: what went wrong is what one looks for
        wrong = next((r for r in shown if not next(iter(r.correct.values()), False)), None)
        samples += [_sample_html(run, r, open_=run is runs[0] and r is wrong) for r in shown]
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>inferencekit report</title><style>{CSS}</style></head>
<body><h1>inferencekit report</h1>
<p class="muted">{len(runs)} run(s): {E(", ".join(str(r.path) for r in runs))}</p>
<h2>Metrics</h2><table id="metrics"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<h2>Accuracy vs N, tokens and FLOPs</h2><p>{imgs}</p>
<h2>Samples</h2>
<div id="filter"><input id="q" placeholder="filter text"> <label><input type="checkbox" id="wrong">
only samples the first vote got wrong</label></div>
{chr(10).join(samples)}
<script>{SCRIPT}</script>
</body></html>
"""


def build_report(run_dirs: list[str | Path], out: str | Path, max_samples: int = 200) -> dict[str, Path]:
    """Write metrics.csv, the PNG plots and index.html into `out`; return the written files by name."""
    if not run_dirs:
        raise UserError("give at least one run folder")
    paths = with_evaluations([Path(p) for p in run_dirs])
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths), strict=True)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs)
    plots = plot_accuracy(runs)
    files = {"metrics.csv": out / "metrics.csv", "index.html": out / "index.html"}
    write_csv(rows, files["metrics.csv"])
    for name, data in plots.items():
        files[f"{name}.png"] = out / f"{name}.png"
        write_atomic(files[f"{name}.png"], data)
    write_atomic(files["index.html"], render_html(runs, rows, plots, max_samples))
    return files
