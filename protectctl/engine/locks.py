"""Lease locks on the repository, stored as sealed LOCKS objects.

A lock object names its holder (host, pid, the pid's start time, command) and carries
`refreshed`, rewritten by a background thread every `lease_s / 4` seconds while held.
A lock is *stale*, and may be taken over (deleted), when its holder is on this host and
its process is gone (or the pid was reused: the start time differs), or when it has not
been refreshed for `lease_s`. A live lock is never broken. Acquisition is write-then-list
(storage offers no atomic create): write ours, list the others, back off if any live one
conflicts. Two contenders may both back off; neither can both succeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from protectctl.engine.crypto import Sealer, aad
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend, discard_object
from protectctl.errors import CorruptionError, LockedError, RepositoryError

# Five minutes: long enough that a storage hiccup or a paused VM does not lose a lock,
# short enough that a crashed holder on another host blocks gc for minutes, not hours.
DEFAULT_LEASE_S = 300.0


@dataclass(frozen=True, slots=True)
class LockRecord:
    name: str
    host: str
    pid: int
    pid_start: int | None
    command: str
    exclusive: bool
    created: float
    refreshed: float
    lease_s: float

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.created))
        return f"{kind} lock held by {self.command!r} (pid {self.pid} on {self.host}, since {since})"


def process_start(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks (Linux), to detect pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        current = process_start(pid)
        if current is not None and current != start:
            return False  # the pid was reused by another process
    return True


def is_stale(record: LockRecord, *, now: float | None = None) -> bool:
    """Whether the lock's holder is gone (same host) or its lease ran out."""
    if record.host == socket.gethostname() and not _pid_alive(record.pid, record.pid_start):
        return True
    current = time.time() if now is None else now
    return current - record.refreshed > record.lease_s


def encode_lock(sealer: Sealer, record: LockRecord) -> bytes:
    plain = json.dumps(asdict(record), sort_keys=True).encode()
    return sealer.seal(plain, aad("lock", record.name.encode()))


def decode_lock(sealer: Sealer, name: str, stored: bytes) -> LockRecord:
    plain = sealer.open(stored, aad("lock", name.encode()), f"locks/{name}")
    try:
        data = json.loads(plain)
        record = LockRecord(**data)
    except (ValueError, TypeError) as err:
        raise CorruptionError(f"locks/{name}: malformed") from err
    if record.name != name:
        raise CorruptionError(f"locks/{name}: names another lock")
    return record


def read_locks(storage: StorageBackend, sealer: Sealer) -> list[LockRecord]:
    """Every lock object that still exists; an unreadable one raises CorruptionError."""
    records = []
    for info in storage.list(ObjectKind.LOCKS):
        try:
            stored = storage.get(ObjectKind.LOCKS, info.name)
        except ObjectMissingError:
            continue  # released while we listed
        records.append(decode_lock(sealer, info.name, stored))
    return records


class LeaseLock:
    """One held lock: written on enter, refreshed in the background, deleted on exit."""

    def __init__(
        self, storage: StorageBackend, sealer: Sealer, *, exclusive: bool, command: str, lease_s: float
    ) -> None:
        self._storage = storage
        self._sealer = sealer
        now = time.time()
        pid = os.getpid()
        self.record = LockRecord(
            name=os.urandom(16).hex(),
            host=socket.gethostname(),
            pid=pid,
            pid_start=process_start(pid),
            command=command,
            exclusive=exclusive,
            created=now,
            refreshed=now,
            lease_s=lease_s,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def name(self) -> str:
        return self.record.name

    def acquire(self, *, ignore: set[str] | None = None) -> None:
        """Take the lock or raise LockedError naming a live conflicting holder.

        `ignore`: names of locks this process already holds (gc under an exclusive lock).
        """
        self._write(self.record)
        try:
            self._resolve_others(ignore or set())
        except BaseException:
            with contextlib.suppress(RepositoryError):
                discard_object(self._storage, ObjectKind.LOCKS, self.name)
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name=f"lock-{self.name[:8]}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        discard_object(self._storage, ObjectKind.LOCKS, self.name)

    def _resolve_others(self, ignore: set[str]) -> None:
        for info in list(self._storage.list(ObjectKind.LOCKS)):
            if info.name == self.name or info.name in ignore:
                continue
            try:
                other = decode_lock(self._sealer, info.name, self._storage.get(ObjectKind.LOCKS, info.name))
            except ObjectMissingError:
                continue
            except CorruptionError as err:
                raise LockedError(
                    f"lock object locks/{info.name} in {self._storage.describe()} cannot be read",
                    hint="if no protectctl process uses the repository, delete that object",
                ) from err
            if is_stale(other):
                # Takeover: the holder is dead or silent past its lease.
                discard_object(self._storage, ObjectKind.LOCKS, other.name)
            elif self.record.exclusive or other.exclusive:
                raise LockedError(
                    f"{self._storage.describe()} is locked: {other.describe()}",
                    hint="wait for it to finish; a lock of a dead process is taken over automatically",
                )

    def _write(self, record: LockRecord) -> None:
        self._storage.put(ObjectKind.LOCKS, record.name, encode_lock(self._sealer, record))

    def _refresh_loop(self) -> None:
        interval = max(self.record.lease_s / 4, 0.05)
        while not self._stop.wait(interval):
            try:
                if not self._storage.exists(ObjectKind.LOCKS, self.name):
                    self.lost = True  # someone judged us stale; do not resurrect the lock
                    return
                self.record = _refreshed(self.record)
                self._write(self.record)
            except RepositoryError:
                continue  # transient; the lease tolerates missed refreshes


def _refreshed(record: LockRecord) -> LockRecord:
    data = asdict(record)
    data["refreshed"] = time.time()
    return LockRecord(**data)


@contextlib.contextmanager
def held(lock: LeaseLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
