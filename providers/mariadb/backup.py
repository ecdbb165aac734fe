"""Backups of a MariaDB server: the full (mariadb-backup) and the sync (binlog shipping).

* full: ``mariadb-backup --backup --stream=mbstream``, read from its stdout in parts of
  `PART_BYTES` while it runs (a reader thread keeps the pipe drained while the previous part
  is chunked, compressed and encrypted): nothing is spooled to disk, and an unchanged page
  run of the data is an unchanged run of the stream, so a second full stores only what
  changed. Application consistency is mariadb-backup's own (BACKUP STAGE locks); the binlog
  file, position and GTID it was consistent with come from its `xtrabackup_info`
  (``--extra-lsndir``). Then the binlogs are shipped as a sync does, so a full alone can be
  rolled forward to the instant it ended. Point tree: ``base/part-NNNNNN`` and ``binlog/``.
* sync: ``FLUSH BINARY LOGS``, then every closed binlog not stored yet is stored under
  ``binlog/`` with its facts (binlog.py): creation time, first/last transaction time, GTID
  state at its head and end. A binlog is known by (name, creation time); one stored in a
  point that was never saved (a killed sync) is simply shipped again by the next sync.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import queue
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast

from protectctl.errors import ProviderError
from protectctl.provider import (
    BlobId,
    Node,
    Point,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotSink,
    SnapshotStats,
    Tree,
    dir_node,
    file_node,
)
from protectctl.providers.mariadb import binlog as bl
from protectctl.providers.mariadb import express
from protectctl.providers.mariadb import server as my
from protectctl.providers.mariadb.catalog import build_catalog
from protectctl.providers.mariadb.server import Client, Server

PART_BYTES = 64 << 20  # about one stored file of the stream: bounded memory
_BINLOG_POS = re.compile(r"filename '([^']+)', position '(\d+)'(?:, GTID of the last change '([^']*)')?")


@dataclass(frozen=True, slots=True)
class ServerFacts:
    log_bin: bool
    basename: Path | None
    server_id: int
    version: str
    page_size: int
    gtid_binlog_pos: str

    @property
    def origin(self) -> str:
        """Who wrote the binlogs: numbering and GTID continuity are per server (a pair has two)."""
        return f"{self.server_id}:{self.basename.name if self.basename else ''}"


def server_facts(c: Client) -> ServerFacts:
    v = c.variables("log_bin", "log_bin_basename", "server_id", "version", "innodb_page_size", "gtid_binlog_pos")
    basename = v["log_bin_basename"]
    return ServerFacts(
        v["log_bin"] == "1",
        Path(basename) if basename not in ("", "NULL") else None,
        int(v["server_id"]),
        v["version"],
        int(v["innodb_page_size"]),
        "" if v["gtid_binlog_pos"] == "NULL" else v["gtid_binlog_pos"],
    )


# -- binlog shipping -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shipped:
    nodes: tuple[Node, ...]
    records: tuple[dict[str, object], ...]
    bytes_total: int
    covered_until: datetime | None
    covered_through_seq: int | None


def ship_binlogs(request: SnapshotRequest, c: Client, facts: ServerFacts, *, from_seq: int | None) -> Shipped:
    """FLUSH BINARY LOGS, then store every closed binlog not stored yet (from `from_seq` on,
    when nothing is stored yet)."""
    if not facts.log_bin or facts.basename is None:
        return Shipped((), (), 0, None, None)
    before = datetime.now(UTC)
    rows = c.query("FLUSH BINARY LOGS; SHOW BINARY LOGS")
    names = [r[0] for r in rows if r and r[0]]
    closed = names[:-1]  # the last one is the server's active file
    catalog = build_catalog(request.sink.list_points(request.source))
    shipped = catalog.shipped()
    first = catalog.first_seq(facts.origin)
    floor = first if first is not None else from_seq
    directory = facts.basename.parent
    nodes: list[Node] = []
    records: list[dict[str, object]] = []
    total = 0
    for name in closed:
        seq = bl.sequence(name)
        if seq is None or (floor is not None and seq < floor):
            continue
        path = directory / name
        if (facts.origin, name, _created(path)) in shipped:
            continue
        node, record = _store_binlog(request, path)
        nodes.append(node)
        records.append(record)
        total += node.size
        request.progress.note(f"binlog {name} shipped ({node.size} bytes)")
    last_closed = bl.sequence(closed[-1]) if closed else None
    return Shipped(tuple(nodes), tuple(records), total, before, last_closed)


def _created(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as err:
        raise ProviderError(f"reading binlog {path}: {err.strerror}") from err
    for event in bl.events(head):
        if event.type == bl.FORMAT_DESCRIPTION:
            return int(event.timestamp)
    return 0


def _store_binlog(request: SnapshotRequest, path: Path) -> tuple[Node, dict[str, object]]:
    sink = request.sink
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError as err:
        raise ProviderError(
            f"reading binlog {path}: {err.strerror}",
            hint="the binlogs were purged before they were shipped? see `points list`",
        ) from err
    try:
        facts = bl.read_facts(data)
    except ValueError as err:
        raise ProviderError(f"{path}: {err}") from err
    node = file_node(
        path.name,
        st,
        size=len(data),
        chunks=sink.store_content(data, compression="fast"),
        content_hash=sink.hash_content(data),
    )
    record: dict[str, object] = {
        "name": path.name,
        "created": facts.created,
        "size": len(data),
        "first_time": facts.first_time,
        "last_time": facts.last_time,
        "start_state": list(facts.start_state),
        "end_state": list(facts.last_gtids),
        "transactions": len(facts.transactions),
    }
    return node, record


def ship(request: SnapshotRequest, server: Server) -> SnapshotOutcome:
    with my.client(server) as c:
        try:
            facts = server_facts(c)
        except ProviderError as err:
            raise ProviderError(
                f"{server.describe()} is not reachable: {err}",
                hint="start the server, or fix socket/osUser/credentials",
            ) from None
        if not facts.log_bin:
            raise ProviderError(
                "binary logging is off on this server, so there is no binlog to ship",
                hint="run `protectctl apply` (with allowRestart, or restart the server yourself)",
            )
        shipped = ship_binlogs(request, c, facts, from_seq=None)
    extra = {"mariadb": _log_extra(shipped, facts), "data_dir": str(server.data_dir)}
    root = request.sink.save_tree(Tree((_dir("binlog", server.data_dir, request.sink.save_tree(Tree(shipped.nodes))),)))
    return SnapshotOutcome(
        tree=root,
        stats=SnapshotStats(files=len(shipped.nodes), bytes_total=shipped.bytes_total, bytes_read=shipped.bytes_total),
        errors=(),
        extra=extra,
        finish=lambda point_id: None,
    )


def _log_extra(shipped: Shipped, facts: ServerFacts) -> dict[str, object]:
    return {
        "origin": facts.origin,
        "binlogs": list(shipped.records),
        "covered_until": my.iso_utc(shipped.covered_until) if shipped.covered_until else None,
        "covered_through_seq": shipped.covered_through_seq,
        "server_id": facts.server_id,
        "gtid_binlog_pos": facts.gtid_binlog_pos,
        "binlog_basename": str(facts.basename) if facts.basename else None,
    }


def _dir(name: str, like: Path, subtree: BlobId) -> Node:
    return dir_node(name, os.stat(like), subtree)


# -- full ------------------------------------------------------------------------------------


XBSTREAM_MAGIC = b"XBSTCK01"  # each chunk of an mbstream starts with it


def cut_at(buffer: bytes | bytearray | mmap.mmap, size: int, start: int = 0, end: int | None = None) -> int | None:
    """Where a part of `buffer[:end]` ends: at the first mbstream chunk header at or past
    `size` bytes, so parts start where the stream's own chunks do (a shift earlier in the
    stream, a file grown or a redo log copied longer, moves the cut with the content and the
    next full still finds the same parts); None while no header is past `size` yet. `start`:
    where to look from (what was scanned before holds none)."""
    end = len(buffer) if end is None else end
    if end < size:
        return None
    at = buffer.find(XBSTREAM_MAGIC, max(size, start), end)
    return at if at > 0 else None


_READ = 1 << 20  # one read from the pipe
_BUFFERS = 3  # parts in a reader's hands: one filling, one queued, one being stored


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Reader(threading.Thread):
    """Drains a pipe into parts of about `size` bytes, cut at mbstream chunk headers. The pipe
    is read straight into buffers a part is handed out in, no copy (each buffer back through
    `release` once stored: the sink copies what it keeps); `_BUFFERS` buffers of 2 x `size`
    bound the memory, anonymous maps whose pages cost only once a part has filled them."""

    def __init__(self, stream: Readable, size: int, digest: Callable[[memoryview], bytes] | None = None) -> None:
        super().__init__(name="mbstream-reader", daemon=True)
        self.stream = stream
        self.size = size
        # each part with its content hash (`digest`, hashed here: off the storing thread's path)
        self.parts: queue.Queue[tuple[memoryview, bytes] | BaseException | None] = queue.Queue(maxsize=_BUFFERS - 2)
        self.digest = digest
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._made = 0

    def release(self, part: memoryview) -> None:
        """Give a part's buffer back for the pipe to be read into again."""
        buffer = part.obj
        part.release()
        assert isinstance(buffer, mmap.mmap)
        self._free.put(buffer)

    def _buffer(self) -> mmap.mmap:
        if self._made < _BUFFERS and self._free.empty():
            self._made += 1
            return mmap.mmap(-1, 2 * self.size + _READ)  # zero pages until written: no memset
        return self._free.get()

    def _hand(self, part: memoryview) -> None:
        self.parts.put((part, self.digest(part) if self.digest is not None else b""))

    def run(self) -> None:
        try:
            buffer = self._buffer()
            view = memoryview(buffer)
            filled = 0
            while True:
                got = self.stream.readinto(view[filled : filled + _READ])
                if not got:
                    break
                scanned = max(0, filled - len(XBSTREAM_MAGIC) + 1)  # a header may straddle two reads
                filled += got
                at = cut_at(buffer, self.size, scanned, filled)
                if at is None and filled >= 2 * self.size:
                    at = filled  # no header for a whole part: cut anyway (bounded memory)
                if at is not None:
                    buffer = self._buffer()
                    rest = filled - at
                    buffer[:rest] = bytes(view[at:filled])  # the start of the next part (< 1 read)
                    self._hand(view[:at])
                    view, filled = memoryview(buffer), rest
            if filled:
                self._hand(view[:filled])
            self.parts.put(None)
        except BaseException as err:  # handed to the storing thread
            self.parts.put(err)


def full_backup(request: SnapshotRequest, server: Server, *, no_express: bool = False) -> SnapshotOutcome:
    sink = request.sink
    with my.client(server) as c:
        try:
            facts = server_facts(c)
        except ProviderError as err:
            raise ProviderError(
                f"{server.describe()} is not reachable: {err}",
                hint="start the server, or fix socket/osUser/credentials",
            ) from None
        databases = _databases(c)
        identity = data_identity(server, facts)
        previous = sink.list_points(request.source)
        choice = express.choose(
            previous,
            build_catalog(previous),
            identity,
            _server_lsn(c),
            spec=request.spec,
            forced_real=no_express,
            tree_present=_tree_present(sink, previous),
        )
        if choice.why_real:
            request.progress.note(f"a real full: {choice.why_real}")
        if facts.log_bin:
            # The copy's binlog position lands near the head of a fresh file: a first full ships
            # that file on, not the whole of the one active before (the binlogs written before the
            # full are of no use to a roll-forward from it; syncs have shipped them already if any ran).
            c.query("FLUSH BINARY LOGS")
        work = c.options.parent  # private to the OS user: mariadb-backup's scratch and lsn dir
        argv = [
            server.bin("mariadb-backup"),
            f"--defaults-file={c.options}",
            "--backup",
            "--stream=mbstream",
            f"--target-dir={work}",
            f"--extra-lsndir={work}",
            f"--datadir={server.data_dir}",
        ]
        if choice.base is not None:
            argv.append(f"--incremental-lsn={choice.base.to_lsn}")
        started = datetime.now(UTC)
        what = (
            f"express full (pages changed since full {choice.base.point_id[:12]})" if choice.base else "mariadb-backup"
        )
        request.progress.note(f"{what} of {server.data_dir} streaming into the repository")
        st = os.stat(server.data_dir)
        parts, size = _stream_parts(request, server, argv, work, st)
        consistent_at = datetime.now(UTC)
        info = (work / "xtrabackup_info").read_text(encoding="utf-8", errors="replace")
        base: dict[str, object] = {
            **_base_facts(info, facts, started, consistent_at, len(parts), size),
            "databases": databases,
            "identity": identity,
            **_lsns(work / "xtrabackup_checkpoints"),
        }
        if choice.base is not None:
            base["express_of"] = choice.base.point_id
            base["express_depth"] = len(choice.base.parts)  # express fulls on the real one, this one included
        elif choice.why_real:
            base["real_because"] = choice.why_real
        from_seq = bl.sequence(str(base["binlog_file"])) if base.get("binlog_file") else None
        shipped = ship_binlogs(request, c, facts, from_seq=from_seq)
    base_tree = sink.save_tree(Tree(tuple(parts)))
    root = sink.save_tree(
        Tree(
            (
                _dir("base", server.data_dir, base_tree),
                _dir("binlog", server.data_dir, sink.save_tree(Tree(shipped.nodes))),
            )
        )
    )
    extra = {"mariadb": {**_log_extra(shipped, facts), "base": base}, "data_dir": str(server.data_dir)}
    if not facts.log_bin:
        request.progress.note(
            "binary logging is off: this full restores to its own instant only (run `protectctl apply` to turn it on)"
        )
    return SnapshotOutcome(
        tree=root,
        stats=SnapshotStats(
            files=len(parts) + len(shipped.nodes),
            dirs=2,
            bytes_total=size + shipped.bytes_total,
            bytes_read=size + shipped.bytes_total,
        ),
        errors=(),
        extra=extra,
        finish=lambda point_id: None,
    )


def data_identity(server: Server, facts: ServerFacts) -> dict[str, object]:
    """What an express full must share with the full it builds on: the server id, the data
    directory, the inode of its system tablespace (a data directory restored or replaced
    under the same name has a new one) and the server's major version (an upgrade between two
    fulls starts a new chain)."""
    data_dir = os.path.realpath(server.data_dir)
    try:
        inode = os.stat(Path(data_dir) / "ibdata1").st_ino
    except OSError:
        inode = os.stat(data_dir).st_ino
    version = ".".join(facts.version.split("-")[0].split(".")[:2])
    return {"server_id": facts.server_id, "data_dir": data_dir, "ibdata1": inode, "version": version}


def _server_lsn(c: Client) -> int | None:
    try:
        rows = c.query("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")
    except ProviderError:
        return None
    value = rows[0][1] if rows and len(rows[0]) > 1 else ""
    return int(value) if value.isdigit() else None


def _tree_present(sink: SnapshotSink, points: list[Point]) -> Callable[[str], bool]:
    trees = {p.id: p.tree for p in points}

    def present(point_id: str) -> bool:
        tree = trees.get(point_id)
        return tree is not None and sink.has_blob(tree)

    return present


def _lsns(checkpoints: Path) -> dict[str, object]:
    """from_lsn and to_lsn of mariadb-backup's xtrabackup_checkpoints (the next express full starts at to_lsn)."""
    out: dict[str, object] = {}
    try:
        text = checkpoints.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition("="))
        if key in ("from_lsn", "to_lsn") and value.isdigit():
            out[key] = int(value)
    return out


def _stream_parts(
    request: SnapshotRequest, server: Server, argv: list[str], work: Path, st: os.stat_result
) -> tuple[list[Node], int]:
    sink = request.sink
    err_log = work / "mariadb-backup.log"
    with err_log.open("wb") as log:
        try:
            proc = subprocess.Popen(
                my.as_user(server, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,  # read straight into the reader's buffers
                cwd="/",
                env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            )
        except FileNotFoundError as err:
            raise ProviderError(f"{argv[0]} not found", hint="check binDir in the member spec") from err
        assert proc.stdout is not None
        with contextlib.suppress(OSError):  # fewer, larger reads (1 MiB: what an unprivileged pipe may hold)
            fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _READ)
        reader = _Reader(cast(Readable, proc.stdout), PART_BYTES, sink.hash_content)
        reader.start()
        parts: list[Node] = []
        size = 0
        try:
            while True:
                got = reader.parts.get()
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise ProviderError(f"reading mariadb-backup's stream: {got}")
                item, digest = got
                parts.append(
                    file_node(
                        f"part-{len(parts):06d}",
                        st,
                        size=len(item),
                        chunks=sink.store_content(item, compression="fast"),
                        content_hash=digest,
                    )
                )
                size += len(item)
                reader.release(item)
                request.progress.note(f"{size >> 20} MiB of the backup stream stored")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
    if status != 0:
        text = err_log.read_text(encoding="utf-8", errors="replace")
        raise ProviderError(f"mariadb-backup failed (exit {status}): {my.tail(text)}")
    return parts, size


_SYSTEM_SCHEMAS = "('information_schema', 'performance_schema', 'sys', 'mysql')"
_DATABASES_SQL = (
    "SELECT s.schema_name, SUM(t.data_length + t.index_length) FROM information_schema.schemata s "
    "LEFT JOIN information_schema.tables t ON t.table_schema = s.schema_name "
    f"WHERE s.schema_name NOT IN {_SYSTEM_SCHEMAS} GROUP BY s.schema_name ORDER BY s.schema_name"
)
_DATABASE_NAMES_SQL = (
    f"SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN {_SYSTEM_SCHEMAS} "
    "ORDER BY schema_name"
)
_SIZES_TIMEOUT_S = 60.0  # sizes open every table's definition: on a server of very many tables, names only


def _databases(c: Client) -> list[dict[str, object]]:
    """The server's databases as a full backup starts (name, bytes of data and indexes): what
    `protectctl ls` and `versions` of the source show."""
    try:
        rows = c.query(_DATABASES_SQL, timeout_s=_SIZES_TIMEOUT_S)
    except ProviderError:
        rows = [[name, ""] for (name, *_rest) in c.query(_DATABASE_NAMES_SQL)]
    out: list[dict[str, object]] = []
    for row in rows:
        name, size = (row + ["", ""])[:2]
        out.append({"name": name, "size": int(size) if size.isdigit() else None})
    return out


def _base_facts(
    info: str, facts: ServerFacts, started: datetime, consistent_at: datetime, parts: int, size: int
) -> dict[str, object]:
    match = _BINLOG_POS.search(info)
    binlog_file = match.group(1) if match and facts.log_bin else None
    return {
        "binlog_file": binlog_file,
        "binlog_pos": int(match.group(2)) if match else 0,
        "gtid": (match.group(3) or "") if match else "",
        "started_at": my.iso_utc(started),
        "consistent_at": my.iso_utc(consistent_at),
        "server_id": facts.server_id,
        "server_version": facts.version,
        "page_size": facts.page_size,
        "parts": parts,
        "stream_bytes": size,
        "format": "mbstream",
    }
