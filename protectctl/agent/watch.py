"""The change journal's watcher (`protectctl agent watch`) and its log, per source.

A long-running agent service (apply installs it: systemd `Restart=always`, or a cron
`@reboot` line) marks every filesystem holding the source (fanotify FAN_MARK_FILESYSTEM,
agent/fanotify.py) and records which directories below the source root changed, so that a
sync walks only those (agent/changes.py) instead of lstat-ing every file.

The log (`<state>/watch/<source>/log`) is one *generation*: a header (a random generation
id, the boot id, when the watcher started, the root and the mounts it marked) written when
the watcher starts, once its marks are in place, then records appended as events arrive:

    kind (1 byte) | length (4) | path relative to the root (bytes) | crc32 (4)

`DIR` (rescan this directory), `TREE` (a directory appeared here by mkdir or rename: walk
its whole subtree), `GONE` (a directory left: forget what the journal knew below it),
`OVERFLOW` (the kernel's queue overflowed: events were lost) and `LOST` (an event could
not be placed: the next sync must walk everything). Writes are appended as they come and
fdatasync'ed at most once a second, and always before the watcher answers a cut.

The *cut*: a sync connects to the watcher's socket (an abstract unix socket named after
the state dir and the source; only the watcher's own uid is answered) before it reads
anything. The watcher drains the kernel queue (a change whose syscall returned before the
request is in it: fanotify queues events synchronously), writes and syncs the records and
answers the generation and the log's length. Everything before that offset happened before
the sync looked; everything after lands in the next sync's range. A watcher that is not
running, restarted (another generation), a reboot (another boot id), an overflow or a lost
event in the range all make the sync walk everything, and the point says why.

Records of one kind and path are written once per cut (a hot directory costs one record
per sync, not one per write): the watcher's cost follows the events, and its log the
number of changed directories.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import select
import signal
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from protectctl.agent import fanotify
from protectctl.agent.lock import safe_name
from protectctl.errors import ProtectctlError
from protectctl.fsutil import fsync_dir

DIR, TREE, GONE, OVERFLOW, LOST = 1, 2, 3, 4, 5
KIND_NAMES = {DIR: "dir", TREE: "tree", GONE: "gone", OVERFLOW: "overflow", LOST: "lost"}
_MAGIC = b"PCTLWAT1"
_LEN = struct.Struct("=I")
_RECORD = struct.Struct("=BI")
_CRC = struct.Struct("=I")
_SYNC_EVERY_S = 1.0
# After a wake-up the watcher lets events gather this long: it reads them in large batches
# (one handle resolution per directory per batch), so its cost follows wake-ups, not events,
# and falls per event as the rate grows. A busy queue (a batch of _BUSY events or more) is
# drained again at once so it never nears the kernel's limit (16,384 by default). A cut
# drains at once, whatever this says.
_GATHER_S = 0.2
_BUSY = 2048
_PATH_CACHE = 4096
# A log grows by the directories changed between cuts (a sync consumes its range but the
# watcher does not know which syncs are done): past this size, a cut starts a new generation.
ROTATE_BYTES = 64 << 20
_CUT_TIMEOUT_S = 10.0
_MAX_REQUEST = 64


def watch_dir(state_dir: Path, source: str) -> Path:
    return state_dir / "watch" / safe_name(source)


def socket_address(state_dir: Path, source: str) -> bytes:
    """An abstract unix socket (no path length limit, nothing left behind by a kill)."""
    digest = blake3.blake3(os.fsencode(state_dir.resolve()) + b"\0" + source.encode()).hexdigest()[:32]
    return b"\0protectctl-watch-" + digest.encode()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def mounts_below(root: bytes) -> list[bytes]:
    """Mount points at or below `root`, and the one holding it (from /proc/self/mountinfo)."""
    found: list[bytes] = []
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return found
    holder = b"/"
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == root or point.startswith(root.rstrip(b"/") + b"/"):
            found.append(point)
        elif (root == point or root.startswith(point.rstrip(b"/") + b"/")) and len(point) >= len(holder):
            holder = point
    return sorted({holder, *found})


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


# -- the log ----------------------------------------------------------------------------


def encode_record(kind: int, rel: bytes) -> bytes:
    head = _RECORD.pack(kind, len(rel))
    return head + rel + _CRC.pack(zlib.crc32(head + rel))


@dataclass(frozen=True, slots=True)
class Header:
    generation: str
    boot_id: str
    started_ns: int
    root: str
    mounts: tuple[str, ...]
    size: int  # bytes of the header: records start here
    rotated_from: str = ""  # the generation whose log grew too big (the watcher kept running)
    rotated_at: int = 0  # where that generation's log ended: its last cut, kept as log.prev

    def to_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "boot_id": self.boot_id,
            "started_ns": self.started_ns,
            "root": self.root,
            "mounts": list(self.mounts),
            "rotated_from": self.rotated_from,
            "rotated_at": self.rotated_at,
        }


def read_header(data: bytes) -> Header | None:
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _LEN.size:
        return None
    (length,) = _LEN.unpack_from(data, len(_MAGIC))
    start = len(_MAGIC) + _LEN.size
    try:
        raw = json.loads(data[start : start + length])
        return Header(
            str(raw["generation"]),
            str(raw["boot_id"]),
            int(raw["started_ns"]),
            str(raw["root"]),
            tuple(str(m) for m in raw["mounts"]),
            start + length,
            str(raw.get("rotated_from", "")),
            int(raw.get("rotated_at", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None


def read_records(data: bytes, start: int, end: int) -> list[tuple[int, bytes]] | None:
    """The records in data[start:end]; None when one is damaged or cut short (never guessed)."""
    out: list[tuple[int, bytes]] = []
    at = start
    while at < end:
        if at + _RECORD.size > end:
            return None
        kind, length = _RECORD.unpack_from(data, at)
        body_end = at + _RECORD.size + length
        if kind not in KIND_NAMES or body_end + _CRC.size > end:
            return None
        (crc,) = _CRC.unpack_from(data, body_end)
        if crc != zlib.crc32(data[at:body_end]):
            return None
        out.append((kind, bytes(data[at + _RECORD.size : body_end])))
        at = body_end + _CRC.size
    return out


# -- the watcher ------------------------------------------------------------------------


@dataclass(slots=True)
class _Stats:
    events: int = 0
    records: int = 0
    overflows: int = 0


@dataclass(slots=True)
class Watcher:
    """Watches one source root; `run()` until `stop` (SIGTERM, SIGINT)."""

    source: str
    root: Path
    state_dir: Path
    log: Callable[[str], None] = lambda _line: None
    stats: _Stats = field(default_factory=_Stats)
    _root: bytes = b""
    _fan: int = -1
    _mount_fds: dict[tuple[int, int], int] = field(default_factory=dict)
    _out: int = -1
    _offset: int = 0
    _written: set[tuple[int, bytes]] = field(default_factory=set)
    _dirty: bool = False
    _last_sync: float = 0.0
    _stop: bool = False
    _lock: int = -1
    _listen: socket.socket | None = None
    _paths: dict[tuple[tuple[int, int] | None, int, bytes], bytes | None] = field(default_factory=dict)
    # directories whose `dir` record (or nothing, being outside the root) is written since the last cut
    _seen: set[tuple[tuple[int, int] | None, int, bytes]] = field(default_factory=set)
    header: Header | None = None

    def start(self) -> None:
        """Mark the filesystems, then publish a new generation (never before the marks hold)."""
        self._root = os.fsencode(os.path.realpath(self.root))
        if not os.path.isdir(self._root):
            raise ProtectctlError(f"the source path {self.root} is not a directory", hint="fix the member's path")
        directory = watch_dir(self.state_dir, self.source)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProtectctlError(f"another watcher of {self.source} is running") from None
        why = fanotify.unsupported()
        if why is not None:
            raise ProtectctlError(f"cannot watch {self.source}: {why}")
        self._fan = fanotify.init()
        mounts = mounts_below(self._root)
        for point in mounts:
            # the mount holding the root is reached through the root (paths resolve through it)
            target = point if point.startswith(self._root.rstrip(b"/") + b"/") else self._root
            try:
                fanotify.mark_filesystem(self._fan, target)
                fsid = fanotify.fsid_of(target)
            except OSError as err:
                raise ProtectctlError(f"cannot watch {os.fsdecode(target)}: {err.strerror}") from err
            if fsid not in self._mount_fds:
                self._mount_fds[fsid] = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listen.bind(socket_address(self.state_dir, self.source))
        except OSError as err:
            listen.close()
            raise ProtectctlError(f"another watcher of {self.source} is running ({err.strerror})") from None
        listen.listen(8)
        # Non-blocking: a request answered while events gather may still show as ready in
        # the poll that woke the loop, and a blocking accept would then wait for the next sync.
        listen.setblocking(False)
        self._listen = listen
        header = self._publish(tuple(os.fsdecode(m) for m in mounts))
        self.log(f"watching {os.fsdecode(self._root)} (generation {header.generation[:12]})")

    def _publish(self, mounts: tuple[str, ...], *, rotated_from: str = "", rotated_at: int = 0) -> Header:
        """Start a new generation: a new log (header only) replaces the old one atomically.
        On a rotation the old log stays as log.prev first (a hard link, so at every instant
        one of the two names holds it): the sync that took the old generation's last cut
        still reads it, and the next sync reads the tail it had not consumed from it."""
        self.header = Header(
            secrets.token_hex(16),
            boot_id(),
            time.time_ns(),
            os.fsdecode(self._root),
            mounts,
            0,
            rotated_from,
            rotated_at,
        )
        raw = json.dumps(self.header.to_json()).encode()
        head = _MAGIC + _LEN.pack(len(raw)) + raw
        directory = watch_dir(self.state_dir, self.source)
        if rotated_from:
            keep = directory / "log.prev.new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(keep)
            os.link(directory / "log", keep)
            os.replace(keep, directory / "log.prev")
        tmp = directory / "log.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.write(fd, head)
        os.fsync(fd)
        os.replace(tmp, directory / "log")
        fsync_dir(directory)
        if self._out >= 0:
            os.close(self._out)
        self._out = fd
        self._offset = len(head)
        self._written.clear()
        return self.header

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        if self.header is None:
            self.start()
        poller = select.poll()
        poller.register(self._fan, select.POLLIN)
        assert self._listen is not None
        poller.register(self._listen.fileno(), select.POLLIN)
        busy = False
        requests = select.poll()  # while events gather: only a sync's request ends the wait
        requests.register(self._listen.fileno(), select.POLLIN)
        try:
            while not self._stop:
                try:
                    ready = poller.poll(_SYNC_EVERY_S * 1000)
                except InterruptedError:
                    continue
                for fd, _ in ready:
                    if fd == self._fan:
                        if not busy and requests.poll(_GATHER_S * 1000):
                            self._answer()  # a cut while events gather: it drains them itself
                        busy = self.drain() >= _BUSY
                    else:
                        self._answer()
                if self._dirty and time.monotonic() - self._last_sync >= _SYNC_EVERY_S:
                    self._sync()
        finally:
            self._sync()
            self.close()

    def close(self) -> None:
        for fd in (self._fan, self._out, self._lock, *self._mount_fds.values()):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._listen is not None:
            self._listen.close()

    # -- events ---------------------------------------------------------------------------

    def drain(self) -> int:
        """Read and record every queued event; how many there were."""
        count = 0
        while True:
            events = fanotify.read_events(self._fan)
            if not events:
                return count
            count += len(events)
            self.stats.events += len(events)
            self._record(self._place(events))

    def _place(self, events: Iterable[fanotify.Event]) -> list[tuple[int, bytes]]:
        """The records for a batch: each directory handle is resolved once per batch."""
        out: list[tuple[int, bytes]] = []
        paths = self._paths  # directory handle -> path, until a directory moves or goes
        moves = fanotify.FAN_MOVED_FROM | fanotify.FAN_MOVED_TO | fanotify.FAN_DELETE
        seen = self._seen
        ondir = fanotify.FAN_ONDIR | fanotify.FAN_Q_OVERFLOW
        for event in events:
            key = (event.fsid, event.handle_type, event.handle)
            # The hot path: a file's content or attributes changed in a directory whose `dir`
            # record was written since the last cut. (A directory that moved since is walked
            # whole at its new place: its `tree` record says so.)
            if key in seen and not event.mask & ondir and event.name != b".":
                continue
            if event.overflow:
                self.stats.overflows += 1
                out.append((OVERFLOW, b""))
                continue
            if key not in paths:
                if len(paths) >= _PATH_CACHE:
                    paths.clear()
                paths[key] = self._resolve(event)
            path = paths[key]
            if event.mask & fanotify.FAN_ONDIR and event.mask & moves:
                paths.clear()  # a directory moved or went: every path below it may have changed
            if path is None:
                continue
            out += self._records_for(path, event)
            if not event.mask & ondir and event.name != b".":
                seen.add(key)
        return out

    def _resolve(self, event: fanotify.Event) -> bytes | None:
        """The directory's path now; None when it is gone (its parent's event says so), b"" when
        it cannot be placed (LOST)."""
        if event.fsid is None:
            return b""
        mount_fd = self._mount_fds.get(event.fsid)
        # Another fsid of a marked filesystem (a btrfs subvolume has its own): any of our
        # mounts of that filesystem opens its handles; an event nobody can place is LOST.
        candidates = [mount_fd] if mount_fd is not None else list(dict.fromkeys(self._mount_fds.values()))
        fd = -1
        gone = False
        for candidate in candidates:
            try:
                fd = fanotify.open_by_handle(candidate, event.handle_type, event.handle)
            except OSError as err:
                gone = gone or err.errno in (errno.ESTALE, errno.ENOENT)
                continue
            if mount_fd is None:
                self._mount_fds[event.fsid] = candidate
            break
        if fd < 0:
            # deleted: the entry's removal was reported on its parent
            return None if gone and mount_fd is not None else b""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return b""
        finally:
            os.close(fd)
        raw = os.fsencode(path)
        if raw.endswith(b" (deleted)") and not os.path.isdir(raw):
            return None
        return raw

    def _records_for(self, path: bytes, event: fanotify.Event) -> list[tuple[int, bytes]]:
        if not path:
            return [(LOST, b"")]
        root = self._root
        name = event.name
        inside = path == root or path.startswith(root + b"/") or root == b"/"
        if not inside:
            full = path.rstrip(b"/") + b"/" + name
            if name != b"." and (root == full or root.startswith(full + b"/")):
                # the root or a directory above it was renamed, deleted or changed
                if event.mask & (fanotify.FAN_MOVED_FROM | fanotify.FAN_DELETE | fanotify.FAN_MOVED_TO):
                    return [(LOST, b"")]
                return [(DIR, b"")] if root == full else []
            return []
        rel = b"" if path == root else path[len(root.rstrip(b"/")) + 1 :]
        if name == b".":  # the directory itself (its attributes): its node is in the parent's tree
            return [(DIR, rel.rpartition(b"/")[0] if rel else b"")]
        child = rel + b"/" + name if rel else name
        out = [(DIR, rel)]
        if event.mask & fanotify.FAN_ONDIR:
            if event.mask & (fanotify.FAN_MOVED_FROM | fanotify.FAN_DELETE):
                out.append((GONE, child))
            if event.mask & (fanotify.FAN_MOVED_TO | fanotify.FAN_CREATE):
                out.append((TREE, child))
        return out

    def _record(self, records: list[tuple[int, bytes]]) -> None:
        fresh = [r for r in dict.fromkeys(records) if r not in self._written]
        if not fresh:
            return
        self._written.update(fresh)
        data = b"".join(encode_record(kind, rel) for kind, rel in fresh)
        view = memoryview(data)
        while view:
            n = os.write(self._out, view)
            view = view[n:]
        self._offset += len(data)
        self.stats.records += len(fresh)
        self._dirty = True

    def _sync(self) -> None:
        if self._dirty and self._out >= 0:
            os.fdatasync(self._out)
            self._dirty = False
        self._last_sync = time.monotonic()

    # -- the cut --------------------------------------------------------------------------

    def _answer(self) -> None:
        assert self._listen is not None
        try:
            conn, _ = self._listen.accept()
        except OSError:
            return
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _, uid, _ = struct.unpack("3i", creds)
                if uid not in (0, os.geteuid()):
                    return
                conn.settimeout(2.0)
                request = conn.recv(_MAX_REQUEST).strip()
                if request == b"cut":
                    reply = self.cut()
                elif request == b"ping":  # status: alive, nothing drained or cleared
                    assert self.header is not None
                    reply = {**self.header.to_json(), "offset": self._offset, "events": self.stats.events}
                else:
                    return
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                return

    def cut(self) -> dict[str, object]:
        """Drain, sync, and say where the log ends: the cut a sync consumes up to."""
        self.drain()
        self._sync()
        self._written.clear()  # a change after the cut must be recorded after it
        self._seen.clear()
        assert self.header is not None
        header = self.header
        answer = {**header.to_json(), "offset": self._offset, "events": self.stats.events}
        if self._offset > ROTATE_BYTES:
            # The log is replaced after this cut, which stays in the old generation: the sync
            # that takes it reads the old log, and the next one goes on from the new log (or,
            # if that sync saved no point, from the old log's tail and then the new log).
            self._publish(header.mounts, rotated_from=header.generation, rotated_at=self._offset)
        return answer


# -- the sync's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    generation: str
    boot_id: str
    started_ns: int
    root: str
    mounts: tuple[str, ...]
    offset: int
    rotated_from: str = ""
    rotated_at: int = 0


def request_cut(state_dir: Path, source: str, timeout_s: float = _CUT_TIMEOUT_S, *, ping: bool = False) -> Cut | str:
    """The watcher's cut, or why there is none (one sentence). `ping`: only whether it runs
    (the offset answered is then no cut: nothing was drained)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        with sock:
            sock.connect(socket_address(state_dir, source))
            sock.sendall(b"ping\n" if ping else b"cut\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        return "the watcher is not running"
    except OSError as err:
        return f"the watcher did not answer ({err.strerror or err})"
    try:
        raw = json.loads(data)
        return Cut(
            str(raw["generation"]),
            str(raw["boot_id"]),
            int(raw["started_ns"]),
            str(raw["root"]),
            tuple(str(m) for m in raw["mounts"]),
            int(raw["offset"]),
            str(raw.get("rotated_from", "")),
            int(raw.get("rotated_at", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return "the watcher's answer is not understood"


_RESTART_S = 5.0


def watch_source(
    source: str,
    roots: list[str],
    state_dir: Path,
    log: Callable[[str], None] = lambda _line: None,
    *,
    supervise: bool | None = None,
) -> None:
    """`protectctl agent watch`: watch the source's root until SIGTERM. Under systemd
    (`Restart=always`) it runs the watcher itself; started otherwise (a cron `@reboot` line,
    by hand) it supervises the watcher in a child process and restarts it when it dies (each
    start is a new generation: the next sync walks everything once)."""
    if len(roots) != 1:
        raise ProtectctlError(f"{source} has {len(roots)} paths; the watcher watches sources with one")
    why = fanotify.unsupported()
    if why is not None:
        raise ProtectctlError(f"cannot watch {source}: {why}")
    if supervise is None:
        supervise = "INVOCATION_ID" not in os.environ  # systemd sets it for every service it runs
    if not supervise:
        _watch(source, Path(roots[0]), state_dir, log)
        return
    stopping = False
    child = 0

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        child = os.fork()
        if child == 0:  # the watcher
            code = 0
            try:
                _watch(source, Path(roots[0]), state_dir, log)
            except ProtectctlError as err:
                log(err.message)
                code = 1
            except BaseException as err:  # the supervisor reports and restarts: never a traceback here
                log(f"the watcher failed: {err!r}")
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        child = 0
        if stopping:
            break
        log(f"the watcher stopped ({_status_text(status)}); restarting it in {_RESTART_S:.0f} s")
        deadline = time.monotonic() + _RESTART_S
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _watch(source: str, root: Path, state_dir: Path, log: Callable[[str], None]) -> None:
    watcher = Watcher(source, root, state_dir, log)
    signal.signal(signal.SIGTERM, watcher.stop)
    signal.signal(signal.SIGINT, watcher.stop)
    watcher.run()
