"""Per-source job lock on the agent: two runs of one source never overlap.

The lock is an `flock` on STATE_DIR/locks/<source>.lock. The kernel drops it the instant
its holder dies (SIGKILL, OOM, reboot), so a killed run never leaves a lock that blocks the
next one, and a pid reused by an unrelated process can never pass for the holder: the
failure mode of pid files. The file also records the holder (host, pid, command, time) so a
waiting or refused run can name it; a record left by a dead holder is reported as cleared.
The lock file is never unlinked: unlinking a flock'ed file lets two processes lock two
different inodes under one name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from protectctl.errors import LockedError, StateError
from protectctl.fsutil import os_error_text

log = logging.getLogger(__name__)

_POLL_S = 0.1


def safe_name(source: str) -> str:
    """A file-name-safe, collision-free spelling of a source name."""
    out = []
    for char in source:
        if char.isalnum() or char in "-_.":
            out.append(char)
        else:
            out.append(f"%{ord(char):02x}")
    return "".join(out)


@contextlib.contextmanager
def source_lock(
    state_dir: Path,
    source: str,
    command: str,
    *,
    timeout_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    what: str | None = None,
) -> Iterator[None]:
    """Hold the lock of `source`; wait up to `timeout_s`, then raise LockedError naming the holder.
    `what` names the locked thing in messages (default: `source SOURCE`)."""
    path = state_dir / "locks" / f"{safe_name(source)}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise _state_dir_error(f"creating lock {path}", err) from err
    try:
        _acquire(fd, path, what or f"source {source}", timeout_s, sleep)
        _report_stale(fd, source)
        try:
            _write_holder(fd, path, command)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _state_dir_error(what: str, err: OSError) -> StateError:
    """The agent's state directory cannot be written (a full disk, typically): nothing ran yet."""
    return StateError(
        f"{what}: {os_error_text(err)}",
        hint="free space in the agent's state directory (locks, journals, status); no recovery point was started",
    )


def _acquire(fd: int, path: Path, what: str, timeout_s: float, sleep: Callable[[float], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockedError(f"cannot lock {path}: {err.strerror}") from err
        if time.monotonic() >= deadline:
            holder = describe_holder(_read_holder(fd))
            raise LockedError(
                f"{what} is busy: another run holds its lock ({holder})",
                hint="wait for it to finish; the lock is released the moment that process ends",
            )
        sleep(_POLL_S)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, object]) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('command')!s}, since {holder.get('since')}"


def _report_stale(fd: int, source: str) -> None:
    """A record still in the file means its holder died without unlocking: say so."""
    holder = _read_holder(fd)
    if holder:
        log.warning(
            "lock.stale_cleared",
            extra={"source": source, "holder": describe_holder(holder)},
        )


def _write_holder(fd: int, path: Path, command: str) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    data = json.dumps(holder).encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as err:  # a full disk: once an "internal error" (exit 70)
        raise _state_dir_error(f"recording the lock holder in {path}", err) from err
