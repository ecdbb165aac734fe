"""The PostgreSQL provider: application-consistent base backups, WAL shipping, restore to any time.

Member spec (snake_case): ``data_dir`` (absolute, required), ``port``, ``socket_dir``,
``os_user``, ``bin_dir``, ``allow_restart``, ``spool_dir`` (default: beside the agent's
state, ``<root>/var/lib/protectctl-spool/<group>--<member>``), ``spool_limit`` (a size),
``streaming``, ``hosts``/``backup_from`` (a primary/standby pair; see docs/postgresql.md).

* prepare (apply): ``wal_level >= replica``, ``archive_mode = on`` and an ``archive_command``
  that spools each completed segment (protectctl/agent/wal.py, installed beside the spool
  so the PostgreSQL OS user can run it); reload; restart only with ``allow_restart``;
  then ``pg_switch_wal()`` and wait for the segment to reach the spool.
* full: the low-level backup API (``pg_backup_start(fast)`` in one held session), the data
  directory read by the agent's archiver with the change journal (an express full: a file
  whose identity is unchanged since before the previous full began is not read again, and
  unchanged chunks of re-read files are not stored again), ``pg_backup_stop``, the backup
  label added to the tree, then the WAL the backup needs is drained from the spool into
  the same point. Point tree: ``data/`` (the data directory) and ``wal/`` (WAL files).
* sync: ``pg_switch_wal()``, wait for the archiver, drain the spool: each segment stored
  with its LSN range and the first/last transaction time pg_waldump finds in it.
* restore: see `PostgresqlProvider.restore` and docs/postgresql.md.

Everything PostgreSQL runs goes through providers/postgresql_cluster.py as the OS user.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import socket
import stat
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from protectctl.agent import wal as walspool
from protectctl.agent.archiver import ArchiveOptions, Archiver
from protectctl.agent.fsmeta import base_node
from protectctl.agent.journal import Journal
from protectctl.agent.lock import safe_name
from protectctl.agent.patterns import PathFilter
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import BlobKind, BlobWriter, Point, Repository
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import ProtectctlError, ProviderError, RestoreError
from protectctl.progress import Progress
from protectctl.provider import (
    JobPlacement,
    PrepareOutcome,
    PrepareRequest,
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotStats,
)
from providers import postgresql_cluster as pg
from providers import postgresql_pair as pair
from providers import postgresql_stream as stream
from providers.postgresql_catalog import Catalog, RestorePlan, build_catalog, plan_restore
from providers.postgresql_cluster import Cluster

_FIELDS = {"data_dir", "port", "socket_dir", "os_user", "bin_dir", "allow_restart", "spool_dir", "spool_limit",
           "streaming", "backup_from", "per_host", "nodes", "node", "pair_node"}
DEFAULT_SPOOL_LIMIT = 4 << 30
SCRIPT_NAME = ".protectctl-wal.py"
STAGING = ".protectctl-restore"
# Copied by pg_basebackup's rules: runtime state a restored cluster must not inherit.
_EXCLUDE = (
    "/pg_wal/*", "/pg_replslot/*", "/pg_dynshmem/*", "/pg_notify/*", "/pg_serial/*", "/pg_snapshots/*",
    "/pg_stat_tmp/*", "/pg_subtrans/*", "pgsql_tmp*", "pg_internal.init", "/postmaster.pid", "/postmaster.opts",
    "/backup_label", "/backup_label.old", "/tablespace_map", "/backup_manifest", "/recovery.signal",
    "/standby.signal", f"/{STAGING}", "/protectctl-restore.log",
)
# A file modified this close to (or after) the start of the previous full may have changed
# again within the same mtime tick after it was read (ext4's clock is jiffy-coarse): read it.
_RACY_SLACK_NS = 2_000_000_000
_RECOVERY_KEYS = ("restore_command", "recovery_target_time", "recovery_target_action", "recovery_target_timeline",
                  "recovery_target", "recovery_target_lsn", "recovery_target_xid", "recovery_target_name",
                  "recovery_target_inclusive")


def spool_dir(spec: Mapping[str, object], source: str, state_dir: Path) -> Path:
    given = spec.get("spool_dir")
    if isinstance(given, str) and given:
        return Path(given)
    return state_dir.parent / "protectctl-spool" / safe_name(source)


def spool_limit(spec: Mapping[str, object]) -> int:
    value = spec.get("spool_limit")
    if value is None or value == "":
        return DEFAULT_SPOOL_LIMIT
    if isinstance(value, int):
        return value
    from protectctl.units import ByteSize

    return ByteSize.parse(str(value)).bytes


def _python_for_os_user() -> str:
    # The OS user usually cannot reach our interpreter (a virtualenv under /root): the system one.
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def archive_command(spool: Path, limit: int) -> str:
    return (f"'{_python_for_os_user()}' -I '{spool / SCRIPT_NAME}' push --spool '{spool}' "
            f"--max-bytes {limit} '%p'")


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _t(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else "?"


class PostgresqlProvider:
    """A PostgreSQL cluster (one data directory) on a host."""

    kind = "postgresql"
    application = True
    continuous_log_shipping = True

    # -- validate ------------------------------------------------------------------------

    def validate(self, spec: Mapping[str, object]) -> list[str]:
        problems = [f"unknown field {key!r} (known: {', '.join(sorted(_FIELDS))})" for key in spec
                    if key not in _FIELDS]
        data_dir = spec.get("data_dir")
        if not isinstance(data_dir, str) or not os.path.isabs(data_dir):
            problems.append("data_dir is required: the cluster's absolute data directory, e.g. "
                            "/var/lib/postgresql/15/main")
        for key in ("data_dir", "socket_dir", "spool_dir", "bin_dir"):
            if "'" in str(spec.get(key) or ""):
                problems.append(f"{key} must not contain a single quote (it goes into archive_command)")
        try:
            spool_limit(spec)
        except ProtectctlError as err:
            problems.append(f"spool_limit: {err.message}")
        if spec.get("backup_from", "primary") not in ("primary", "standby"):
            problems.append("backup_from must be primary or standby")
        return problems

    # -- prepare (apply) -----------------------------------------------------------------

    def prepare_host(self, request: PrepareRequest) -> PrepareOutcome:
        from dataclasses import replace

        request = replace(request, spec=pair.node_spec(request.spec))  # a pair: this host's cluster
        cluster = Cluster.from_spec(request.spec)
        if not pg.reachable(cluster):
            raise ProviderError(
                f"cannot reach PostgreSQL of {request.source} at {cluster.socket_dir} port {cluster.port}",
                hint="start the cluster (or fix port/socketDir/osUser), then run apply again")
        spool = spool_dir(request.spec, request.source, request.state_dir)
        install_spool(cluster, spool)
        want = archive_command(spool, spool_limit(request.spec))
        running = dict((r[0], r[1]) for r in pg.query(
            cluster, "SELECT name, setting FROM pg_settings WHERE name IN "
                     "('wal_level', 'archive_mode', 'archive_command')"))
        changes: list[str] = []
        needs_restart = False
        if running.get("wal_level") == "minimal":
            pg.query(cluster, "ALTER SYSTEM SET wal_level = 'replica'")
            changes.append("wal_level set to replica")
            needs_restart = True
        if running.get("archive_mode") == "off":
            pg.query(cluster, "ALTER SYSTEM SET archive_mode = 'on'")
            changes.append("archive_mode set to on")
            needs_restart = True
        if running.get("archive_command") != want:
            pg.query(cluster, f"ALTER SYSTEM SET archive_command = {_literal(want)}")
            changes.append(f"archive_command set to spool WAL into {spool}")
        pg.query(cluster, "SELECT pg_reload_conf()")
        warnings: list[str] = []
        if needs_restart:
            if not request.spec.get("allow_restart"):
                warnings.append(
                    f"{request.source}: WAL archiving is configured but starts only at the next restart of the "
                    f"cluster ({' and '.join(changes[:2])} need one; allowRestart is false). Until then no "
                    "WAL is shipped and point-in-time recovery is not possible")
                return PrepareOutcome(tuple(changes), tuple(warnings))
            log_file = spool.parent / f"{safe_name(request.source)}.postgresql.log"
            log_file.touch(mode=0o600)
            os.chown(log_file, *cluster.ids())
            pg.restart(cluster, log_file=log_file)
            changes.append(f"(the server's output now goes to {log_file})")
            changes.append("cluster restarted to apply wal_level/archive_mode")
        if pg.scalar(cluster, "SELECT pg_is_in_recovery()") == "t":
            changes.append("a standby: it archives into its spool once promoted")
            return PrepareOutcome(tuple(changes), tuple(warnings))
        time.sleep(0.2)  # the archiver re-reads archive_command on the reload's SIGHUP
        segment = pg.scalar(cluster, "SELECT pg_walfile_name(pg_switch_wal())")
        pg.wait_archived(cluster, segment, timeout_s=60)
        changes.append(f"archiving checked: {segment} reached the spool")
        return PrepareOutcome(tuple(changes), tuple(warnings))

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        cluster = Cluster.from_spec(request.spec)
        spool = spool_dir(request.spec, request.source, request.state_dir)
        if not spool.is_dir():
            raise ProviderError(f"the WAL spool {spool} of {request.source} does not exist",
                                hint="run `protectctl apply` to configure WAL archiving")
        if request.kind == "full":
            return _FullBackup(request, cluster, spool).run()
        return _ship(request, cluster, spool)

    def place_job(self, source: str, spec: Mapping[str, object], kind: Literal["sync", "full"],
                  state_dir: Path) -> JobPlacement:
        return pair.place_job(source, spec, kind, state_dir)

    # -- choosing and restoring ----------------------------------------------------------

    def choose_point(self, points: Sequence[Point], to_time: datetime | Literal["latest"], *,
                     source: str) -> Point:
        plan = plan_restore(build_catalog(points), to_time, source=source)
        return next(p for p in points if p.id == plan.base.point_id)

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        request = pair.restore_request(request)
        repo = _repository(request)
        points = repo.list_points(request.source)
        catalog = build_catalog(points)
        to_time = request.to_time if request.to_time is not None else "latest"
        plan = plan_restore(catalog, to_time, source=request.source)
        database = request.options.get("database")
        if database:
            return _restore_database(request, catalog, plan, str(database), str(request.options.get("as_name") or ""))
        return _ClusterRestore(request, catalog, plan, points).run()


def _repository(request: RestoreRequest) -> Repository:
    if not isinstance(request.repo, Repository):
        raise RestoreError("a PostgreSQL restore reads base backup and WAL from the disk repository",
                           hint="restoring PostgreSQL from tape is not supported yet")
    return request.repo


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def install_spool(cluster: Cluster, spool: Path) -> None:
    """The spool directory (owned by the OS user, 0700) and the archive script in it."""
    uid, gid = cluster.ids()
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.mkdir(mode=0o700, exist_ok=True)
    os.chown(spool, uid, gid)
    os.chmod(spool, 0o700)
    script = Path(walspool.__file__).read_bytes()
    target = spool / SCRIPT_NAME
    if not target.exists() or target.read_bytes() != script:
        tmp = spool / f".{SCRIPT_NAME}.tmp"
        tmp.write_bytes(script)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)


# -- shipping WAL --------------------------------------------------------------------------


@dataclass(slots=True)
class _Shipped:
    tree: BlobId
    nodes: int
    bytes_total: int
    extra: dict[str, object]
    done: list[tuple[Path, int, int]]  # (path, inode, mtime_ns) to delete once the point is saved
    drop_files: list[Path]


_FACTS_SQL = ("SELECT current_setting('archive_mode'), pg_is_in_recovery(), "
              "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), "
              "(SELECT system_identifier::text FROM pg_control_system()), current_setting('server_version_num')")


@dataclass(frozen=True, slots=True)
class _Facts:
    archive_mode: str
    in_recovery: bool
    segment_size: int
    system_identifier: str
    server_version_num: str


def _facts(session: pg.Session) -> _Facts:
    row = session.query(_FACTS_SQL)[0]
    return _Facts(row[0], row[1] == "t", int(row[2]), row[3], row[4])


def _require_archiving(facts: _Facts, what: str) -> None:
    if facts.archive_mode == "off":
        raise ProviderError(f"WAL archiving is off on this cluster, so {what}",
                            hint="run `protectctl apply` (and restart the cluster if it says so)")


def _claim_drops(spool: Path) -> list[Path]:
    current = spool / walspool.DROPPED
    if current.exists():
        with contextlib.suppress(FileNotFoundError):
            os.rename(current, spool / f"dropped.{uuid.uuid4().hex}.draining.jsonl")
    return sorted(spool.glob("dropped.*.draining.jsonl"))


@dataclass(frozen=True, slots=True)
class _ReadFile:
    path: Path
    st: os.stat_result
    data: bytes
    digest: bytes  # the content hash stored in the node


def _read_hashed(repo: Repository, path: Path) -> _ReadFile | None:
    """A spooled file's content and content hash; None when it is gone (drained by a concurrent run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        data = os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)
    hasher = repo.content_hasher()
    hasher.update(data)
    return _ReadFile(path, st, data, hasher.digest())


def _store_read(repo: Repository, writer: BlobWriter, read: _ReadFile) -> Node:
    chunks = tuple(writer.add(BlobKind.DATA, piece)[0] for piece in repo.chunker().iter_buffer(read.data))
    return base_node(os.fsencode(read.path.name), read.st, NodeType.FILE, (), size=len(read.data), chunks=chunks,
                     content_hash=read.digest)


# Files read and hashed ahead of the one being chunked and stored (16 MiB each by default).
_READ_AHEAD = 2


def drain_spool(repo: Repository, writer: BlobWriter, cluster: Cluster, spool: Path, segment_size: int,
                progress: Progress) -> _Shipped:
    """Store every WAL file in the spool (and its transaction times) as one `wal/` tree.

    Three things overlap: pg_waldump finding the transaction times (another process), reading
    and hashing the next files (a thread; both release the GIL), and chunking and storing this
    one (the writer compresses and encrypts in its own threads).
    """
    drop_files = _claim_drops(spool)
    drops: list[dict[str, object]] = []
    for f in drop_files:
        drops += walspool.read_drops(f)
    files = walspool.spooled_files(spool)
    stored: list[tuple[Node, Path, int, int]] = []  # node, path, inode, mtime_ns (not the content)
    with ThreadPoolExecutor(2, thread_name_prefix="wal-drain") as pool:
        pending_times = pool.submit(_xact_times, cluster, spool, [f.name for f in files], segment_size)
        ahead: deque[Future[_ReadFile | None]] = deque()
        queue = iter(files)
        while True:
            while len(ahead) <= _READ_AHEAD and (path := next(queue, None)) is not None:
                ahead.append(pool.submit(_read_hashed, repo, path))
            if not ahead:
                break
            read = ahead.popleft().result()
            if read is not None:
                stored.append((_store_read(repo, writer, read), read.path, read.st.st_ino, read.st.st_mtime_ns))
                progress.advance(files=1)
        times = pending_times.result()
    nodes, done, wal, history, other = [], [], [], [], []
    total = 0
    for node, path, ino, mtime_ns in stored:
        nodes.append(node)
        done.append((path, ino, mtime_ns))
        total += node.size
        seg = walspool.SegmentName.parse(path.name, segment_size)
        if seg is not None:
            found = times.get(seg.segno, [])
            start = seg.segno * segment_size
            wal.append({"name": path.name, "timeline": seg.timeline, "segno": seg.segno,
                        "start_lsn": pg.format_lsn(start), "end_lsn": pg.format_lsn(start + segment_size),
                        "first_xact": _utc(min(found)) if found else None,
                        "last_xact": _utc(max(found)) if found else None, "xacts": len(found)})
        elif path.name.endswith(".history"):
            history.append(path.name)
        else:
            other.append(path.name)
    for d in drops:
        progress.note(f"WAL segment {d.get('name')} was DROPPED by the full spool: {d.get('reason')}")
    tree = repo.save_tree(writer, Tree(tuple(sorted(nodes, key=lambda n: n.name))))
    extra: dict[str, object] = {"wal": wal, "history": history, "other": other, "dropped": drops,
                                "wal_segment_size": segment_size}
    return _Shipped(tree, len(nodes), total, extra, done, drop_files)


def _xact_times(cluster: Cluster, spool: Path, names: Sequence[str], segment_size: int) -> dict[int, list[datetime]]:
    """Transaction times per segment number, one pg_waldump per run of consecutive segments."""
    segs = sorted((s.timeline, s.segno, n) for n in names
                  if (s := walspool.SegmentName.parse(n, segment_size)) is not None)
    runs: list[list[tuple[int, int, str]]] = []
    for item in segs:
        if runs and runs[-1][-1][0] == item[0] and runs[-1][-1][1] + 1 == item[1]:
            runs[-1].append(item)
        else:
            runs.append([item])
    out: dict[int, list[datetime]] = {}
    for run_ in runs:
        for lsn, when in pg.xact_times(cluster.bin_dir, spool, run_[0][2], run_[-1][2]):
            out.setdefault(lsn // segment_size, []).append(when)
    return out


def _finish_drain(shipped: _Shipped) -> None:
    for path, ino, mtime in shipped.done:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if st.st_ino == ino and st.st_mtime_ns == mtime:  # not re-pushed since we read it
                path.unlink()
    for f in shipped.drop_files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def _switch_and_wait(cluster: Cluster, progress: Progress) -> tuple[dict[str, object], int]:
    """Close the current segment and wait until it is spooled: the sync's recovery horizon.

    Returns the coverage facts and the WAL segment size. One psql session for all of it:
    each new connection through runuser costs ~50 ms.
    """
    with pg.Session(cluster) as session:
        try:
            facts = _facts(session)
        except ProviderError:
            progress.note(f"PostgreSQL at {cluster.socket_dir}:{cluster.port} is not reachable: "
                          "shipping the spool only")
            return {}, 16 << 20
        _require_archiving(facts, "there is no WAL to ship")
        if facts.in_recovery:
            return {}, facts.segment_size
        before = datetime.now(UTC)
        segment = session.scalar("SELECT pg_walfile_name(pg_switch_wal())")
        pg.wait_archived(cluster, segment, session=session)
    seg = walspool.SegmentName.parse(segment, facts.segment_size)
    return ({"covered_until": _utc(before), "covered_through_segno": seg.segno if seg else None,
             "covered_through": segment}, facts.segment_size)


def _ship(request: SnapshotRequest, cluster: Cluster, spool: Path) -> SnapshotOutcome:
    streamed = stream.stage_streamed(cluster, spool, request.source, request.progress) \
        if request.spec.get("streaming") else None
    coverage, segment_size = streamed or _switch_and_wait(cluster, request.progress)
    shipped = drain_spool(request.repo, request.writer, cluster, spool, segment_size, request.progress)
    root = request.repo.save_tree(request.writer, Tree((_dir_node("wal", spool, shipped.tree),)))
    pg_extra = {**shipped.extra, **coverage}

    def finish(point_id: str | None) -> None:
        if point_id is not None:
            _finish_drain(shipped)

    return SnapshotOutcome(
        tree=root,
        stats=SnapshotStats(files=shipped.nodes, bytes_total=shipped.bytes_total, bytes_read=shipped.bytes_total),
        errors=(), extra={"pg": pg_extra, "data_dir": str(cluster.data_dir)}, finish=finish)


def _dir_node(name: str, like: Path, subtree: BlobId) -> Node:
    return base_node(name.encode(), os.stat(like), NodeType.DIR, (), subtree=subtree)


# -- full ------------------------------------------------------------------------------------


class _RacyAwareArchiver(Archiver):
    """The archiver, distrusting journal entries of files modified near or after the previous full."""

    def __init__(self, *args: object, distrust_from_ns: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._distrust_from_ns = distrust_from_ns

    def _content(self, path, name, rel, here, st):  # type: ignore[no-untyped-def]
        previous = here.known.get(name)
        if previous is not None and previous.identity.mtime_ns >= self._distrust_from_ns:
            here.known.pop(name, None)
        return super()._content(path, name, rel, here, st)


class _FullBackup:
    def __init__(self, request: SnapshotRequest, cluster: Cluster, spool: Path) -> None:
        self.request = request
        self.cluster = cluster
        self.spool = spool

    def _distrust_from(self) -> int:
        """Journal entries are trusted only for files last modified before the previous full began."""
        for point in reversed(self.request.repo.list_points(self.request.source)):
            pgx = point.extra.get("pg")
            base = pgx.get("base") if isinstance(pgx, Mapping) else None
            if isinstance(base, Mapping) and isinstance(base.get("walk_started_ns"), int):
                return int(base["walk_started_ns"]) - _RACY_SLACK_NS
        return -1  # no previous full: read everything

    def _discard_unreplayable(self, start_wal: str, segment_size: int) -> None:
        """The source's first base backup: WAL spooled before it can roll nothing forward (there
        is no earlier base), so it is removed rather than stored (after `pgbench -i` or a bulk
        load that is most of the spool). Later fulls keep it: it continues the previous window."""
        start = walspool.SegmentName.parse(start_wal, segment_size)
        if start is None or self.request.repo.list_points(self.request.source):
            return
        old = [path for path in walspool.spooled_files(self.spool)
               if (seg := walspool.SegmentName.parse(path.name, segment_size)) is not None and seg.segno < start.segno]
        for path in old:
            path.unlink(missing_ok=True)
        if old:
            self.request.progress.note(f"{len(old)} WAL segment(s) spooled before the first base backup were "
                                       "discarded: no base backup precedes them, nothing could replay them")

    def run(self) -> SnapshotOutcome:
        request, cluster = self.request, self.cluster
        distrust = self._distrust_from()
        journal = Journal(request.state_dir / "journal" / f"{safe_name(request.source)}.{request.repo.id}.db",
                          repo_id=request.repo.id)
        journal_out = journal.begin()
        label = f"protectctl {request.source} {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
        try:
            with pg.Session(cluster) as session:
                facts = _facts(session)
                _require_archiving(facts, "a base backup could not be recovered")
                walfile = pair.walfile_sql if facts.in_recovery else (lambda lsn: f"pg_walfile_name({lsn})")
                segment_size = facts.segment_size
                start_lsn, start_wal = session.query(
                    f"SELECT lsn, {walfile('lsn')} FROM pg_backup_start({_literal(label)}, true) AS lsn")[0]
                walk_started = time.time_ns()
                start_time = datetime.now(UTC)
                if not facts.in_recovery:
                    self._discard_unreplayable(start_wal, segment_size)
                memo = _TreeMemo(request.repo)
                result = _RacyAwareArchiver(
                    memo, request.writer, journal, journal_out,
                    ArchiveOptions(root=cluster.data_dir, filter=PathFilter([], list(_EXCLUDE)),
                                   verify_all=distrust < 0),
                    request.progress, distrust_from_ns=max(distrust, 0)).run()
                if facts.in_recovery and memo.last is not None:  # a standby (pair, backupFrom: standby)
                    memo.last = pair.control_file_last(request.repo, request.writer, memo.last, memo.trees,
                                                       cluster.data_dir)
                stop_lsn, stop_wal, label64, map64 = session.query(
                    f"SELECT lsn, {walfile('lsn')}, "
                    "translate(encode(convert_to(labelfile, 'UTF8'), 'base64'), E'\\n', ''), "
                    "translate(encode(convert_to(coalesce(spcmapfile, ''), 'UTF8'), 'base64'), E'\\n', '') "
                    "FROM pg_backup_stop(false)")[0]
                stop_time = datetime.now(UTC)
                if not facts.in_recovery:  # a standby does not archive: the primary's syncs ship this WAL
                    pg.wait_archived(cluster, stop_wal, session=session)
            labelfile = base64.b64decode(label64)
            spcmap = base64.b64decode(map64)
            data_tree = self._with_label(memo.last, labelfile, spcmap)
            shipped = drain_spool(request.repo, request.writer, cluster, self.spool, segment_size, request.progress)
        except BaseException:
            journal_out.abort()
            journal.close()
            raise
        journal.close()
        tl_match = re.search(rb"START TIMELINE: (\d+)", labelfile)
        start_seg = walspool.SegmentName.parse(start_wal, segment_size)
        stop_seg = walspool.SegmentName.parse(stop_wal, segment_size)
        assert start_seg is not None and stop_seg is not None
        base = {"label": label, "start_lsn": pg.parse_lsn(start_lsn), "stop_lsn": pg.parse_lsn(stop_lsn),
                "start_wal": start_wal, "stop_wal": stop_wal, "start_segno": start_seg.segno,
                "stop_segno": stop_seg.segno,
                "timeline": int(tl_match.group(1)) if tl_match else start_seg.timeline,
                "start_time": _utc(start_time), "stop_time": _utc(stop_time), "walk_started_ns": walk_started,
                "system_identifier": facts.system_identifier, "server_version_num": facts.server_version_num,
                "backup_label": labelfile.decode(errors="replace")}
        root = request.repo.save_tree(request.writer, Tree((
            _dir_node("data", cluster.data_dir, data_tree), _dir_node("wal", self.spool, shipped.tree))))
        vanished = [e for e in result.errors if e.endswith("vanished during the backup")]
        errors = tuple(e for e in result.errors if e not in vanished)
        root_st = result.root
        extra: dict[str, object] = {
            "pg": {**shipped.extra, "base": base, "covered_until": _utc(stop_time),
                   "covered_through_segno": stop_seg.segno, "covered_through": stop_wal},
            "data_dir": str(cluster.data_dir), "files_read": result.files_read, "files_reused": result.files_reused,
            "vanished": len(vanished),
        }
        if root_st is not None:
            extra["root"] = {"mode": stat.S_IMODE(root_st.st_mode), "uid": root_st.st_uid, "gid": root_st.st_gid,
                             "atime_ns": root_st.st_atime_ns, "mtime_ns": root_st.st_mtime_ns}

        def finish(point_id: str | None) -> None:
            if point_id is None:
                journal_out.abort()
                return
            journal_out.commit({"point_id": point_id, "source": request.source})
            _finish_drain(shipped)

        return SnapshotOutcome(
            tree=root,
            stats=SnapshotStats(files=result.files + shipped.nodes, dirs=result.dirs,
                                bytes_total=result.bytes_total + shipped.bytes_total,
                                bytes_read=result.bytes_read + shipped.bytes_total),
            errors=errors, extra=extra, finish=finish)

    def _with_label(self, tree: Tree | None, labelfile: bytes, spcmap: bytes) -> BlobId:
        """The data directory's tree plus backup_label (and tablespace_map): what makes it a base backup."""
        repo, writer = self.request.repo, self.request.writer
        nodes = list(tree.nodes) if tree is not None else []
        st = os.stat(self.cluster.data_dir / "PG_VERSION")
        for name, content in (("backup_label", labelfile), ("tablespace_map", spcmap)):
            if not content:
                continue
            hasher = repo.content_hasher()
            hasher.update(content)
            chunk = writer.add(BlobKind.DATA, content)[0]
            nodes = [n for n in nodes if n.name != name.encode()]
            nodes.append(_file_node(name, st, content, (chunk,), hasher.digest()))
        return repo.save_tree(writer, Tree(tuple(sorted(nodes, key=lambda n: n.name))))


class _TreeMemo:
    """The repository as the archiver sees it, remembering the last tree saved (the root: trees
    are saved bottom-up), which cannot be read back before the write session commits."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self.last: Tree | None = None
        self.trees: dict[BlobId, Tree] = {}

    def save_tree(self, writer: BlobWriter, tree: Tree) -> BlobId:
        self.last = tree
        tree_id = self._repo.save_tree(writer, tree)
        self.trees[tree_id] = tree
        return tree_id

    def __getattr__(self, name: str) -> object:
        return getattr(self._repo, name)


def _file_node(name: str, like: os.stat_result, content: bytes, chunks: tuple[BlobId, ...], digest: bytes) -> Node:
    node = base_node(name.encode(), like, NodeType.FILE, (), size=len(content), chunks=chunks, content_hash=digest)
    return node


# -- restore -------------------------------------------------------------------------------


def free_port(socket_dir: Path, start: int) -> int:
    """A TCP port nobody listens on (loopback) whose Unix socket name is free in `socket_dir`."""
    for port in range(start, start + 200):
        if (socket_dir / f".s.PGSQL.{port}").exists():
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RestoreError(f"no free port found from {start}", hint="choose one with --port")


def _port_in_use(socket_dir: Path, port: int) -> bool:
    return (socket_dir / f".s.PGSQL.{port}").exists()


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(path, uid, gid)


def _write_owned(path: Path, data: bytes, uid: int, gid: int, mode: int = 0o600) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        os.fchown(out.fileno(), uid, gid)
        os.fchmod(out.fileno(), mode)
    os.replace(tmp, path)


def _conf_lines_without(text: str, keys: Sequence[str]) -> list[str]:
    pattern = re.compile(r"^\s*(" + "|".join(re.escape(k) for k in keys) + r")\s*(=|\s)", re.IGNORECASE)
    return [line for line in text.splitlines() if not pattern.match(line)]


@dataclass(slots=True)
class _Stager:
    """Decrypts the WAL a restore needs into the staging directory while PostgreSQL replays it."""

    repo: Repository
    points: Mapping[str, Point]
    files: Sequence[tuple[str, str]]  # (name, point id)
    local: Sequence[Path]  # WAL still on the source host (latest)
    staging: Path
    uid: int
    gid: int
    error: BaseException | None = None
    staged: int = 0
    cancelled: bool = False
    _trees: dict[str, Mapping[str, Node]] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-stage", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def cancel(self) -> None:
        """Stop after the file in hand; restore_command then answers "no such file" at once."""
        self.cancelled = True
        (self.staging / walspool.FETCHING_MARK).unlink(missing_ok=True)
        self.join()

    def _run(self) -> None:
        try:
            for name, point_id in self.files:
                if self.cancelled:
                    return
                self._stage_stored(name, point_id)
            for path in self.local:
                if self.cancelled:
                    return
                with contextlib.suppress(FileNotFoundError):
                    _write_owned(self.staging / path.name, path.read_bytes(), self.uid, self.gid)
                    self.staged += 1
        except BaseException as err:  # reported by the restore, which is waiting on PostgreSQL
            self.error = err
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.staging / walspool.FETCHING_MARK).unlink()

    def _wal_nodes(self, point_id: str) -> Mapping[str, Node]:
        if point_id not in self._trees:
            point = self.points[point_id]
            assert point.tree is not None
            root = {n.name: n for n in self.repo.load_tree(point.tree).nodes}
            wal = root.get(b"wal")
            nodes = self.repo.load_tree(wal.subtree).nodes if wal is not None and wal.subtree else ()
            self._trees[point_id] = {os.fsdecode(n.name): n for n in nodes}  # WAL file names are ASCII
        return self._trees[point_id]

    def _stage_stored(self, name: str, point_id: str) -> None:
        node = self._wal_nodes(point_id).get(name)
        if node is None:
            raise RestoreError(f"WAL file {name} is not in point {point_id} although its catalog lists it")
        data = b"".join(self.repo.load_blob(c) for c in node.chunks)
        hasher = self.repo.content_hasher()
        hasher.update(data)
        if node.content_hash is not None and hasher.digest() != node.content_hash:
            raise RestoreError(f"WAL file {name} of point {point_id} does not match its stored hash")
        _write_owned(self.staging / name, data, self.uid, self.gid)
        self.staged += 1


class _ClusterRestore:
    """Base backup + WAL roll-forward into a data directory, started, promoted, verified."""

    def __init__(self, request: RestoreRequest, catalog: Catalog, plan: RestorePlan,
                 points: Sequence[Point] | None = None) -> None:
        self.request = request
        self.catalog = catalog
        self.plan = plan
        self.repo = _repository(request)
        self.points = {p.id: p for p in (points or self.repo.list_points(request.source))}
        self.source = Cluster.from_spec(request.spec)
        self.target = request.target if request.target is not None else self.source.data_dir
        self.in_place = self.target.absolute() == self.source.data_dir.absolute()
        self.fast_promote = False  # paused at the target, then pg_promote() (see _write_config)

    def _port(self) -> int:
        given = self.request.options.get("port")
        if given:
            port = int(str(given))
            if not self.request.dry_run and _port_in_use(self.source.socket_dir, port):
                raise RestoreError(f"port {port} is in use (a server listens on "
                                   f"{self.source.socket_dir}/.s.PGSQL.{port})", hint="choose another with --port")
            return port
        if self.in_place:
            return self.source.port
        return free_port(self.source.socket_dir, self.source.port + 1)

    def describe_target(self) -> str:
        plan = self.plan
        if plan.mode == "time":
            return f"recovery to {_t(plan.target)} (UTC)"
        if plan.mode == "end":
            return f"recovery to {_t(plan.target)} (UTC): {plan.note}"
        return "recovery to the end of all WAL (latest)"

    def run(self) -> RestoreOutcome:
        request, plan = self.request, self.plan
        if self.in_place and not request.dry_run and pg.running(self.source):
            raise RestoreError(f"the source cluster is running in {self.target}",
                               hint="stop it first, or restore elsewhere with --target")
        port = self._port()
        cluster = Cluster.from_spec(request.spec, data_dir=self.target, port=port)
        local = self._source_wal() if plan.mode == "latest" else []
        base_point = self.points[plan.base.point_id]
        notes = [f"base backup {base_point.id[:12]} consistent at {_t(plan.base.stop_time)}, "
                 f"{len(plan.files)} WAL file(s) from the repository"
                 + (f" + {len(local)} still on the source host" if local else ""),
                 self.describe_target()]
        details: dict[str, object] = {
            "base_point": base_point.id, "base_consistent_at": _utc(plan.base.stop_time), "mode": plan.mode,
            "target_time": _utc(plan.target) if plan.target else None, "port": port, "wal_files": len(plan.files),
            "wal_files_from_source": len(local)}
        data = _data_subtree(self.repo, base_point)
        from protectctl.restore.run import restore_tree

        root = base_point.extra.get("root")
        root_meta = root if isinstance(root, Mapping) else None
        if request.dry_run:
            outcome = restore_tree(request.repo, data, self.target, dry_run=True, overwrite=request.overwrite,
                                   root_meta=root_meta, progress=request.progress)
            return RestoreOutcome(self.target, outcome.files, outcome.dirs, outcome.bytes_total, outcome.bytes_needed,
                                  outcome.bytes_free, 0, False, tuple(notes), details)
        uid, gid = cluster.ids()
        # The WAL is decrypted while the data directory is written (the tree restore mostly waits
        # on the disk), beside the target rather than in it: PostgreSQL fsyncs all of its data
        # directory before recovery, and would flush the staged WAL too.
        staging = self._prepare_staging(local, uid, gid)
        stager = _Stager(self.repo, self.points, plan.files, local, staging, uid, gid)
        stager.start()
        try:
            outcome = restore_tree(request.repo, data, self.target, overwrite=request.overwrite,
                                   root_meta=root_meta, progress=request.progress, writeback=True)
            _chown_tree(self.target, uid, gid)
            os.chmod(self.target, 0o700)
            self._write_config(cluster, staging, uid, gid)
        except BaseException:
            stager.cancel()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log_file = self.target / "protectctl-restore.log"
        request.progress.note(f"starting PostgreSQL on port {port} for {self.describe_target()}")
        try:
            pg.start(cluster, log_file)
            self._wait_promoted(cluster, log_file, stager)
        except BaseException:
            stager.cancel()
            with contextlib.suppress(ProviderError):
                if pg.running(cluster):
                    pg.stop(cluster, mode="immediate")
            shutil.rmtree(staging, ignore_errors=True)
            raise
        stager.join()
        details.update(self._facts(cluster, log_file))
        self._reset_recovery_settings(cluster, uid, gid)
        shutil.rmtree(staging, ignore_errors=True)
        notes.append(f"promoted on timeline {details.get('timeline')}; last transaction replayed: "
                     f"{details.get('last_replayed_xact_time') or 'none'}"
                     + (f" ({details['recovery_stop']})" if details.get("recovery_stop") else ""))
        notes.append(f"running on port {port} (socket {cluster.socket_dir}); archive_mode is off there, so it "
                     "never writes into the source's repository")
        return RestoreOutcome(self.target, outcome.files, outcome.dirs, outcome.bytes_total, outcome.bytes_needed,
                              outcome.bytes_free, outcome.verified, True, tuple(notes), details)

    def _source_wal(self) -> list[Path]:
        """WAL files on the source host not in the repository: the spool, then pg_wal."""
        if self.request.options.get("source_host_reachable") is False:
            return []  # the source is another machine's: its files are not the ones at these paths
        stored = {name for name, _ in self.plan.files}
        found: dict[str, Path] = {}
        candidates = [self.source.data_dir / "pg_wal"]
        if self.request.spec.get("spool_dir") or self.request.state_dir is not None:
            state_dir = self.request.state_dir or Path("/var/lib/protectctl")
            candidates.insert(0, spool_dir(self.request.spec, self.request.source, state_dir))
        first = self.plan.base.start_segno
        for directory in candidates:
            for path in walspool.spooled_files(directory):
                seg = walspool.SegmentName.parse(path.name, self.catalog.segment_size)
                if path.name in stored or path.name in found or (seg is not None and seg.segno < first):
                    continue
                found[path.name] = path
        return [found[n] for n in sorted(found)]

    def _prepare_staging(self, local: Sequence[Path], uid: int, gid: int) -> Path:
        staging = self.target.parent / f".{self.target.name}{STAGING}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir(mode=0o700)
        os.chown(staging, uid, gid)
        names = [n for n, _ in self.plan.files] + [p.name for p in local]
        _write_owned(staging / "wal.py", Path(walspool.__file__).read_bytes(), uid, gid, 0o644)
        _write_owned(staging / walspool.NAMES, ("\n".join(names) + "\n").encode(), uid, gid)
        _write_owned(staging / walspool.FETCHING_MARK, b"", uid, gid)
        return staging

    def _write_config(self, cluster: Cluster, staging: Path, uid: int, gid: int) -> None:
        target = self.target
        notes_conf = ""
        if not (target / "postgresql.conf").exists():
            # The source keeps its configuration outside the data directory (Debian's /etc/postgresql):
            # a minimal one, so the copy starts, and never the source's (its data_directory is the source).
            _write_owned(target / "postgresql.conf", (
                "# written by protectctl restore: the source's configuration lives outside its data directory\n"
                f"unix_socket_directories = {_literal(str(cluster.socket_dir))}\n").encode(), uid, gid)
            notes_conf = "minimal postgresql.conf written"
        if not (target / "pg_hba.conf").exists():
            _write_owned(target / "pg_hba.conf", b"local all all peer\n", uid, gid)
        settings = {"archive_mode": "off", "archive_command": "", "port": str(cluster.port),
                    "restore_command": restore_command(staging), "recovery_target_timeline": "latest"}
        if self.plan.mode == "time" and self.plan.target is not None:
            # explicit offset: the instant is never read in the server's zone
            settings["recovery_target_time"] = self.plan.target.astimezone(UTC).isoformat(sep=" ")
            settings["recovery_target_inclusive"] = "on"
            # PostgreSQL promotes itself at the target only after a full end-of-recovery checkpoint
            # (0.8 s at pgbench scale 50, more under load); paused there, pg_promote() promotes at
            # once and checkpoints in the background. 14+ tells a reached target ('paused') apart.
            self.fast_promote = _major_version(target) >= 14
            settings["recovery_target_action"] = "pause" if self.fast_promote else "promote"
            if self.fast_promote:
                settings["hot_standby"] = "on"  # without it, pause at the target means shut down
        auto = target / "postgresql.auto.conf"
        old = auto.read_text(encoding="utf-8") if auto.exists() else ""
        lines = _conf_lines_without(old, [*_RECOVERY_KEYS, "archive_mode", "archive_command", "archive_library",
                                          "port", "primary_conninfo", "primary_slot_name", "hot_standby"])
        lines.append(f"# protectctl restore of {self.request.source}: {self.describe_target()}; "
                     "archiving off so this copy never writes into the source's repository")
        lines += [f"{k} = {_literal(v)}" for k, v in settings.items()]
        _write_owned(auto, ("\n".join(lines) + "\n").encode(), uid, gid)
        (target / "standby.signal").unlink(missing_ok=True)
        _write_owned(target / "recovery.signal", b"", uid, gid)
        if notes_conf:
            self.request.progress.note(notes_conf)

    def _wait_promoted(self, cluster: Cluster, log_file: Path, stager: _Stager) -> None:
        """Poll (over one held connection once the server accepts them) until promoted.

        With fast promotion the server pauses at the target and this promotes it (pg_promote).
        """
        timeout_s = float(str(self.request.options.get("timeout_s") or 24 * 3600))
        started = time.monotonic()
        deadline = started + timeout_s
        delay = 0.05
        seen = False  # pg_ctl start -W returns before the postmaster writes its pid file
        pause = "pg_get_wal_replay_pause_state()" if self.fast_promote else "''"  # an error once promoted
        sql = f"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN {pause} ELSE '' END"
        session: pg.Session | None = None
        promote_requested = False
        try:
            while True:
                if stager.error is not None:
                    raise RestoreError(f"reading WAL from the repository failed: {stager.error}")
                row: list[str] | None = None
                try:
                    session = session or pg.Session(cluster)
                    row = session.query(sql)[0]
                except ProviderError:  # not accepting connections (yet), or stopped
                    if session is not None:
                        session.close()
                    session = None
                if row is not None and row[0] == "f":
                    if promote_requested:
                        self._check_target_reached(log_file)
                    return
                if self.fast_promote and session is not None and row is not None and not promote_requested:
                    # Requested early: archive recovery (no standby.signal) acts on it only where it
                    # pauses, at the target, and then at once. Asked once paused, the startup process
                    # sees it within its 1 s pause-loop sleep. _check_target_reached guards the rest.
                    session.query("SELECT pg_promote(false)")
                    promote_requested = True
                alive = row is not None or pg.running(cluster)
                seen = seen or alive
                if not alive and (seen or time.monotonic() - started > 30):
                    raise RestoreError(f"the restored cluster stopped during recovery: {_log_tail(log_file)}",
                                       hint=f"the full log is {log_file}; the restored files are left in "
                                            f"{self.target}")
                if time.monotonic() > deadline:
                    raise RestoreError(f"the restored cluster was not promoted within {timeout_s:.0f} s",
                                       hint=f"see {log_file}")
                # a held connection polls for ~1 ms; a new one (runuser, psql) costs ~50 ms
                time.sleep(0.02 if session is not None else delay)
                delay = min(delay * 1.5, 0.25)
        finally:
            if session is not None:
                session.close()

    def _check_target_reached(self, log_file: Path) -> None:
        """A promotion requested early must not have ended recovery before the target."""
        log = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
        if "recovery stopping" not in log:
            raise RestoreError("the restored cluster was promoted before recovery reached the target time",
                               hint=f"this PostgreSQL version acts on promotion during archive recovery; see "
                                    f"{log_file}; the restored files are left in {self.target}")

    def _facts(self, cluster: Cluster, log_file: Path) -> dict[str, object]:
        row = pg.query(cluster, "SELECT coalesce(pg_last_xact_replay_timestamp()::text, ''), "
                                "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0]
        last = row[0]
        last_utc = None
        if last:
            with contextlib.suppress(ValueError):
                last_utc = _utc(datetime.fromisoformat(_pg_timestamp(last)))
        log = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
        stop = re.findall(r"(recovery stopping [^\n]*)", log)
        return {"last_replayed_xact_time": last_utc, "timeline": int(row[1], 16) if row[1] else None,
                "recovery_stop": stop[-1].strip() if stop else None}

    def _reset_recovery_settings(self, cluster: Cluster, uid: int, gid: int) -> None:
        auto = self.target / "postgresql.auto.conf"
        lines = _conf_lines_without(auto.read_text(encoding="utf-8"), _RECOVERY_KEYS)
        _write_owned(auto, ("\n".join(lines) + "\n").encode(), uid, gid)
        pg.query(cluster, "SELECT pg_reload_conf()")


def restore_command(staging: Path) -> str:
    """The restore_command of a restored cluster: a staged file by `cp`, else the stdlib script.

    PostgreSQL runs it once per WAL file and once per probe (history files, the segment after
    the last): a Python start costs 50-100 ms each, `cp` ~2 ms. Staged files appear by rename,
    so `cp` sees all of a file or none; a name not staged yet but announced goes to the script,
    which waits for it; any other name is "no such file" (exit 1) without starting Python.
    """
    q = shlex.quote
    names = staging / walspool.NAMES
    script = (f"{q(_python_for_os_user())} -I {q(str(staging / 'wal.py'))} fetch --dir {q(str(staging))} "
              f"\"%f\" \"%p\"")
    return (f"cp {q(str(staging))}/\"%f\" \"%p\" 2>/dev/null || "
            f"{{ grep -qxF \"%f\" {q(str(names))} && {script}; }}")


def _major_version(data_dir: Path) -> int:
    try:
        return int((data_dir / "PG_VERSION").read_text(encoding="ascii").strip().split(".")[0])
    except (OSError, ValueError):
        return 0


def _pg_timestamp(text: str) -> str:
    """PostgreSQL's `2026-11-25 09:12:03.123456+00` as Python's fromisoformat reads it."""
    text = text.strip()
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return text


def _log_tail(log_file: Path, lines: int = 4) -> str:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    important = [line for line in text.splitlines() if "FATAL" in line or "PANIC" in line or "ERROR" in line]
    chosen = important[-lines:] or text.splitlines()[-lines:]
    return " | ".join(line.strip() for line in chosen)


def _data_subtree(repo: Repository, point: Point) -> BlobId:
    if point.tree is None:
        raise RestoreError(f"point {point.id} has no content")
    for node in repo.load_tree(point.tree).nodes:
        if node.name == b"data" and node.subtree is not None:
            return node.subtree
    raise RestoreError(f"point {point.id} is not a PostgreSQL base backup")


def _restore_database(request: RestoreRequest, catalog: Catalog, plan: RestorePlan, database: str,
                      as_name: str) -> RestoreOutcome:
    """One database under a new name in a running cluster, through a temporary restored cluster."""
    import tempfile
    from dataclasses import replace

    if not as_name:
        raise RestoreError("--database needs --as NAME: the database is restored under a new name")
    into = Cluster.from_spec(request.spec, port=int(str(request.options.get("into_port") or
                                                       request.spec.get("port", 5432))))
    if not pg.reachable(into):
        raise RestoreError(f"the cluster to load into ({into.socket_dir} port {into.port}) is not running")
    if pg.query(into, f"SELECT 1 FROM pg_database WHERE datname = {_literal(as_name)}"):
        raise RestoreError(f"database {as_name!r} already exists in the cluster on port {into.port}",
                           hint="choose another name with --as")
    parent = request.target if request.target is not None else into.data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".protectctl-pgdb-", dir=parent))
    uid, gid = into.ids()
    os.chown(work, uid, gid)
    temp = None
    try:
        port = free_port(into.socket_dir, into.port + 1)
        sub = replace(request, target=work / "data", options={"port": port}, overwrite=False)
        restored = _ClusterRestore(sub, catalog, plan).run()
        if request.dry_run:
            return replace(restored, notes=(*restored.notes, f"then database {database} would be loaded as {as_name}"))
        temp = Cluster.from_spec(request.spec, data_dir=work / "data", port=port)
        row = pg.query(temp, "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                             f"WHERE datname = {_literal(database)}")
        if not row:
            names = [r[0] for r in pg.query(temp, "SELECT datname FROM pg_database WHERE NOT datistemplate")]
            raise RestoreError(f"database {database!r} did not exist at that time",
                               hint=f"databases then: {', '.join(names)}")
        dump = work / "database.dump"
        pg.run(temp, [temp.bin("pg_dump"), "-Fc", "-h", str(temp.socket_dir), "-p", str(port), "-f", str(dump),
                      database])
        encoding, collate, ctype = row[0]
        pg.run(into, [into.bin("createdb"), "-h", str(into.socket_dir), "-p", str(into.port), "-T", "template0",
                      "-E", encoding, "--lc-collate", collate, "--lc-ctype", ctype, as_name])
        pg.run(into, [into.bin("pg_restore"), "-h", str(into.socket_dir), "-p", str(into.port), "-d", as_name,
                      "--no-password", str(dump)])
        details = {**restored.details, "database": database, "as": as_name, "loaded_into_port": into.port}
        notes = (*restored.notes[:2], f"database {database} loaded as {as_name} into the cluster on port "
                 f"{into.port}; the temporary cluster was removed")
        return RestoreOutcome(into.data_dir, restored.files, restored.dirs, restored.bytes_total,
                              restored.bytes_needed, restored.bytes_free, restored.verified, True, notes, details)
    finally:
        if temp is not None:
            with contextlib.suppress(ProviderError):
                if pg.running(temp):
                    pg.stop(temp, mode="immediate")
        elif not request.dry_run:
            with contextlib.suppress(ProviderError):
                leftover = Cluster.from_spec(request.spec, data_dir=work / "data")
                if (work / "data" / "postmaster.pid").exists() and pg.running(leftover):
                    pg.stop(leftover, mode="immediate")
        shutil.rmtree(work, ignore_errors=True)


def status_problems(source: str, spec: Mapping[str, object], points: Sequence[Point], state_dir: Path) -> list[str]:
    """What `status` must say of a PostgreSQL source beyond point ages: WAL gaps and drops that
    make part of the retained time unrecoverable, and drops still waiting in the spool."""
    catalog = build_catalog([p for p in points if p.source == source])
    problems = [f"point-in-time recovery gap: {g.describe()}" for g in catalog.gaps]
    problems += [f"WAL segment {d.get('name')} was dropped by the full spool ({d.get('reason')})"
                 for d in catalog.drops]
    spool = spool_dir(spec, source, state_dir)
    pending = walspool.read_drops(spool / walspool.DROPPED)
    for f in sorted(spool.glob("dropped.*.draining.jsonl")):
        pending += walspool.read_drops(f)
    if pending:
        problems.append(f"{len(pending)} WAL segment(s) dropped by the full spool {spool} since the last sync "
                        f"(first {pending[0].get('name')}): recovery has a gap until the next full")
    return problems
