"""File digests for a run's provenance: sha256 per file, cached by (path, size, mtime) in
`$INFERENCEKIT_CACHE_DIR` (default `~/.cache/inferencekit`), so large weights are read once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from inferencekit.cache import cache_root
from inferencekit.files import write_atomic


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
    """`{"sha256": digest over all, "files": {name: sha256}}`; one file's digest is the whole's.

    Names are paths below `root` (else file names), both taken with symlinks resolved: a data folder
    reached through a link (`--data-dir`) names its files as the real folder does.
    """
    base = root.resolve() if root else None
    files = {(str(p.resolve().relative_to(base)) if base else p.name): sha256_file(p) for p in sorted(paths)}
    if len(files) == 1:
        return {"sha256": next(iter(files.values())), "files": files}
    whole = hashlib.sha256("".join(f"{name}\0{h}\n" for name, h in sorted(files.items())).encode()).hexdigest()
    return {"sha256": whole, "files": files}
