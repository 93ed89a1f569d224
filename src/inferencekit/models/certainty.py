"""Kang et al. 2025's self-certainty of a next-token distribution, from its logits.

KL(U || p) = -(1/V) sum_j log(V p_j) = logsumexp(x) - mean(x) - log V for logits x over V entries: 0 for
the uniform distribution, larger the more peaked p is. Each backend that can read full distributions
computes it per generated position with these (llama.cpp in numpy, transformers in torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def kl_uniform(x: np.ndarray, logsumexp: float) -> float:
    """KL(uniform || softmax(x)) of one row of float64 logits, given their logsumexp."""
    return float(logsumexp - x.mean() - math.log(x.size))


def kl_uniform_rows(logits: Any) -> Any:
    """KL(uniform || softmax(row)) of every row of a torch tensor of logits (last axis: the vocabulary)."""
    x = logits.float()
    return x.logsumexp(-1) - x.mean(-1) - math.log(x.shape[-1])
