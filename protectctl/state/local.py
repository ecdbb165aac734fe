"""The local state backend: a JSON file with an atomic write, a backup and a lock.

The lock is an flock on `state.json.lock` (released by the kernel when its holder dies, so
a killed apply never strands it) plus the holder's identity written inside, so a waiting
process can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from protectctl.errors import StateError, StateLockedError
from protectctl.fsutil import atomic_write, os_error_text, remove_stale_temps
from protectctl.state.model import STATE_FORMAT, State

REQUIRED_FIELDS = ("format_version", "lineage", "serial", "resources")


class LocalStateBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.backup_path = path.with_name(path.name + ".backup")

    def describe(self) -> str:
        return f"local:{self.path}"

    def read(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as err:
            raise StateError(f"reading state {self.path}: {err.strerror}") from err
        try:
            state = State.model_validate_json(raw)
        except ValidationError as err:
            raise self._damaged(f"{err.error_count()} problem(s)") from None
        # Every state protectctl writes carries all of these. One without them (`{}`, a file
        # truncated and "repaired" by hand) is damaged, not empty: read as empty, plan would
        # offer to create everything again and apply would overwrite what is left.
        missing = [name for name in REQUIRED_FIELDS if name not in state.model_fields_set]
        if missing:
            raise self._damaged(f"no {', '.join(missing)}")
        if not state.lineage or state.serial < 0:
            raise self._damaged("an empty lineage or a negative serial")
        if state.format_version != STATE_FORMAT:
            raise StateError(
                f"state file {self.path} has format {state.format_version}; this protectctl reads {STATE_FORMAT}",
                hint="use the protectctl version that wrote it",
            )
        return state

    def _damaged(self, why: str) -> StateError:
        return StateError(
            f"state file {self.path} is damaged or not a protectctl state ({why})",
            hint=f"restore it from {self.backup_path} if that one is intact; a missing state file, not an "
            "empty one, is how a policy without state starts",
        )

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, state: State) -> None:
        data = state.model_dump_json(indent=2).encode() + b"\n"
        try:
            if self.path.exists():
                atomic_write(self.backup_path, self.path.read_bytes(), mode=0o600)
            atomic_write(self.path, data, mode=0o600)
        except OSError as err:
            raise StateError(
                f"writing state {self.path}: {os_error_text(err)}",
                hint=f"free space where the state lives ({self.path.parent}); the state "
                "is as the last successful write left it",
            ) from err

    @contextlib.contextmanager
    def lock(self, command: str, timeout_s: float) -> Iterator[None]:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StateError(f"creating state lock {self.lock_path}: {os_error_text(err)}") from err
        try:
            self._acquire(fd, timeout_s)
            try:
                self._record_holder(fd, command)
                self._remove_stale_temps()
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remove_stale_temps(self) -> None:
        """Temp files of a writer killed mid-write (every writer holds this lock, so none is live)."""
        try:
            remove_stale_temps(self.path)
            remove_stale_temps(self.backup_path)
        except OSError as err:
            raise StateError(f"removing stale temporary files beside {self.path}: {os_error_text(err)}") from err

    def _record_holder(self, fd: int, command: str) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            record = json.dumps(holder).encode()
            os.pwrite(fd, record, 0)  # written, then cut: a reader never sees an empty record
            os.ftruncate(fd, len(record))
        except OSError as err:  # a full disk, typically: nothing that needs the state could go on
            raise StateError(
                f"recording the lock holder in {self.lock_path}: {os_error_text(err)}",
                hint=f"free space where the state lives ({self.lock_path.parent}), then retry",
            ) from err

    def _acquire(self, fd: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateLockedError(
                        f"the state is locked by {self._holder_once_recorded() or 'another process'}",
                        hint="wait for it to finish, pass --lock-timeout 5m, or `protectctl state unlock` "
                        "if that process is gone",
                    ) from None
                time.sleep(0.1)

    def _holder_once_recorded(self) -> str | None:
        """The holder, waiting a moment for a lock taken an instant ago to be signed by its taker."""
        for _ in range(20):
            who = self.holder()
            if who:
                return who
            time.sleep(0.05)
        return None

    def holder(self) -> str | None:
        try:
            info = json.loads(self.lock_path.read_text() or "null")
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict):
            return None
        return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('time')})"

    def unlock(self, force: bool = False) -> str:
        if not self.lock_path.exists():
            return "no lock"
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                if not force:
                    raise StateLockedError(
                        f"the lock is held by a live process: {self.holder()}",
                        hint="stop that process first, or pass --force to break the lock",
                    ) from None
        finally:
            os.close(fd)
        who = self.holder() or "no lock was held"
        self.lock_path.unlink(missing_ok=True)
        return who
