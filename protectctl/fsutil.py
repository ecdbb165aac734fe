"""The one home of crash-safe file writes.

`atomic_write` writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the directory, so a process killed at any instant leaves either the old
content or the new, never a torn file. State, catalog, agent config and the local storage
backend all write through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error_text(err: OSError) -> str:
    """An OSError as users should read it: a full disk named as such."""
    if err.errno in DISK_FULL_ERRNOS:
        return "no space left: the filesystem is full"
    return err.strerror or str(err)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` all-or-nothing; raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write(path, text.encode("utf-8"), mode=mode)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temporary files `atomic_write(path, ...)` leaves when killed mid-write.

    Only for a caller that holds the lock every writer of `path` takes (so no temp file of
    a live writer can match); returns what was removed.
    """
    removed: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in path.parent.iterdir():
            if entry.name.startswith(f".{path.name}.") and entry.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed
