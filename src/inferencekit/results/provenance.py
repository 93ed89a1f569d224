"""A run's reproducibility record, `provenance.json`: what ran, on what, from which bytes.

Written when a run starts and updated when it ends. It holds the run's identity, which a resumed
run must share (the model's and the dataset's sha256, the reward model's: `identity.py`, hashed by
`hashing.py`), and one entry per invocation with what may differ between them without changing results
(package versions, git commit, machine, engine settings, times: `environment.py`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferencekit.errors import UserError
from inferencekit.files import write_atomic
from inferencekit.redact import redact, redact_data
from inferencekit.results.environment import engine_settings, git_state, machine, package_versions
from inferencekit.results.hashing import hash_files, sha256_file
from inferencekit.results.identity import dataset_identity, model_identity, reward_model_identity
from inferencekit.results.store import PREDICTIONS, PROVENANCE

if TYPE_CHECKING:
    from inferencekit.config import RunConfig
    from inferencekit.datasets import Dataset
    from inferencekit.models.base import Generator, GeneratorSpec
    from inferencekit.reward_models.base import RewardModel

__all__ = ["IDENTITY_CHECKS", "Provenance", "begin_provenance", "hash_files", "read_provenance", "sha256_file"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the record


@dataclass
class Provenance:
    """The record of one run folder; `begin` checks it against a resumed run, `write` stores it."""

    path: Path
    identity: dict[str, Any]
    invocations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def current(self) -> dict[str, Any]:
        return self.invocations[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity, "invocations": self.invocations}

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(redact_data(self.to_dict()), indent=2, ensure_ascii=False) + "\n")

    def loaded(self, spec: GeneratorSpec, generator: Generator, reward_model: RewardModel | None = None) -> None:
        """Add what is known once the models are loaded (engine settings, parameter counts)."""
        from inferencekit.results.accounting import parameter_counts

        self.current["engine"] = engine_settings(spec, generator)
        params, rm_params = parameter_counts(generator, reward_model)
        self.identity["model"]["n_params"] = params
        if self.identity.get("reward_model") is not None:
            self.identity["reward_model"]["n_params"] = rm_params
        self.write()

    def finish(self, metrics: dict[str, Any] | None = None, problems_generated: int = 0) -> None:
        """Close this invocation: when it finished and how many problems it searched (key `generated`)."""
        self.current["finished"] = _now()
        self.current["generated"] = problems_generated
        if metrics is not None:
            self.current["failed"] = metrics.get("failed", 0)
        self.write()


IDENTITY_CHECKS = (("model", "sha256"), ("dataset", "sha256"), ("reward_model", "sha256"))


def begin_provenance(
    run_dir: Path, config: RunConfig, spec: GeneratorSpec, dataset: Dataset, resume: bool
) -> Provenance:
    """The record for a run starting (or resuming) in `run_dir`; not yet written.

    On resume, a model, dataset or reward model whose sha256 differs from the recorded one is refused
    with a `UserError`, as a changed setting is.
    """
    from inferencekit.datasets import dataset_label

    identity = {
        "model": model_identity(spec),
        "dataset": dataset_identity(dataset, dataset_label(config.dataset)),
        "reward_model": reward_model_identity(config),
    }
    path = Path(run_dir) / PROVENANCE
    old = read_provenance(run_dir) if resume else {}
    has_results = resume and (Path(run_dir) / PREDICTIONS).is_file() and (Path(run_dir) / PREDICTIONS).stat().st_size
    for part, key in IDENTITY_CHECKS:
        before, now = (old.get(part) or {}).get(key), (identity.get(part) or {}).get(key)
        if has_results and now and not before:  # a lost record must not wave a changed model or dataset through
            raise UserError(
                f"{path} is missing, unreadable or lacks the {part.replace('_', ' ')}'s sha256, so the finished "
                "results cannot be checked against it; use --no-resume to start over (they are kept aside)"
            )
        if before and now and before != now:
            raise UserError(
                f"{run_dir} was run with another {part.replace('_', ' ')} (sha256 {before[:12]}... -> {now[:12]}...); "
                "use --no-resume to start over or --exp-name to keep both"
            )
    for part in ("model", "reward_model"):  # parameter counts found by an earlier invocation
        if (old.get(part) or {}).get("n_params") and identity.get(part) is not None:
            identity[part].setdefault("n_params", old[part]["n_params"])
    invocation = {
        "started": _now(),
        "argv": [redact(a) for a in sys.argv[1:]] if sys.argv and "inferencekit" in sys.argv[0] else None,
        "inferencekit": {"version": package_versions().get("inferencekit"), "git": git_state()},
        "versions": package_versions(), "machine": machine(),
    }
    previous = list(old.get("invocations") or [])
    return Provenance(path=path, identity=identity, invocations=[*previous, invocation])


def read_provenance(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / PROVENANCE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
