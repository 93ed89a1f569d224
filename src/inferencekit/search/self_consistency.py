"""Self-consistency with early stopping: ESC (Li et al. 2024, arXiv 2401.10480) and adaptive consistency
(Aggarwal et al. 2023, arXiv 2305.11860).

Budget: `n` is the most samples per problem. Sample j of a problem has its own seed (from the problem's
seed and j), so every stopping rule reads the same stream of samples and stops at a prefix of it.
- `esc`: samples come in windows of `esc_window`; after a window whose answers are all the same (and
  not missing), sampling stops. ESC answers with that window's answer: with `esc_answer=window` (the
  default, as ESC's reference) the candidates are that window's samples (the earlier ones count in the
  tokens and `meta.samples`, not in the vote); `all` votes over every sample drawn. Without a unanimous
  window all n samples are the candidates either way.
- `adaptive`: one sample at a time; with v1, v2 the counts of the two most frequent answers, sampling
  stops once P(p > 1/2) > `sc_confidence` (0.95) for p ~ Beta(v1 + 1, v2 + 1) (the Beta stopping rule).
- `none`: all n samples (plain self-consistency on the same stream).
The vote is the run's `--vote` (majority is self-consistency) over the candidates. Answers are grouped
in the dataset's grading style (`answer_style`, e.g. GSM8K style for `arith`). The first candidate's
`meta` records `samples` (how many were drawn) and `stopped_early`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

from pydantic import Field

from inferencekit.search.base import Candidate, Problem, SearchMethod, SearchResult, register_method
from inferencekit.search.options import MAX_SAMPLES, MethodOptions
from inferencekit.search.samples import answer_key, score_if_asked
from inferencekit.search.tree import node_seed


def beta_confidence(v1: int, v2: int) -> float:
    """P(X > 1/2) for X ~ Beta(v1 + 1, v2 + 1), exactly: P(Binomial(v1 + v2 + 1, 1/2) <= v1)."""
    n = v1 + v2 + 1
    return sum(math.comb(n, k) for k in range(v1 + 1)) / 2**n


def should_stop(answers: list[str | None], rule: str, window: int, confidence: float) -> bool:
    """Whether the samples so far (in order) meet the stopping rule."""
    if rule == "esc":
        last = answers[-window:]
        return len(answers) % window == 0 and last[0] is not None and len(set(last)) == 1
    if rule == "adaptive":
        counts = [c for _, c in Counter(a for a in answers if a is not None).most_common(2)] + [0, 0]
        return counts[0] > 0 and beta_confidence(counts[0], counts[1]) > confidence
    return False


class Options(MethodOptions):
    sc_stop: Literal["esc", "adaptive", "none"] = Field("esc", description="esc (default) | adaptive | none")
    esc_window: int = Field(5, ge=1, le=MAX_SAMPLES, description="ESC window (default 5)")
    esc_answer: Literal["window", "all"] = Field(
        "window", description="window (default; the unanimous window's samples) | all")
    sc_confidence: float = Field(0.95, gt=0, lt=1, description="adaptive stopping threshold (default 0.95)")


@register_method("self_consistency")
class SelfConsistency(SearchMethod):
    """Self-consistency that stops sampling early: ESC windows or the adaptive Beta rule; --n is the most."""

    Options = Options

    def search(self, problem: Problem) -> SearchResult:
        c = self.config
        step = c.esc_window if c.sc_stop == "esc" else 1 if c.sc_stop == "adaptive" else c.n
        cands: list[Candidate] = []
        answers: list[str | None] = []
        while True:
            seeds = [node_seed(problem.seed, (j,)) for j in range(len(cands), min(c.n, len(cands) + step))]
            outs = self.generator.generate([problem.prompt] * len(seeds),
                                           [self.sampling_params(seed, n=1) for seed in seeds])
            for (out,) in outs:
                cands.append(Candidate(text=out.text, tokens=out.tokens, finish_reason=out.finish_reason))
                answers.append(answer_key(out.text, self.answer_style))
            if len(cands) >= c.n or should_stop(answers, c.sc_stop, c.esc_window, c.sc_confidence):
                break
        generated = sum(x.tokens for x in cands)
        samples = len(cands)
        if c.sc_stop == "esc" and c.esc_answer == "window" and should_stop(answers, "esc", c.esc_window, 0):
            cands = cands[-c.esc_window:]  # the unanimous window answers
        cands[0].meta = {"samples": samples, "stopped_early": samples < c.n}
        score_if_asked(self.reward_model, problem, cands)
        return SearchResult(cands, generated)
