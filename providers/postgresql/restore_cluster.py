"""Restore of a whole cluster: base backup + WAL roll-forward into a data directory, started,
promoted and verified (see docs/postgresql.md).

The data directory is written by protectctl's `restore_tree` while a thread decrypts the WAL
the recovery needs into a staging directory beside it; PostgreSQL's restore_command takes
staged files by `cp` (or waits for one still being staged through the spool script).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from protectctl.errors import ProviderError, RestoreError
from protectctl.provider import (
    BlobId,
    Node,
    Point,
    PointReader,
    RestoreOutcome,
    RestoreRequest,
    restore_tree,
)
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import wal as walspool
from protectctl.providers.postgresql.catalog import Catalog, RestorePlan
from protectctl.providers.postgresql.cluster import Cluster
from protectctl.providers.postgresql.restore_config import (
    LISTEN_ADDRESS,
    TCP_TRUST_REPLACEMENT,
    RecoveryWatch,
    conf_setting,
    hba_without_tcp_trust,
    permanent_connect_error,
    recovery_timeout_s,
    server_options,
    socket_dir_problem,
)
from protectctl.providers.postgresql.spool import STAGING, python_for_os_user, spool_dir

_RECOVERY_KEYS = (
    "restore_command",
    "recovery_target_time",
    "recovery_target_action",
    "recovery_target_timeline",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_inclusive",
)


PROGRESS_EVERY_S = 10.0  # a "waiting for recovery" line this often while the restored copy recovers


def free_port(socket_dir: Path, start: int) -> int:
    """A TCP port nobody listens on (loopback) whose Unix socket name is free in `socket_dir`."""
    for port in range(start, start + 200):
        if port_user(socket_dir, port) is None:
            return port
    raise RestoreError(f"no free port found from {start}", hint="choose one with --port")


def port_user(socket_dir: Path, port: int) -> str | None:
    """Who holds `port` where a restored copy would listen (its socket in `socket_dir`, or
    127.0.0.1), said for a message; None when both are free. A socket file nobody answers on
    is a dead server's leftover, which PostgreSQL replaces: free."""
    path = socket_dir / f".s.PGSQL.{port}"
    if path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return f"a server listens on {path}"
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LISTEN_ADDRESS, port))
        except OSError:
            return f"something listens on {LISTEN_ADDRESS}:{port}"
    return None


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
class Stager:
    """Decrypts the WAL a restore needs into the staging directory while PostgreSQL replays it."""

    repo: PointReader
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
            self._trees[point_id] = {n.name.decode(): n for n in nodes}  # WAL file names are ASCII
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


class ClusterRestore:
    """Base backup + WAL roll-forward into a data directory, started, promoted, verified."""

    def __init__(
        self, request: RestoreRequest, catalog: Catalog, plan: RestorePlan, points: Sequence[Point] | None = None
    ) -> None:
        self.request = request
        self.catalog = catalog
        self.plan = plan
        self.repo = _repository(request)
        self.points = {p.id: p for p in (points or request.points)}
        self.source = Cluster.from_spec(request.spec)
        self.target = request.target if request.target is not None else self.source.data_dir
        self.in_place = self.target.absolute() == self.source.data_dir.absolute()
        self.fast_promote = False  # paused at the target, then pg_promote() (see _write_config)
        self.config_notes: list[str] = []  # what _write_config changed beyond the recovery settings
        self.hba_changed: tuple[int, ...] = ()

    def _port(self) -> int:
        """The port the copy listens on (its socket in socketDir, and 127.0.0.1), refused when taken."""
        socket_dir = self.source.socket_dir
        problem = socket_dir_problem(str(socket_dir))
        if problem is not None:
            raise RestoreError(f"socketDir {socket_dir} cannot be given to the restored server: {problem}")
        if not self.request.dry_run and not socket_dir.is_dir():
            raise RestoreError(
                f"socketDir {socket_dir} does not exist: the restored server could not listen there",
                hint="create it (owned by osUser), or set socketDir to where PostgreSQL's sockets live on this host",
            )
        given = self.request.options.get("port")
        if not given and not self.in_place:
            return free_port(socket_dir, self.source.port + 1)
        port = int(str(given)) if given else self.source.port
        holder = None if self.request.dry_run else port_user(socket_dir, port)
        if holder is not None:
            raise RestoreError(
                f"port {port} is in use ({holder}): the restored server cannot listen on it",
                hint="choose another with --port" + ("" if given else ", or stop what holds it"),
            )
        return port

    def describe_target(self) -> str:
        plan = self.plan
        if plan.mode == "time":
            return f"recovery to {pg.show_time(plan.target)} (UTC)"
        if plan.mode == "end":
            return f"recovery to {pg.show_time(plan.target)} (UTC): {plan.note}"
        return "recovery to the end of all WAL (latest)"

    def run(self) -> RestoreOutcome:
        request, plan = self.request, self.plan
        if self.in_place and not request.dry_run and pg.running(self.source):
            raise RestoreError(
                f"the source cluster is running in {self.target}",
                hint="stop it first, or restore elsewhere with --target",
            )
        port = self._port()
        cluster = Cluster.from_spec(request.spec, data_dir=self.target, port=port)
        local = self._source_wal() if plan.mode == "latest" else []
        base_point = self.points[plan.base.point_id]
        notes = [
            f"base backup {base_point.id[:12]} consistent at {pg.show_time(plan.base.stop_time)}, "
            f"{len(plan.files)} WAL file(s) from the repository"
            + (f" + {len(local)} still on the source host" if local else ""),
            self.describe_target(),
        ]
        details: dict[str, object] = {
            "base_point": base_point.id,
            "base_consistent_at": pg.iso_utc(plan.base.stop_time),
            "mode": plan.mode,
            "target_time": pg.iso_utc(plan.target) if plan.target else None,
            "port": port,
            "wal_files": len(plan.files),
            "wal_files_from_source": len(local),
        }
        data = _data_subtree(self.repo, base_point)
        root = base_point.extra.get("root")
        root_meta = root if isinstance(root, Mapping) else None
        if request.dry_run:
            outcome = restore_tree(
                request.reader,
                data,
                self.target,
                dry_run=True,
                overwrite=request.overwrite,
                root_meta=root_meta,
                progress=request.progress,
            )
            return RestoreOutcome(
                self.target,
                outcome.files,
                outcome.dirs,
                outcome.bytes_total,
                outcome.bytes_needed,
                outcome.bytes_free,
                0,
                False,
                tuple(notes),
                details,
            )
        uid, gid = cluster.ids()
        # The WAL is decrypted while the data directory is written (the tree restore mostly waits
        # on the disk), beside the target rather than in it: PostgreSQL fsyncs all of its data
        # directory before recovery, and would flush the staged WAL too.
        staging = self._prepare_staging(local, uid, gid)
        stager = Stager(self.repo, self.points, plan.files, local, staging, uid, gid)
        stager.start()
        try:
            outcome = restore_tree(
                request.reader,
                data,
                self.target,
                overwrite=request.overwrite,
                root_meta=root_meta,
                progress=request.progress,
                writeback=True,
            )
            _chown_tree(self.target, uid, gid)
            os.chmod(self.target, 0o700)
            self._write_config(cluster, staging, uid, gid)
        except BaseException:
            stager.cancel()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log_file = self.target / "protectctl-restore.log"
        request.progress.note(
            f"starting PostgreSQL on port {port} (socket {cluster.socket_dir}, "
            f"{LISTEN_ADDRESS}) for {self.describe_target()}"
        )
        options = server_options(
            port=port, socket_dir=cluster.socket_dir, hba_file=None if self.in_place else self.target / "pg_hba.conf"
        )
        try:
            pg.start(cluster, log_file, server_options=options)
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
        notes.append(
            f"promoted on timeline {details.get('timeline')}; last transaction replayed: "
            f"{details.get('last_replayed_xact_time') or 'none'}"
            + (f" ({details['recovery_stop']})" if details.get("recovery_stop") else "")
        )
        notes.append(
            f"running on port {port} (socket {cluster.socket_dir}, {LISTEN_ADDRESS}); archive_mode is off "
            "there, so it never writes into the source's repository"
        )
        notes.extend(self.config_notes)
        details.update(
            {
                "socket_dir": str(cluster.socket_dir),
                "listen_addresses": LISTEN_ADDRESS,
                "hba_trust_rewritten": len(self.hba_changed),
            }
        )
        return RestoreOutcome(
            self.target,
            outcome.files,
            outcome.dirs,
            outcome.bytes_total,
            outcome.bytes_needed,
            outcome.bytes_free,
            outcome.verified,
            True,
            tuple(notes),
            details,
        )

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
            _write_owned(
                target / "postgresql.conf",
                (
                    "# written by protectctl restore: the source's configuration lives outside its data directory\n"
                    f"unix_socket_directories = {pg.literal(str(cluster.socket_dir))}\n"
                ).encode(),
                uid,
                gid,
            )
            notes_conf = "minimal postgresql.conf written"
        # The server's command line (server_options) decides where this start listens; for a copy the
        # same in postgresql.auto.conf (read after postgresql.conf) keeps a later plain `pg_ctl start`
        # there too. Restored in place, the cluster is the source again: its files keep its choices.
        listen = (
            {}
            if self.in_place
            else {"listen_addresses": LISTEN_ADDRESS, "unix_socket_directories": str(cluster.socket_dir)}
        )
        if self.in_place:
            self.config_notes.append(
                "restored in place: pg_hba.conf and the listen settings in its files are the "
                f"source's; it listens on {LISTEN_ADDRESS} and {cluster.socket_dir} only until "
                "its next restart"
            )
            if not (target / "pg_hba.conf").exists():
                _write_owned(target / "pg_hba.conf", b"local all all peer\n", uid, gid)
        else:
            self._write_hba(uid, gid)
        settings = {
            "archive_mode": "off",
            "archive_command": "",
            "port": str(cluster.port),
            **listen,
            "restore_command": restore_command(staging),
            "recovery_target_timeline": "latest",
        }
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
        lines = _conf_lines_without(
            old,
            [
                *_RECOVERY_KEYS,
                "archive_mode",
                "archive_command",
                "archive_library",
                "port",
                "primary_conninfo",
                "primary_slot_name",
                "hot_standby",
                *listen,
            ],
        )
        lines.append(
            f"# protectctl restore of {self.request.source}: {self.describe_target()}; "
            "archiving off so this copy never writes into the source's repository"
        )
        lines += [f"{k} = {pg.literal(v)}" for k, v in settings.items()]
        _write_owned(auto, ("\n".join(lines) + "\n").encode(), uid, gid)
        (target / "standby.signal").unlink(missing_ok=True)
        _write_owned(target / "recovery.signal", b"", uid, gid)
        if notes_conf:
            self.request.progress.note(notes_conf)

    def _write_hba(self, uid: int, gid: int) -> None:
        """The copy's own pg_hba.conf (the server is started with hba_file pointing at it): the
        restored one, else the file the copied configuration names (read if it is on this host),
        else `local all all peer`; in every case without `trust` for TCP (restore_config)."""
        target = self.target
        hba = target / "pg_hba.conf"
        confs = [
            (target / n).read_text(encoding="utf-8", errors="replace")
            for n in ("postgresql.conf", "postgresql.auto.conf")
            if (target / n).exists()
        ]
        named = conf_setting(confs, "hba_file")
        origin = "the restored pg_hba.conf"
        if hba.exists():
            text = hba.read_text(encoding="utf-8", errors="surrogateescape")
        elif named and Path(named).is_file():
            text = Path(named).read_text(encoding="utf-8", errors="surrogateescape")
            origin = f"a copy of {named} (the source's hba_file)"
        else:
            text = "local all all peer\n"
            origin = "a minimal pg_hba.conf (local all all peer)"
        rewrite = hba_without_tcp_trust(text)
        _write_owned(hba, rewrite.text.encode("utf-8", errors="surrogateescape"), uid, gid)
        self.hba_changed = rewrite.changed
        said = f"authentication: {origin}"
        if rewrite.changed:
            said += (
                f", with `trust` for TCP made {TCP_TRUST_REPLACEMENT} on line(s) "
                f"{', '.join(map(str, rewrite.changed))} (the copy listens on {LISTEN_ADDRESS})"
            )
        if rewrite.includes:
            said += (
                f"; its include directive(s) on line(s) {', '.join(map(str, rewrite.includes))} are read as "
                "they are: check them for `trust`"
            )
        if named and named != str(hba):
            said += f"; the copied configuration names hba_file {named}, overridden on the server's command line"
        self.config_notes.append(said)

    def _wait_promoted(self, cluster: Cluster, log_file: Path, stager: Stager) -> None:
        """Poll (over one held connection once the server accepts them) until promoted.

        With fast promotion the server pauses at the target and this promotes it (pg_promote).
        The wait is bounded by recoveryTimeout without progress (restore_config.RecoveryWatch),
        says how far recovery went every PROGRESS_EVERY_S, and stops at once on a connection
        error waiting cannot fix (a missing role, authentication), in the server's words.
        """
        timeout_s = recovery_timeout_s(self.request.spec, self.request.options)
        started = time.monotonic()
        watch = RecoveryWatch(timeout_s, started)
        log = _LogFollower(log_file)
        report_at = started + PROGRESS_EVERY_S
        delay = 0.05
        seen = False  # pg_ctl start -W returns before the postmaster writes its pid file
        pause = "pg_get_wal_replay_pause_state()" if self.fast_promote else "''"  # an error once promoted
        sql = (
            f"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN {pause} ELSE '' END, "
            "coalesce(pg_last_wal_replay_lsn()::text, ''), coalesce(pg_last_xact_replay_timestamp()::text, '')"
        )
        session: pg.Session | None = None
        promote_requested = False
        connect_problem = ""
        try:
            while True:
                if stager.error is not None:
                    raise RestoreError(f"reading WAL from the repository failed: {stager.error}")
                row: list[str] | None = None
                try:
                    session = session or pg.Session(cluster)
                    row = session.query(sql)[0]
                except pg.SessionError as err:  # not accepting connections (yet), stopped, or refused
                    if session is not None:
                        session.close()
                    session = None
                    connect_problem = err.detail
                    if permanent_connect_error(err.detail):
                        raise RestoreError(
                            f"the restored cluster runs but protectctl cannot connect to it ({pg.where(cluster)}): "
                            f"{err.detail}",
                            hint="check `user:` (the role protectctl connects as, which must exist "
                            f"at the time restored) and {self.target / 'pg_hba.conf'}; the server log is "
                            f"{log_file}",
                        ) from None
                now = time.monotonic()
                watch.observe(
                    now,
                    lsn=row[2] if row else None,
                    xact_time=row[3] if row else None,
                    log_text=log.read_new(),
                    staged=stager.staged,
                )
                if now >= report_at:
                    self.request.progress.note(f"waiting for recovery ({watch.describe()}; {now - started:.0f} s)")
                    report_at = now + PROGRESS_EVERY_S
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
                if not alive and (seen or now - started > 30):
                    raise RestoreError(
                        f"the restored cluster stopped during recovery: {_log_tail(log_file)}",
                        hint=f"the full log is {log_file}; the restored files are left in {self.target}",
                    )
                if watch.stalled(now):
                    reach = f"; connecting says: {connect_problem}" if row is None and connect_problem else ""
                    if row is None and watch.stage == "ready":
                        reach = f"; its log says it accepts connections, but not at {pg.where(cluster)}" + reach
                    raise RestoreError(
                        f"the restored cluster made no recovery progress for {_seconds(timeout_s)} "
                        f"({watch.describe()}){reach}; end of its log: {_log_tail(log_file, 6, plain=True)}",
                        hint=f"the full log is {log_file}; if recovery is only slow, raise recoveryTimeout "
                        f"(now {_seconds(timeout_s)}); the restored files are left in {self.target}",
                    )
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
            raise RestoreError(
                "the restored cluster was promoted before recovery reached the target time",
                hint=f"this PostgreSQL version acts on promotion during archive recovery; see "
                f"{log_file}; the restored files are left in {self.target}",
            )

    def _facts(self, cluster: Cluster, log_file: Path) -> dict[str, object]:
        row = pg.query(
            cluster,
            "SELECT coalesce(pg_last_xact_replay_timestamp()::text, ''), "
            "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        )[0]
        last = row[0]
        last_utc = None
        if last:
            with contextlib.suppress(ValueError):
                last_utc = pg.iso_utc(datetime.fromisoformat(_pg_timestamp(last)))
        log = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
        stop = re.findall(r"(recovery stopping [^\n]*)", log)
        return {
            "last_replayed_xact_time": last_utc,
            "timeline": int(row[1], 16) if row[1] else None,
            "recovery_stop": stop[-1].strip() if stop else None,
        }

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
    script = f'{q(python_for_os_user())} -I {q(str(staging / "wal.py"))} fetch --dir {q(str(staging))} "%f" "%p"'
    return f'cp {q(str(staging))}/"%f" "%p" 2>/dev/null || {{ grep -qxF "%f" {q(str(names))} && {script}; }}'


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


def _log_tail(log_file: Path, lines: int = 4, *, plain: bool = False) -> str:
    """The log's last FATAL/PANIC/ERROR lines (`plain`: its last lines), without the noise of
    protectctl's own connection attempts to a server still starting."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [
        line
        for line in text.splitlines()
        if line.strip()
        and not (
            ("FATAL" in line and not permanent_connect_error(_fatal_part(line))) and "the database system is" in line
        )
    ]
    important = [line for line in kept if "FATAL" in line or "PANIC" in line or "ERROR" in line]
    chosen = (kept if plain else important or kept)[-lines:]
    return " | ".join(line.strip() for line in chosen) or "(empty)"


def _fatal_part(line: str) -> str:
    found = re.search(r"FATAL:\s+(.*)", line)
    return f"FATAL: {found.group(1)}" if found else line


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


class _LogFollower:
    """The server log's new text at each call (it is only appended to)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> str:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(1 << 20)
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


def _data_subtree(repo: PointReader, point: Point) -> BlobId:
    if point.tree is None:
        raise RestoreError(f"point {point.id} has no content")
    for node in repo.load_tree(point.tree).nodes:
        if node.name == b"data" and node.subtree is not None:
            return node.subtree
    raise RestoreError(f"point {point.id} is not a PostgreSQL base backup")


def check_readable(request: RestoreRequest) -> None:
    """Refuse a restore whose point was read back from tape (base backup and WAL live on disk)."""
    _repository(request)


def _repository(request: RestoreRequest) -> PointReader:
    if request.from_tape:
        raise RestoreError(
            "a PostgreSQL restore reads base backup and WAL from the disk repository",
            hint="restoring PostgreSQL from tape is not supported yet",
        )
    return request.reader
