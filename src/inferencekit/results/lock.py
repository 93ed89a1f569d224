"""One writer per run folder: an advisory lock (`flock`) on `RUN/.lock`, a file naming the holder's PID and host.

`run`, `evaluate --in-place` and `merge` hold it while they write. A second writer is refused in one line
naming the holder; a lock left by a process that died is free again (the kernel drops `flock` locks with
their process), so the next writer takes it over. Holding it, a writer first finishes or cleans up what a
crashed writer left (`files.recover`) and refuses a folder whose files are symbolic links (a received
folder must not make resume truncate or append to files elsewhere).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from inferencekit.errors import UserError
from inferencekit.files import JOURNAL, recover
from inferencekit.results.store import CONFIG, EVALUATIONS, LOG, MERGED, METRICS, PREDICTIONS, PROVENANCE

LOCK = ".lock"
_OWN_FILES = (CONFIG, PREDICTIONS, METRICS, LOG, PROVENANCE, EVALUATIONS, MERGED, JOURNAL, LOCK)

log = logging.getLogger("inferencekit")


@contextmanager
def run_folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold `folder`'s writer lock for `command` (e.g. "run"); `UserError` naming the holder when taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refuse_links(folder)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is in use by {_holder(fd)}; wait for it to end, or stop it first") from None
        except OSError as exc:  # a file system without flock (some network mounts): run unguarded, say so
            log.warning("cannot lock %s (%s); make sure no other command writes to it", folder, exc.strerror)
        about = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(about) + "\n").encode(), 0)
        try:
            if recover(folder):
                log.warning("%s: finished an update that an interrupted command had left half done", folder)
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0))
        return f"inferencekit {about['command']} (PID {about['pid']} on host {about['host']}, since {about['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its PID and host are not recorded yet)"


def refuse_links(folder: Path) -> None:
    """`UserError` when one of a run folder's own files is a symbolic link."""
    for name in _OWN_FILES:
        if (folder / name).is_symlink():
            raise UserError(f"{folder / name} is a symbolic link; a run folder's files must be its own "
                            "(replace it with a copy of the file)")


def settle(folder: str | Path) -> None:
    """Before reading a run folder: finish an update a crashed writer left half done, unless a writer is at it
    now (it does so itself) or the folder cannot be written (then it is read as it is)."""
    folder = Path(folder)
    if not (folder / JOURNAL).is_file():
        return
    try:
        with run_folder_lock(folder, "recover"):
            pass
    except (UserError, OSError):
        pass
