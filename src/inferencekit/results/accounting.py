"""Compute accounting: parameter counts, FLOPs estimates, and each candidate's share of its problem's cost.

FLOPs are estimated as 2 x parameters x tokens run through the model (Kaplan et al. 2020's forward
cost): for the generator, the prompt tokens it actually computed plus the tokens it generated; for
the reward model, the tokens it scored. A parameter count that cannot be known (a served model, unless
given as `--model-arg n_params=N`) leaves the FLOPs out rather than guessing.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferencekit.models.base import Generator, GeneratorSpec
    from inferencekit.results.records import Record
    from inferencekit.reward_models.base import RewardModel

# Usage keys split evenly among a problem's candidates (generated tokens are the candidates' own).
SHARED_KEYS = ("seconds", "calls", "prompt_tokens", "computed_prompt_tokens", "reward_calls", "reward_prompt_tokens",
               "reward_computed_prompt_tokens")


# gguf's reader parses every header field in Python (seconds for a 49k-token vocabulary): the runs of a sweep
# that start together wait for one parse rather than each fighting the others for the GIL.
_header_lock = threading.Lock()


def gguf_parameters(path: str | Path) -> int | None:
    """Parameter count of a GGUF file: the elements of all its tensors, read from the header (no weights loaded)."""
    path = Path(path).resolve()
    stat = path.stat()
    with _header_lock:
        return _gguf_parameters(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _gguf_parameters(path: str, size: int, mtime_ns: int) -> int | None:
    try:
        from gguf import GGUFReader

        return int(sum(int(t.n_elements) for t in GGUFReader(path).tensors))
    except (ImportError, OSError, ValueError):
        return None


def generator_parameters(spec: GeneratorSpec, generator: Generator | None = None) -> int | None:
    """The generator's parameter count: given (`n_params`), from the loaded model, or from a GGUF header (a
    llama.cpp model that runs elsewhere: a server pool, Ray)."""
    given = spec.n_params or spec.extra.get("n_params")
    if given:
        return int(given)
    loaded = generator.parameter_count() if generator is not None else None
    if loaded is not None:
        return loaded
    if spec.backend == "llamacpp":
        from inferencekit.models.llamacpp import resolve_gguf

        try:
            return gguf_parameters(resolve_gguf(spec))
        except (OSError, ValueError):
            return None
    return None


def reward_model_parameters(reward_model: RewardModel, generator_params: int | None) -> int | None:
    """A reward model's parameter count; one that scores with the policy model counts the policy's."""
    own = reward_model.parameter_count()
    if own is not None:
        return own
    return generator_params if reward_model.uses_policy_model else None


def parameter_counts(generator: Generator, reward_model: RewardModel | None = None) -> tuple[int | None, int | None]:
    """(generator, reward model) parameter counts of loaded models (cheap: a GGUF header is read once)."""
    spec = generator.spec
    gen = generator_parameters(spec, generator) if spec is not None else generator.parameter_count()
    return gen, reward_model_parameters(reward_model, gen) if reward_model is not None else None


def flops(usage: dict[str, Any], generator_params: int | None, reward_params: int | None) -> dict[str, float]:
    """`generator_flops`, `reward_flops` and their sum `flops` for one usage dict (known parts only)."""
    out: dict[str, float] = {}
    if generator_params:
        tokens = usage.get("computed_prompt_tokens", 0) + usage.get("completion_tokens", 0)
        out["generator_flops"] = float(2 * generator_params * tokens)
    if reward_params and usage.get("reward_calls"):
        tokens = usage.get("reward_computed_prompt_tokens", usage.get("reward_prompt_tokens", 0))
        out["reward_flops"] = float(2 * reward_params * tokens)
    if out:
        out["flops"] = sum(out.values())
    return out


def attach_costs(record: Record, generator_params: int | None, reward_params: int | None) -> None:
    """Add FLOPs to a record's usage and give each candidate its share of the record's cost.

    A candidate's `usage` holds its own generated tokens plus an even share of the rest (the prompt,
    calls, seconds, reward-model work, and tokens that tree search spent on pruned branches), so the
    candidates' usages sum to the record's.
    """
    usage = record.usage
    usage.update(flops(usage, generator_params, reward_params))
    cands = record.candidates
    if not cands:
        return
    k = len(cands)
    own = sum(c.tokens for c in cands)
    spare = (usage.get("completion_tokens", own) - own) / k
    for cand in cands:
        share = {key: round(usage[key] / k, 4) for key in SHARED_KEYS if key in usage}
        share["completion_tokens"] = round(cand.tokens + spare, 4)
        share.update(flops(share, generator_params, reward_params))
        cand.usage = share


def compute_summary(usage: dict[str, Any], ran: int) -> dict[str, Any]:
    """Per-problem compute from usage totals over `ran` problems, for tables and plots."""
    ran = max(ran, 1)
    out = {
        "tokens_per_problem": round((usage.get("computed_prompt_tokens", 0) + usage.get("completion_tokens", 0)) / ran,
                                    2),
        "generated_tokens_per_problem": round(usage.get("completion_tokens", 0) / ran, 2),
        "reward_tokens_per_problem": round(usage.get("reward_prompt_tokens", 0) / ran, 2),
    }
    if usage.get("flops"):
        out["flops_per_problem"] = usage["flops"] / ran
    return out
