"""Files the toolkit reads and writes: YAML mappings read with one-line errors, and writes that a reader
never sees half of (write to a uniquely named temporary file, sync, rename). Several files of one folder
that must change together go through a journal (`write_together`), which `recover` rolls forward after
a crash between the renames."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import yaml

from inferencekit.errors import UserError, first_line

JOURNAL = ".journal.json"  # renames still to do in a folder: present only between write_together's renames
MAX_YAML_VALUES = 100_000  # a config is a few hundred values; more means nested aliases (a "billion laughs")
FAULT_ENV = "INFERENCEKIT_FAULT"  # test hook: the name of a fault_point at which the process kills itself


def fault_point(name: str) -> None:
    """SIGKILL this process here when $INFERENCEKIT_FAULT names this point (crash tests; a no-op otherwise)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty for an empty file); `UserError` in one line naming `what` it is."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a mapping of keys to values")
    if _too_many_values(data, MAX_YAML_VALUES):
        raise UserError(f"{what} {path} expands to more than {MAX_YAML_VALUES} values (nested YAML aliases?)")
    return data


def _too_many_values(data: Any, limit: int) -> bool:
    """Whether `data` counted as a tree (aliases expanded, as a dump would write them) exceeds `limit` values."""
    stack, seen = [data], 0
    while stack:
        seen += 1
        if seen > limit:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return False


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path` (unique per call, so concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _write_temp(path: Path, data: str | bytes) -> Path:
    tmp = temp_path(path)
    with tmp.open("xb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_together(folder: Path, files: dict[str, str | bytes]) -> None:
    """Replace several files of `folder` as one change.

    All new contents are written and synced under temporary names, then a journal listing the renames is
    written (itself write-then-rename), then the renames are done and the journal removed. A crash before
    the journal leaves the old files; after it, `recover` (run by the next writer) finishes the renames.
    """
    temps = {}
    try:
        for name, data in files.items():
            temps[name] = _write_temp(folder / name, data)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    write_atomic(folder / JOURNAL, json.dumps({"renames": [[tmp.name, name] for name, tmp in temps.items()]}))
    _sync_dir(folder)
    _replay(folder)


def _replay(folder: Path) -> None:
    journal = folder / JOURNAL
    try:
        renames = json.loads(journal.read_text(encoding="utf-8"))["renames"]
    except (OSError, ValueError, KeyError, TypeError):
        renames = []  # written by rename, so never torn: unreadable means not ours; the files stay as they are
    for i, (tmp, name) in enumerate(renames):
        if i:
            fault_point("between-renames")
        if (folder / tmp).exists():
            os.replace(folder / tmp, folder / name)
    _sync_dir(folder)
    journal.unlink(missing_ok=True)


def recover(folder: Path) -> bool:
    """Finish a `write_together` that a crash interrupted, and delete temporary files left by crashed writes.

    Only a folder's single writer (the one holding its lock) may call this. True when a journal was replayed.
    """
    if not folder.is_dir():
        return False
    replayed = (folder / JOURNAL).is_file()
    if replayed:
        _replay(folder)
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return replayed


def _sync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
