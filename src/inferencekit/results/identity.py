"""What a run's inputs are, for its provenance identity: the model (file hashes, hub id and revision, or
what the servers report), the dataset's files, and the reward model."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferencekit.errors import UserError, first_line
from inferencekit.redact import remember
from inferencekit.results.hashing import hash_files

if TYPE_CHECKING:
    from inferencekit.config import RunConfig
    from inferencekit.datasets import Dataset
    from inferencekit.models.base import GeneratorSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model", ".json", ".txt", ".jinja")


def model_identity(spec: GeneratorSpec) -> dict[str, Any]:
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


def served_models(spec: GeneratorSpec) -> list[dict[str, Any]] | str:
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


def dataset_identity(dataset: Dataset, name: str) -> dict[str, Any]:
    """The files a dataset was read from, hashed; a hub dataset's id and fingerprint."""
    ident: dict[str, Any] = {"name": name, "samples": len(dataset.samples)}
    files = [Path(p) for p in dataset.files]
    if files:
        ident.update(hash_files(files, _common_root(files)))
    if dataset.hub:
        ident["hub"] = dataset.hub
    return ident


def _common_root(files: list[Path]) -> Path | None:
    if len(files) < 2:
        return None
    return Path(os.path.commonpath([str(p.resolve()) for p in files]))


def reward_model_identity(config: RunConfig) -> dict[str, Any] | None:
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
