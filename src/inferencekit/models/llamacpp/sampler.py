"""The llama.cpp backend's sampler: a pure function of logits, sampling settings and a random generator.

Nothing here touches llama.cpp. Sample `j` of a prompt draws from its own `np.random.default_rng([seed, j])`
(one uniform per token), so a sample does not depend on what else shares the batch.
"""

from __future__ import annotations

import numpy as np

from inferencekit.models.base import SamplingParams


def next_token(x: np.ndarray, p: SamplingParams, rng: np.random.Generator | None) -> int:
    """The next token from float64 logits `x`: the likeliest when `rng` is None (greedy), else a draw."""
    return int(np.argmax(x)) if rng is None else sample(x, p, rng)


def sample(x: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Draw a token from logits `x` with temperature, top-k and top-p, using one uniform from `rng`."""
    u = rng.random()
    x = x / p.temperature
    z = np.exp(x - x.max())
    keep: np.ndarray | None = None  # token ids allowed, None: all
    if 0 < p.top_k < x.size:
        keep = np.argpartition(-x, p.top_k - 1)[: p.top_k]
    if p.top_p < 1:
        pool, total = keep, z.sum() if keep is None else z[keep].sum()
        if pool is None:  # sort only the likeliest tokens when they already hold top_p of the mass
            pool = np.argpartition(-x, 255)[:256] if x.size > 256 else np.arange(x.size)
            if z[pool].sum() < p.top_p * total:
                pool = np.arange(x.size)
        pool = pool[np.lexsort((pool, -x[pool]))]
        cum = np.cumsum(z[pool]) / total
        keep = pool[: int(np.searchsorted(cum, p.top_p)) + 1]
    if keep is not None:
        keep = np.sort(keep)
        cum = np.cumsum(z[keep])
        return int(keep[min(int(np.searchsorted(cum, u * cum[-1], side="right")), keep.size - 1)])
    cum = np.cumsum(z)
    return int(min(int(np.searchsorted(cum, u * cum[-1], side="right")), x.size - 1))


def logsumexp(x: np.ndarray) -> float:
    """log(sum(exp(x))), computed stably: a token's log-probability is its logit minus this."""
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def top_k(x: np.ndarray, k: int) -> list[int]:
    """Ids of the `k` largest logits, largest first (ties: lower id first)."""
    k = min(k, x.size)
    pool = np.argpartition(-x, k - 1)[:k]
    return pool[np.lexsort((pool, -x[pool]))].tolist()
