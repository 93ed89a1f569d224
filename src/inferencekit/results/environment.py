"""Where a run ran, for its provenance: package versions, the git checkout, the machine, engine settings."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferencekit.models.base import Generator, GeneratorSpec

PACKAGES = ("inferencekit", "torch", "transformers", "llama-cpp-python", "math-verify", "openai", "numpy", "gguf")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, Any] | None:
    """Commit (and whether the tree had changes) of the checkout inferencekit runs from, if any."""
    source = Path(__file__).resolve().parents[3]  # <checkout>/src/inferencekit/results/environment.py
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty), "checkout": str(source)}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"system": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count()}
    info["cpu"] = _cpu_model()
    gpus = _gpu_names()
    if gpus:
        info["gpus"] = gpus
    return info


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.processor() or "unknown"


def _gpu_names() -> list[str]:
    """GPU names from torch when it is already loaded (importing it only for this is slow), else nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken driver must not stop a run
            pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def engine_settings(spec: GeneratorSpec, generator: Generator | None = None) -> dict[str, Any]:
    """Settings that can change the bits a model computes: the spec's (dtype, threads, batch width,
    attention) and what the loaded engine reports (`Generator.engine_settings`)."""
    chosen = {"dtype": spec.dtype, "n_ctx": spec.n_ctx, "n_threads": spec.n_threads,
              "max_batch_sequences": spec.max_batch_sequences, "attn_implementation": spec.attn_implementation,
              "device_map": spec.device_map}
    out: dict[str, Any] = {k: v for k, v in chosen.items() if v is not None}
    if spec.extra:
        out["extra"] = dict(spec.extra)
    if generator is not None:
        out.update(generator.engine_settings())
    return out
