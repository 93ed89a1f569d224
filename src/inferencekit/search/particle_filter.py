"""Particle filtering (Puri et al. 2025, arXiv 2502.01618) and particle Gibbs over solution steps.

Budget: `n` particles in all; with `pf_iterations` K sweeps of particle Gibbs, N = n / K particles per sweep
(n must be a multiple of K, as its_hub asserts). Each round every unfinished particle extends by one step
(`expand`), the reward model scores its partial path (`score`, the run's aggregation: `last` reads the
newest step's score), and N particles are resampled from the N current ones with probabilities
softmax(logit(score)), the score clipped to [1e-7, 1 - 1e-7] (a NaN counts as the floor); finished particles
keep their last weight and can be drawn again. A sweep ends when every particle is finished.
`pf_resampling`: multinomial or systematic. `pf_tempering` (entropic particle filtering): when the effective
sample size 1 / sum(p^2) falls below N/2 in the first half of the steps (depth / `max_steps` < 1/2), the
log-weights are divided by T = max(1, (N / ESS) * (1 - depth / max_steps)).

Particle Gibbs: after a sweep, one reference particle is drawn by weight; the next sweep runs N - 1 free
particles beside it. At round t the reference stands at its depth-t prefix (or its end), is weighed with the
others and may be drawn by free particles (which then branch off its prefix), and it always survives. Its
weight (`pf_reference_weight`): `final`, the score of its whole path, as its_hub
(its_hub/core/algorithms/particle_gibbs.py @ 2d340bb: a finished particle weighs its last weight), or
`prefix`, the score its depth-t prefix had. The candidates are the final particles of every sweep (N per
sweep, copies included, so votes count a particle's copies), each with its weight and sweep in `meta`.
Resampling draws from a generator seeded by the problem's seed, sampling seeds come from tree positions (and
the sweep), so a problem's particles do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from inferencekit.errors import UserError
from inferencekit.search.base import Candidate, Problem, SearchResult, register_method
from inferencekit.search.options import MAX_STEPS, MethodOptions
from inferencekit.search.tree import Node, Tree, TreeSearch, node_seed, resample

if TYPE_CHECKING:
    from inferencekit.config import RunConfig

CLIP = 1e-7


def log_weights(scores: list[float]) -> np.ndarray:
    """logit of each score, clipped to [CLIP, 1 - CLIP]; NaN counts as the floor."""
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=float), nan=CLIP), CLIP, 1 - CLIP)
    return np.log(s / (1 - s))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def tempered(logw: np.ndarray, progress: float) -> np.ndarray:
    """Resampling probabilities, flattened while the effective sample size is below half (entropic PF)."""
    p = softmax(logw)
    ess = 1.0 / float(np.sum(p**2))
    if ess < len(p) / 2 and progress < 0.5:
        p = softmax(logw / max(1.0, len(p) / ess * (1 - progress)))
    return p


def prefix(node: Node, depth: int) -> Node:
    """The node's ancestor at `depth` (the node itself when it is not deeper)."""
    while node.depth > depth and node.parent is not None:
        node = node.parent
    return node


def weighed_pool(particles: list[Node], ref: Node | None, depth: int, weight: str = "final"
                 ) -> tuple[list[Node], list[float]]:
    """The nodes resampling draws from at round `depth` and their scores: the particles, then the reference
    particle's depth-`depth` prefix weighed by its whole path's score (`final`, its_hub) or the prefix's."""
    if ref is None:
        return list(particles), [x.score for x in particles]
    stand = prefix(ref, depth)
    return [*particles, stand], [x.score for x in particles] + [ref.score if weight == "final" else stand.score]


class Options(MethodOptions):
    pf_resampling: Literal["multinomial", "systematic"] = Field(
        "multinomial", description="multinomial (default) | systematic")
    pf_tempering: bool = Field(False, description="temper the weights when the effective sample size falls below N/2")
    pf_iterations: int = Field(1, ge=1, le=MAX_STEPS, description="particle Gibbs sweeps (default 1), n in all")
    pf_reference_weight: Literal["final", "prefix"] = Field(
        "final", description="particle Gibbs: the reference's weight: final (default, its_hub) | prefix")


@register_method("particle_filter")
class ParticleFilter(TreeSearch):
    """Particle filtering: extend N particles a step, weigh by reward, resample; particle Gibbs with sweeps."""

    Options = Options

    @classmethod
    def check(cls, config: RunConfig) -> None:
        if (config.reward_model_args.get("format") or config.reward_model) == "self_certainty":
            raise UserError("particle_filter weighs particles by logit(score), for scores in (0, 1); self_certainty's "
                            "KL divergence is unbounded: use --reward-model mean_logprob (its_hub's signal) or a PRM")
        k = config.pf_iterations
        if k > 1 and (config.n % k or config.n < 2 * k):
            raise UserError(f"particle Gibbs runs --n / --pf-iterations particles per sweep, 2 or more: --n {config.n} "
                            f"does not fit --pf-iterations {k} (give --n >= {2 * k}, a multiple of {k})")

    def search(self, problem: Problem) -> SearchResult:
        c = self.config
        n = c.n // c.pf_iterations
        generated = 0
        rng = np.random.default_rng(problem.seed)
        ref: Node | None = None
        out: list[Candidate] = []
        for sweep in range(c.pf_iterations):
            seeded = problem if sweep == 0 else replace(problem, seed=node_seed(problem.seed, (-1, sweep)))
            tree = self.tree(seeded)
            final = self.sweep(tree, n, ref, rng)
            generated += tree.generated
            probs = softmax(log_weights([x.score for x in final]))
            ranked = sorted(range(len(final)), key=lambda j: (-probs[j], final[j].path))
            out += [tree.to_candidate(final[j], weight=round(float(probs[j]), 6), sweep=sweep) for j in ranked]
            if sweep + 1 < c.pf_iterations:  # particle Gibbs: the next sweep's reference, drawn by weight
                ref = final[resample(probs, 1, rng, "multinomial")[0]]
        return SearchResult(out, generated)

    def sweep(self, tree: Tree, n: int, ref: Node | None, rng: np.random.Generator) -> list[Node]:
        """One particle filtering run (conditional on the reference particle, if any)."""
        free = n - (ref is not None)
        particles = [tree.root] * free
        depth = 0
        while any(not x.terminal for x in particles):
            depth += 1
            distinct = list({id(x): x for x in particles if not x.terminal}.values())
            counts = [sum(x is y for y in particles) for x in distinct]
            grown = {id(x): iter(kids) for x, kids in zip(distinct, tree.expand_each(distinct, counts), strict=True)}
            particles = [x if x.terminal else next(grown[id(x)]) for x in particles]
            tree.score(particles)
            pool, scores = weighed_pool(particles, ref, depth, self.config.pf_reference_weight)
            logw = log_weights(scores)
            probs = tempered(logw, depth / self.config.max_steps) if self.config.pf_tempering else softmax(logw)
            particles = [pool[j] for j in resample(probs, free, rng, self.config.pf_resampling)]
        return particles + ([ref] if ref is not None else [])
