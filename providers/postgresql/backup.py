"""Backups of a PostgreSQL cluster: the sync (WAL shipping) and the full (a base backup).

* full: the low-level backup API (``pg_backup_start(fast)`` in one held session), the data
  directory read by protectctl's `archive` service with the change journal (an express
  full: a file whose identity is unchanged since before the previous full began is not read
  again, and unchanged chunks of re-read files are not stored again), ``pg_backup_stop``,
  the backup label added to the tree, then the WAL the backup needs is drained from the
  spool into the same point. Point tree: ``data/`` (the data directory) and ``wal/``.
* sync: ``pg_switch_wal()``, wait for the archiver, drain the spool: each segment stored
  with its LSN range and the first/last transaction time pg_waldump finds in it.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.progress import Progress
from protectctl.provider import (
    ArchiveOptions,
    BlobId,
    Node,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotStats,
    Tree,
    archive,
    dir_node,
    file_node,
    node_name,
)
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import pair, stream
from protectctl.providers.postgresql import wal as walspool
from protectctl.providers.postgresql.cluster import Cluster
from protectctl.providers.postgresql.spool import STAGING, drain_spool, finish_drain

# Copied by pg_basebackup's rules: runtime state a restored cluster must not inherit.
_EXCLUDE = (
    "/pg_wal/*",
    "/pg_replslot/*",
    "/pg_dynshmem/*",
    "/pg_notify/*",
    "/pg_serial/*",
    "/pg_snapshots/*",
    "/pg_stat_tmp/*",
    "/pg_subtrans/*",
    "pgsql_tmp*",
    "pg_internal.init",
    "/postmaster.pid",
    "/postmaster.opts",
    "/backup_label",
    "/backup_label.old",
    "/tablespace_map",
    "/backup_manifest",
    "/recovery.signal",
    "/standby.signal",
    f"/{STAGING}",
    "/protectctl-restore.log",
)
# A file modified this close to (or after) the start of the previous full may have changed
# again within the same mtime tick after it was read (ext4's clock is jiffy-coarse): read it.
_RACY_SLACK_NS = 2_000_000_000


_FACTS_SQL = (
    "SELECT current_setting('archive_mode'), pg_is_in_recovery(), "
    "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), "
    "(SELECT system_identifier::text FROM pg_control_system()), current_setting('server_version_num')"
)


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


_DATABASES_SQL = (
    "SELECT datname, oid, CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END "
    "FROM pg_database WHERE NOT datistemplate ORDER BY datname"
)


def _databases(cluster: Cluster) -> list[dict[str, object]] | None:
    """The cluster's databases as a base backup starts (name, oid, size in bytes when this role may
    connect to it): what `protectctl ls` and `versions` of the source show. Its own session, so
    a failure here (a database dropped meanwhile) costs the listing (None), never the backup."""
    try:
        with pg.Session(cluster) as session:
            rows = session.query(_DATABASES_SQL)
    except (ProviderError, OSError):
        return None
    out: list[dict[str, object]] = []
    for row in rows:
        name, oid, size = (row + ["", "", ""])[:3]
        out.append({"name": name, "oid": int(oid), "size": int(size) if size.isdigit() else None})
    return out


def _require_archiving(facts: _Facts, what: str) -> None:
    if facts.archive_mode == "off":
        raise ProviderError(
            f"WAL archiving is off on this cluster, so {what}",
            hint="run `protectctl apply` (and restart the cluster if it says so)",
        )


def _switch_and_wait(cluster: Cluster, progress: Progress) -> tuple[dict[str, object], int]:
    """Close the current segment and wait until it is spooled: the sync's recovery horizon.

    Returns the coverage facts and the WAL segment size. One psql session for all of it:
    each new connection through runuser costs ~50 ms.
    """
    with pg.Session(cluster) as session:
        try:
            facts = _facts(session)
        except ProviderError as err:
            why = err.detail if isinstance(err, pg.SessionError) else str(err)
            progress.note(f"PostgreSQL at {pg.where(cluster)} is not reachable ({why}): shipping the spool only")
            return {}, 16 << 20
        _require_archiving(facts, "there is no WAL to ship")
        if facts.in_recovery:
            return {}, facts.segment_size
        before = datetime.now(UTC)
        segment = session.scalar("SELECT pg_walfile_name(pg_switch_wal())")
        pg.wait_archived(cluster, segment, session=session)
    seg = walspool.SegmentName.parse(segment, facts.segment_size)
    return (
        {
            "covered_until": pg.iso_utc(before),
            "covered_through_segno": seg.segno if seg else None,
            "covered_through": segment,
        },
        facts.segment_size,
    )


def ship(request: SnapshotRequest, cluster: Cluster, spool: Path) -> SnapshotOutcome:
    streamed = (
        stream.stage_streamed(cluster, spool, request.source, request.progress)
        if request.spec.get("streaming")
        else None
    )
    coverage, segment_size = streamed or _switch_and_wait(cluster, request.progress)
    shipped = drain_spool(request.sink, cluster, spool, segment_size, request.progress)
    root = request.sink.save_tree(Tree((_dir_node("wal", spool, shipped.tree),)))
    pg_extra = {**shipped.extra, **coverage}

    def finish(point_id: str | None) -> None:
        if point_id is not None:
            finish_drain(shipped)

    return SnapshotOutcome(
        tree=root,
        stats=SnapshotStats(files=shipped.nodes, bytes_total=shipped.bytes_total, bytes_read=shipped.bytes_total),
        errors=(),
        extra={"pg": pg_extra, "data_dir": str(cluster.data_dir)},
        finish=finish,
    )


def _dir_node(name: str, like: Path, subtree: BlobId) -> Node:
    return dir_node(name, os.stat(like), subtree)


# -- full ------------------------------------------------------------------------------------


class FullBackup:
    def __init__(self, request: SnapshotRequest, cluster: Cluster, spool: Path) -> None:
        self.request = request
        self.cluster = cluster
        self.spool = spool

    def _distrust_from(self) -> int:
        """Journal entries are trusted only for files last modified before the previous full began."""
        for point in reversed(self.request.sink.list_points(self.request.source)):
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
        if start is None or self.request.sink.list_points(self.request.source):
            return
        old = [
            path
            for path in walspool.spooled_files(self.spool)
            if (seg := walspool.SegmentName.parse(path.name, segment_size)) is not None and seg.segno < start.segno
        ]
        for path in old:
            path.unlink(missing_ok=True)
        if old:
            self.request.progress.note(
                f"{len(old)} WAL segment(s) spooled before the first base backup were "
                "discarded: no base backup precedes them, nothing could replay them"
            )

    def run(self) -> SnapshotOutcome:
        request, cluster = self.request, self.cluster
        distrust = self._distrust_from()
        label = f"protectctl {request.source} {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
        archived = None
        databases = _databases(cluster)
        try:
            with pg.Session(cluster) as session:
                facts = _facts(session)
                _require_archiving(facts, "a base backup could not be recovered")
                walfile = pair.walfile_sql if facts.in_recovery else (lambda lsn: f"pg_walfile_name({lsn})")
                segment_size = facts.segment_size
                start_lsn, start_wal = session.query(
                    f"SELECT lsn, {walfile('lsn')} FROM pg_backup_start({pg.literal(label)}, true) AS lsn"
                )[0]
                walk_started = time.time_ns()
                start_time = datetime.now(UTC)
                if not facts.in_recovery:
                    self._discard_unreplayable(start_wal, segment_size)
                archived = archive(
                    request,
                    ArchiveOptions(
                        root=cluster.data_dir,
                        exclude=_EXCLUDE,
                        verify_all=distrust < 0,
                        reread=_modified_since(max(distrust, 0)),
                        keep_trees=True,
                    ),
                )
                data = archived.trees.get(archived.tree)
                if facts.in_recovery and data is not None:  # a standby (pair, backupFrom: standby)
                    data = pair.control_file_last(request.sink, data, archived.trees, cluster.data_dir)
                stop_lsn, stop_wal, label64, map64 = session.query(
                    f"SELECT lsn, {walfile('lsn')}, "
                    "translate(encode(convert_to(labelfile, 'UTF8'), 'base64'), E'\\n', ''), "
                    "translate(encode(convert_to(coalesce(spcmapfile, ''), 'UTF8'), 'base64'), E'\\n', '') "
                    "FROM pg_backup_stop(false)"
                )[0]
                stop_time = datetime.now(UTC)
                if not facts.in_recovery:  # a standby does not archive: the primary's syncs ship this WAL
                    pg.wait_archived(cluster, stop_wal, session=session)
            labelfile = base64.b64decode(label64)
            spcmap = base64.b64decode(map64)
            data_tree = self._with_label(data, labelfile, spcmap)
            shipped = drain_spool(request.sink, cluster, self.spool, segment_size, request.progress)
        except BaseException:
            if archived is not None:
                archived.finish(None)
            raise
        tl_match = re.search(rb"START TIMELINE: (\d+)", labelfile)
        start_seg = walspool.SegmentName.parse(start_wal, segment_size)
        stop_seg = walspool.SegmentName.parse(stop_wal, segment_size)
        assert start_seg is not None and stop_seg is not None
        base = {
            "label": label,
            "start_lsn": pg.parse_lsn(start_lsn),
            "stop_lsn": pg.parse_lsn(stop_lsn),
            "start_wal": start_wal,
            "stop_wal": stop_wal,
            "start_segno": start_seg.segno,
            "stop_segno": stop_seg.segno,
            "timeline": int(tl_match.group(1)) if tl_match else start_seg.timeline,
            "start_time": pg.iso_utc(start_time),
            "stop_time": pg.iso_utc(stop_time),
            "walk_started_ns": walk_started,
            "system_identifier": facts.system_identifier,
            "server_version_num": facts.server_version_num,
            "backup_label": labelfile.decode(errors="replace"),
            "databases": databases,
        }
        root = request.sink.save_tree(
            Tree((_dir_node("data", cluster.data_dir, data_tree), _dir_node("wal", self.spool, shipped.tree)))
        )
        vanished = [e for e in archived.errors if e.endswith("vanished during the backup")]
        errors = tuple(e for e in archived.errors if e not in vanished)
        root_st = archived.root
        extra: dict[str, object] = {
            "pg": {
                **shipped.extra,
                "base": base,
                "covered_until": pg.iso_utc(stop_time),
                "covered_through_segno": stop_seg.segno,
                "covered_through": stop_wal,
            },
            "data_dir": str(cluster.data_dir),
            "files_read": archived.files_read,
            "files_reused": archived.files_reused,
            "vanished": len(vanished),
            "root": {
                "mode": stat.S_IMODE(root_st.st_mode),
                "uid": root_st.st_uid,
                "gid": root_st.st_gid,
                "atime_ns": root_st.st_atime_ns,
                "mtime_ns": root_st.st_mtime_ns,
            },
        }
        journal_done = archived.finish

        def finish(point_id: str | None) -> None:
            journal_done(point_id)
            if point_id is not None:
                finish_drain(shipped)

        return SnapshotOutcome(
            tree=root,
            stats=SnapshotStats(
                files=archived.files + shipped.nodes,
                dirs=archived.dirs,
                bytes_total=archived.bytes_total + shipped.bytes_total,
                bytes_read=archived.bytes_read + shipped.bytes_total,
            ),
            errors=errors,
            extra=extra,
            finish=finish,
        )

    def _with_label(self, tree: Tree | None, labelfile: bytes, spcmap: bytes) -> BlobId:
        """The data directory's tree plus backup_label (and tablespace_map): what makes it a base backup."""
        sink = self.request.sink
        nodes = list(tree.nodes) if tree is not None else []
        st = os.stat(self.cluster.data_dir / "PG_VERSION")
        for name, content in (("backup_label", labelfile), ("tablespace_map", spcmap)):
            if not content:
                continue
            nodes = [n for n in nodes if n.name != node_name(name)]
            nodes.append(
                file_node(
                    name,
                    st,
                    size=len(content),
                    chunks=sink.store_content(content),
                    content_hash=sink.hash_content(content),
                )
            )
        return sink.save_tree(Tree(tuple(sorted(nodes, key=lambda n: n.name))))


def _modified_since(distrust_from_ns: int) -> Callable[[bytes, os.stat_result], bool]:
    """Journal entries are distrusted for files modified near or after the previous full began."""
    return lambda rel, st: st.st_mtime_ns >= distrust_from_ns
