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

from inferencekit.search.base import Candidate, Problem, SearchMethod, register_method
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


@register_method("self_consistency")
class SelfConsistency(SearchMethod):
    """Self-consistency that stops sampling early: ESC windows or the adaptive Beta rule; --n is the most."""

    def search(self, problems: list[Problem]) -> list[list[Candidate]]:
        c = self.config
        step = c.esc_window if c.sc_stop == "esc" else 1 if c.sc_stop == "adaptive" else c.n
        cands: list[list[Candidate]] = [[] for _ in problems]
        answers: list[list[str | None]] = [[] for _ in problems]
        live = list(range(len(problems)))
        while live:
            asks = [(i, j) for i in live for j in range(len(cands[i]), min(c.n, len(cands[i]) + step))]
            outs = self.generator.generate([problems[i].prompt for i, _ in asks],
                                           [self.sampling_params(node_seed(problems[i].seed, (j,)), n=1)
                                            for i, j in asks])
            for (i, _), (out,) in zip(asks, outs, strict=True):
                cands[i].append(Candidate(text=out.text, tokens=out.tokens, finish_reason=out.finish_reason))
                answers[i].append(answer_key(out.text, self.answer_style))
            live = [i for i in live
                    if len(cands[i]) < c.n and not should_stop(answers[i], c.sc_stop, c.esc_window, c.sc_confidence)]
        self.generated = [sum(x.tokens for x in cs) for cs in cands]
        for i, cs in enumerate(cands):
            samples = len(cs)
            if c.sc_stop == "esc" and c.esc_answer == "window" and should_stop(answers[i], "esc", c.esc_window, 0):
                cands[i] = cs = cs[-c.esc_window:]  # the unanimous window answers
            cs[0].meta = {"samples": samples, "stopped_early": samples < c.n}
        score_if_asked(self.reward_model, problems, cands)
        return cands
