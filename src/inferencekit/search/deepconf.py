"""DeepConf: confidence-filtered voting (Fu et al. 2025, arXiv 2508.15260).

Budget: `n` traces per problem. Token confidence C_i = -(1/k) sum_j log P_i(j) over the k = `deepconf_top_k`
likeliest tokens at position i; group confidence = the mean of C over a sliding window of
`deepconf_window` tokens (over the whole trace when shorter); a trace's score = its lowest group
confidence.
- offline: n traces; the top eta% (`deepconf_eta`, rounded up) by score are kept, the others dropped.
- online: the first `deepconf_warmup` traces run in full and set the threshold s, the (100 - eta)-th
  percentile of their scores (eta 10: DeepConf-low, 90: DeepConf-high); the other n - warmup traces
  are generated `deepconf_chunk` tokens at a time and stopped as soon as the mean confidence of their
  last `deepconf_window` tokens falls below s (checked once a window is full). Stopped traces are
  dropped; the warm-up traces and the finished ones are kept. (The paper's consensus stop on extra
  traces is not applied: all traces run at once.)
The kept traces are the candidates. Without a reward model each candidate's step score is its confidence,
so `--vote weighted` is the paper's confidence-weighted vote (`majority`: plain voting over the kept);
with one, its scores are the step scores and the confidence is in `meta`. The first candidate's `meta`
records the traces, the threshold, the stopped traces and their tokens, and `saved_tokens_est`: for each
stopped trace, the mean warm-up trace length minus its own, floored at zero (an estimate; the frontier
benchmark measures savings against offline runs on the same seeds).
Needs top-k log-probabilities: all three backends return them (OpenAI's own API caps k at 5 or 20).
"""

from __future__ import annotations

import math

import numpy as np

from inferencekit.search.base import Candidate, Problem, SearchMethod, register_method
from inferencekit.search.samples import score_if_asked
from inferencekit.search.tree import Node, expand_chunk, node_seed


def token_confidences(top_logprobs: list[list[tuple[str, float]]] | None) -> list[float]:
    """-mean of the top-k log-probabilities at each generated position."""
    return [-sum(lp for _, lp in top) / len(top) for top in top_logprobs or [] if top]


def trace_score(confs: list[float], window: int) -> float:
    """Lowest mean confidence over sliding windows of `window` tokens (the whole trace when shorter)."""
    if not confs:
        return math.nan
    if len(confs) <= window:
        return sum(confs) / len(confs)
    sums = np.convolve(np.asarray(confs, dtype=float), np.ones(window), "valid")
    return float(sums.min() / window)


def first_drop(confs: list[float], window: int, threshold: float, start: int) -> int | None:
    """The first position >= `start` where the window ending there has mean confidence below `threshold`."""
    for end in range(max(start, window - 1), len(confs)):
        if sum(confs[end - window + 1 : end + 1]) / window < threshold:
            return end
    return None


@register_method("deepconf")
class DeepConf(SearchMethod):
    """DeepConf: score traces by their lowest windowed token confidence; keep the confident ones and vote."""

    provides_scores = True

    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        c = self.config
        warm = c.n if c.deepconf_mode == "offline" else min(c.n, c.deepconf_warmup)
        params = self.sampling_params(0, n=1, top_logprobs=c.deepconf_top_k)
        asks = [(i, j) for i in range(len(problems)) for j in range(warm)]
        outs = self.generator.generate([problems[i].prompt for i, _ in asks],
                                       [params.replace(seed=node_seed(problems[i].seed, (j,))) for i, j in asks])
        traces: list[list[tuple[Candidate, float]]] = [[] for _ in problems]
        for (i, _), (out,) in zip(asks, outs, strict=True):
            cand = Candidate(text=out.text, tokens=out.tokens, finish_reason=out.finish_reason)
            traces[i].append((cand, trace_score(token_confidences(out.top_logprobs), c.deepconf_window)))
        self.generated = [sum(cand.tokens for cand, _ in ts) for ts in traces]
        stats = [{"traces": c.n, "mode": c.deepconf_mode} for _ in problems]
        if warm < c.n:
            self.online(problems, traces, stats, params)
        kept = [self.keep(ts) if c.deepconf_mode == "offline" else ts for ts in traces]
        cands = [[cand for cand, _ in ts] for ts in kept]
        for ts, st in zip(kept, stats, strict=True):
            for cand, conf in ts:
                cand.meta["confidence"] = round(conf, 6)
                if self.reward_model is None:
                    cand.step_scores = [conf]
            if ts:
                ts[0][0].meta.update(st, kept=len(ts))
        score_if_asked(self.reward_model, problems, cands)
        return cands

    def keep(self, traces: list[tuple[Candidate, float]]) -> list[tuple[Candidate, float]]:
        """The top eta% of traces by score (at least one), best first; ties in sample order."""
        k = max(1, math.ceil(len(traces) * self.config.deepconf_eta / 100 - 1e-9))
        return sorted(traces, key=lambda t: -t[1] if not math.isnan(t[1]) else math.inf)[:k]

    def online(self, problems: list[Problem], traces, stats, params) -> None:
        """Generate the traces after the warm-up in chunks, stopping those whose confidence drops."""
        c = self.config
        threshold = [float(np.percentile([s for _, s in ts if not math.isnan(s)] or [math.inf], 100 - c.deepconf_eta))
                     for ts in traces]
        warm_len = [sum(cand.tokens for cand, _ in ts) / len(ts) for ts in traces]
        nodes = [Node(i, path=(j,)) for i in range(len(problems)) for j in range(len(traces[i]), c.n)]
        confs: dict[int, list[float]] = {id(x): [] for x in nodes}
        for st, s in zip(stats, threshold, strict=True):
            st.update(threshold=round(s, 6), stopped=0, stopped_tokens=0, saved_tokens_est=0)
        while nodes:
            going = []
            for node, step in zip(nodes, expand_chunk(self.generator, problems, nodes, params, c.deepconf_chunk),
                                  strict=True):
                child, out = step
                seen = confs.pop(id(node))
                conf = seen + token_confidences(out.top_logprobs)
                self.generated[node.problem] += out.tokens
                st = stats[node.problem]
                if first_drop(conf, c.deepconf_window, threshold[node.problem], len(seen)) is not None:
                    st["stopped"] += 1
                    st["stopped_tokens"] += child.tokens
                    st["saved_tokens_est"] += round(max(0.0, warm_len[node.problem] - child.tokens))
                elif child.terminal:
                    cand = Candidate(text=child.text, tokens=child.tokens, finish_reason=child.finish_reason)
                    traces[node.problem].append((cand, trace_score(conf, c.deepconf_window)))
                else:
                    confs[id(child)] = conf
                    going.append(child)
            nodes = going
