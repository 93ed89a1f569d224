"""DeepConf: confidence-filtered voting (Fu et al. 2025, arXiv 2508.15260).

Budget: `n` traces per problem. Token confidence C_i = -(1/k) sum_j log P_i(j) over the k = `deepconf_top_k`
likeliest tokens at position i; group confidence = the mean of C over a sliding window of
`deepconf_window` tokens (over the whole trace when shorter). A trace's score (`deepconf_score`): `lowest`
group confidence (default), `bottom10` (the mean of its lowest 10% of windows, at least one), `tail` (the
mean confidence of its last `deepconf_window` tokens) or `mean` (of all its tokens), as the reference's
analysis computes them.
- offline: n traces; `deepconf_keep=percentile` (the reference's) keeps the traces scoring >= the
  (100 - eta)-th percentile of all n scores (numpy's linear interpolation: 14 of 16 distinct scores at
  eta = 90); `top` keeps the best ceil(eta% of n). At least one trace is kept.
- online (score `lowest` only): the first `deepconf_warmup` traces run in full and set the threshold s, the
  (100 - eta)-th percentile of their scores (eta 10: DeepConf-low, 90: DeepConf-high); of them only those
  scoring >= s are kept. The other n - warmup traces are generated `deepconf_chunk` tokens at a time and
  stopped as soon as the mean confidence of their last `deepconf_window` tokens falls below s (checked once
  a window is full); after generation every trace scoring below s is dropped too (one shorter than the
  window included), as the reference does. (The paper's consensus stop on extra traces is not applied:
  all traces run at once.)
The kept traces are the candidates. Without a reward model each candidate's step score is its confidence,
so `--vote weighted` is the paper's confidence-weighted vote (`majority`: plain voting over the kept);
with one, its scores are the step scores and the confidence is in `meta`. The first candidate's `meta`
records the traces, the threshold, the stopped traces and their tokens, the traces `dropped` after
generation, and `saved_tokens_est`: for each stopped trace, the mean warm-up trace length minus its own,
floored at zero (an estimate; the frontier benchmark measures savings against offline runs on the same seeds).
Needs top-k log-probabilities: all three backends return them (OpenAI's own API caps k at 5 or 20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from inferencekit.errors import UserError, unknown
from inferencekit.models.base import SamplingParams
from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult, register_method
from inferencekit.search.options import MAX_SAMPLES, MAX_TOKENS, MethodOptions
from inferencekit.search.samples import score_if_asked
from inferencekit.search.tree import Node, expand_chunk, node_seed

if TYPE_CHECKING:
    from inferencekit.config import RunConfig

SCORES = ("lowest", "bottom10", "tail", "mean")


def token_confidences(top_logprobs: list[list[tuple[str, float]]] | None) -> list[float]:
    """-mean of the top-k log-probabilities at each generated position."""
    return [-sum(lp for _, lp in top) / len(top) for top in top_logprobs or [] if top]


def trace_score(confs: list[float], window: int, how: str = "lowest") -> float:
    """A trace's score from its token confidences (NaN for none): see the module docstring for `how`.

    `lowest` and `bottom10` read the means of the sliding windows of `window` tokens (the whole trace when
    shorter); `tail` the mean of the last `window` tokens; `mean` the mean of all.
    """
    if not confs:
        return math.nan
    x = np.asarray(confs, dtype=float)
    if how == "mean" or (len(x) <= window and how in ("lowest", "bottom10")):
        return float(x.mean())
    if how == "tail":
        return float(x[-window:].mean())
    means = np.convolve(x, np.ones(window), "valid") / window
    if how == "lowest":
        return float(means.min())
    if how == "bottom10":
        return float(np.sort(means)[: max(1, int(len(means) * 0.1))].mean())
    raise unknown("DeepConf trace score", how, SCORES)


def percentile_keep(scores: list[float], eta: float) -> list[int]:
    """Indices of the scores >= the (100 - eta)-th percentile of the (non-NaN) scores, in order."""
    finite = [s for s in scores if not math.isnan(s)]
    if not finite:
        return []
    threshold = float(np.percentile(finite, 100 - eta))
    return [i for i, s in enumerate(scores) if not math.isnan(s) and s >= threshold]


def first_drop(confs: list[float], window: int, threshold: float, start: int) -> int | None:
    """The first position >= `start` where the window ending there has mean confidence below `threshold`."""
    for end in range(max(start, window - 1), len(confs)):
        if sum(confs[end - window + 1 : end + 1]) / window < threshold:
            return end
    return None


class Options(MethodOptions):
    deepconf_mode: Literal["offline", "online"] = Field("offline", description="offline (default) | online")
    deepconf_window: int = Field(2048, ge=1, le=MAX_TOKENS, description="tokens per confidence group (default 2048)")
    deepconf_eta: float = Field(90.0, gt=0, le=100, description="keep the top eta% of traces (default 90)")
    deepconf_warmup: int = Field(16, ge=1, le=MAX_SAMPLES, description="online: warm-up traces (default 16)")
    deepconf_top_k: int = Field(20, ge=1, le=MAX_SAMPLES, description="log-probabilities per token (default 20)")
    deepconf_chunk: int = Field(64, ge=1, le=MAX_TOKENS, description="online: tokens between checks (default 64)")
    deepconf_keep: Literal["percentile", "top"] = Field(
        "percentile", description="offline: percentile (default; the reference's) | top")
    deepconf_score: Literal["lowest", "bottom10", "tail", "mean"] = Field(
        "lowest", description="offline: lowest (default) | bottom10 | tail | mean")


@dataclass
class Traces:
    """One problem's traces so far: (candidate, score) pairs kept, what they cost, and the run's statistics."""

    kept: list[tuple[Candidate, float]]
    stats: dict[str, Any]
    generated: int = 0


@register_method("deepconf")
class DeepConf(SearchMethod):
    """DeepConf: score traces by their lowest windowed token confidence; keep the confident ones and vote."""

    provides_scores = True
    Options = Options

    @classmethod
    def check(cls, config: RunConfig) -> None:
        if config.deepconf_mode == "online" and config.deepconf_score != "lowest":
            raise UserError(f"--deepconf-score {config.deepconf_score} applies offline; online mode stops traces by "
                            "their lowest group confidence (use --deepconf-score lowest)")

    def search(self, problem: Problem) -> SearchResult:
        c = self.config
        warm = c.n if c.deepconf_mode == "offline" else min(c.n, c.deepconf_warmup)
        params = self.sampling_params(0, n=1, top_logprobs=c.deepconf_top_k)
        outs = self.generator.generate([problem.prompt] * warm,
                                       [params.replace(seed=node_seed(problem.seed, (j,))) for j in range(warm)])
        traces = Traces([], {"traces": c.n, "mode": c.deepconf_mode})
        for (out,) in outs:
            cand = Candidate(text=out.text, tokens=out.tokens, finish_reason=out.finish_reason)
            traces.kept.append((cand, trace_score(token_confidences(out.top_logprobs), c.deepconf_window,
                                                  c.deepconf_score)))
        traces.generated = sum(cand.tokens for cand, _ in traces.kept)
        if warm < c.n:
            self.online(problem, traces, params)
        kept = self.keep(traces.kept) if c.deepconf_mode == "offline" else traces.kept
        for cand, conf in kept:
            cand.meta["confidence"] = round(conf, 6)
            if self.reward_model is None:
                cand.step_scores = [conf]
        if kept:
            kept[0][0].meta.update(traces.stats, kept=len(kept))
        cands = [cand for cand, _ in kept]
        score_if_asked(self.reward_model, problem, cands)
        return SearchResult(cands, traces.generated)

    def keep(self, traces: list[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
        """The kept traces (`deepconf_keep`; at least one), best first; ties in sample order."""
        ranked = sorted(traces, key=lambda t: -t[1] if not math.isnan(t[1]) else math.inf)
        if self.config.deepconf_keep == "percentile":
            kept = {id(traces[i]) for i in percentile_keep([s for _, s in traces], self.config.deepconf_eta)}
            chosen = [t for t in ranked if id(t) in kept]
            return chosen or ranked[:1]
        k = max(1, math.ceil(len(traces) * self.config.deepconf_eta / 100 - 1e-9))
        return ranked[:k]

    def online(self, problem: Problem, traces: Traces, params: SamplingParams) -> None:
        """Generate the traces after the warm-up in chunks, stopping those whose confidence drops."""
        c = self.config
        threshold = float(np.percentile([s for _, s in traces.kept if not math.isnan(s)] or [math.inf],
                                        100 - c.deepconf_eta))
        warm_len = sum(cand.tokens for cand, _ in traces.kept) / len(traces.kept)
        nodes = [Node(path=(j,)) for j in range(len(traces.kept), c.n)]
        confs: dict[int, list[float]] = {id(x): [] for x in nodes}
        st = traces.stats
        st.update(threshold=round(threshold, 6), stopped=0, stopped_tokens=0, saved_tokens_est=0)
        admitted = [t for t in traces.kept if t[1] >= threshold]  # the reference admits warm-up traces >= it
        st["dropped"] = len(traces.kept) - len(admitted)
        traces.kept[:] = admitted
        while nodes:
            going = []
            for node, step in zip(nodes, expand_chunk(self.generator, problem, nodes, params, c.deepconf_chunk),
                                  strict=True):
                child, out = step
                seen = confs.pop(id(node))
                conf = seen + token_confidences(out.top_logprobs)
                traces.generated += out.tokens
                if first_drop(conf, c.deepconf_window, threshold, len(seen)) is not None:
                    st["stopped"] += 1
                    st["stopped_tokens"] += child.tokens
                    st["saved_tokens_est"] += round(max(0.0, warm_len - child.tokens))
                elif child.terminal and (score := trace_score(conf, c.deepconf_window)) >= threshold:
                    cand = Candidate(text=child.text, tokens=child.tokens, finish_reason=child.finish_reason)
                    traces.kept.append((cand, score))
                elif child.terminal:  # under the threshold as a whole (e.g. shorter than the window): dropped
                    st["dropped"] += 1
                else:
                    confs[id(child)] = conf
                    going.append(child)
            nodes = going
