"""A run's reproducibility record, `provenance.json`: what ran, on what, from which bytes.

Written when a run starts and updated when it ends. It holds the run's identity, which a resumed
run must share (the model's and the dataset's sha256, the reward model's), and one entry per
invocation with what may differ between them without changing results (package versions, git
commit, machine, engine settings, times). Large files are hashed once: digests are cached by
(path, size, mtime) in `$INFERENCEKIT_CACHE_DIR` (default `~/.cache/inferencekit`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from inferencekit.cache import cache_root
from inferencekit.errors import UserError, first_line
from inferencekit.files import write_atomic
from inferencekit.redact import redact, redact_data, remember
from inferencekit.results.store import PREDICTIONS, PROVENANCE

PACKAGES = ("inferencekit", "torch", "transformers", "llama-cpp-python", "math-verify", "openai", "numpy", "gguf")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model", ".json", ".txt", ".jinja")

log = logging.getLogger("inferencekit")


# ---------------------------------------------------------------- hashing, cached by (path, size, mtime)


def _cache_file() -> Path:
    return cache_root() / "sha256.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read from the cache when its path, size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _read_cache()
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    cache = {k: v for k, v in _read_cache().items() if not k.startswith(f"{path}|")}  # drop stale entries
    cache[key] = digest.hexdigest()
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_cache_file(), json.dumps(cache, indent=0, sort_keys=True))
    except OSError:  # a read-only home: hash again next time
        pass
    return cache[key]


def hash_files(paths: list[Path], root: Path | None = None) -> dict[str, Any]:
    """`{"sha256": digest over all, "files": {name: sha256}}`; one file's digest is the whole's."""
    files = {(str(p.relative_to(root)) if root else p.name): sha256_file(p) for p in sorted(paths)}
    if len(files) == 1:
        return {"sha256": next(iter(files.values())), "files": files}
    whole = hashlib.sha256("".join(f"{name}\0{h}\n" for name, h in sorted(files.items())).encode()).hexdigest()
    return {"sha256": whole, "files": files}


# ---------------------------------------------------------------- identities


def model_identity(spec: Any) -> dict[str, Any]:
    """What model a `GeneratorSpec` names: file hashes when local, hub id and revision, or a server's list."""
    ident: dict[str, Any] = {"name": spec.name, "backend": spec.backend, "path": spec.path}
    if spec.backend == "openai":
        ident["served"] = served_models(spec)
        return ident
    local = Path(spec.path).expanduser()
    if local.exists():
        ident.update(hash_files(*_weight_files(local, spec.gguf_file)))
    else:  # a hub id
        ident["hub_id"] = spec.path
        ident["revision"] = spec.extra.get("revision") or hub_revision(spec.path)
    return ident


def _weight_files(local: Path, gguf_file: str | None) -> tuple[list[Path], Path | None]:
    if local.is_file():
        return [local], None
    if gguf_file:
        return [local / gguf_file], None
    files = [p for p in local.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return files, local


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model in the local cache (what `from_pretrained` loads offline), else None."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def served_models(spec: Any) -> list[dict[str, Any]] | str:
    """The model list the OpenAI-compatible servers report (`GET /models`), or why it could not be read.

    With a pool of servers each item also names its `server`.
    """
    from inferencekit.models.openai import api_key, base_urls

    urls = base_urls(spec)
    key = api_key(spec)
    remember(key)  # an error a server echoes it in must not record it
    found: list[dict[str, Any]] = []
    for url in urls:
        models = _served_by(url.rstrip("/"), key)
        if isinstance(models, str):
            return f"{url}: {models}" if len(urls) > 1 else models
        found += [{**m, "server": url} for m in models] if len(urls) > 1 else models
    return found


def _served_by(base: str, key: str | None) -> list[dict[str, Any]] | str:
    request = urllib.request.Request(f"{base}/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the user's own server
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return f"unavailable: {type(exc).__name__}: {first_line(str(exc))}"[:200]
    items = data.get("data", []) if isinstance(data, dict) else []
    keep = ("id", "object", "owned_by", "created", "root", "parent", "max_model_len", "meta")
    return [{k: v for k, v in item.items() if k in keep} for item in items if isinstance(item, dict)]


def dataset_identity(dataset: Any, name: str) -> dict[str, Any]:
    """The files a dataset was read from, hashed; a hub dataset's id and fingerprint."""
    ident: dict[str, Any] = {"name": name, "samples": len(dataset.samples)}
    files = [Path(p) for p in getattr(dataset, "files", [])]
    if files:
        ident.update(hash_files(files, _common_root(files)))
    if getattr(dataset, "hub", None):
        ident["hub"] = dataset.hub
    return ident


def _common_root(files: list[Path]) -> Path | None:
    if len(files) < 2:
        return None
    return Path(os.path.commonpath([str(p.resolve()) for p in files]))


def reward_model_identity(config: Any) -> dict[str, Any] | None:
    if config.reward_model is None:
        return None
    ident: dict[str, Any] = {"name": config.reward_model, "format": config.reward_model_args.get("format")}
    local = Path(config.reward_model).expanduser()
    if local.exists():
        ident.update(hash_files(*_weight_files(local, None)))
    else:
        try:
            from inferencekit.reward_models import resolve_reward_model

            spec = resolve_reward_model(config.reward_model, config.reward_model_args.get("format"))
        except UserError:
            return ident
        ident["format"] = spec.format
        if spec.path:
            ident["hub_id"] = spec.path
            ident["revision"] = hub_revision(spec.path)
        else:
            ident["uses"] = "the policy model"
    return ident


# ---------------------------------------------------------------- environment


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
    source = Path(__file__).resolve().parents[3]  # <checkout>/src/inferencekit/results/provenance.py
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


def engine_settings(spec: Any, generator: Any = None) -> dict[str, Any]:
    """Settings that can change the bits a model computes: dtype, threads, batch width, KV layout, attention."""
    out: dict[str, Any] = {
        k: getattr(spec, k) for k in ("dtype", "n_ctx", "n_threads", "max_batch_sequences", "attn_implementation",
                                      "device_map") if getattr(spec, k, None) is not None
    }
    if spec.extra:
        out["extra"] = dict(spec.extra)
    own = getattr(generator, "engine_settings", None)
    if callable(own):  # a backend that knows its settings says them
        out.update(own())
        return out
    if spec.backend == "llamacpp":
        out.update(_llamacpp_settings(generator))
    elif spec.backend == "hf":
        out.update(_hf_settings(generator))
    return out


def _llamacpp_settings(generator: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kv_unified": False, "flash_attn": False}  # what LlamaCppGenerator's contexts use
    threads = getattr(generator, "_threads", None)
    if threads:
        out["threads"] = threads
    try:
        import llama_cpp

        out["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    except (ImportError, AttributeError):
        pass
    return out


def _hf_settings(generator: Any) -> dict[str, Any]:
    model = getattr(generator, "model", None)
    if model is None:
        return {}
    out: dict[str, Any] = {"torch_dtype": str(getattr(model, "dtype", "")), "device": str(getattr(model, "device", ""))}
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    if attn:
        out["attention"] = attn
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["tf32"] = bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False))
    return out


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

    def loaded(self, spec: Any, generator: Any, reward_model: Any = None) -> None:
        """Add what is known once the models are loaded (engine settings, parameter counts)."""
        from inferencekit.results.accounting import parameter_counts

        self.current["engine"] = engine_settings(spec, generator)
        params, rm_params = parameter_counts(generator, reward_model)
        self.identity["model"]["n_params"] = params
        if self.identity.get("reward_model") is not None:
            self.identity["reward_model"]["n_params"] = rm_params
        self.write()

    def finish(self, metrics: dict[str, Any] | None = None, generated: int = 0) -> None:
        self.current["finished"] = _now()
        self.current["generated"] = generated
        if metrics is not None:
            self.current["failed"] = metrics.get("failed", 0)
        self.write()


IDENTITY_CHECKS = (("model", "sha256"), ("dataset", "sha256"), ("reward_model", "sha256"))


def begin_provenance(run_dir: Path, config: Any, spec: Any, dataset: Any, resume: bool) -> Provenance:
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
