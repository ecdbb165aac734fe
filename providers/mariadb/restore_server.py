"""Restore of a whole server: a full backup + binlog roll-forward into a new server, started.

TARGET holds everything of the restored server: ``data/`` (its datadir), ``my.cnf`` (the
only option file it reads), ``mysqld.sock``, ``mysqld.pid`` and ``mysqld.err``. Steps:

1. the stored mbstream parts are decrypted and piped into ``mbstream -x`` (each part checked
   against its hash), while the binlogs the recovery needs are decrypted into ``binlogs/``;
2. ``mariadb-backup --prepare`` makes the data consistent at the backup's binlog position;
3. mariadbd starts on ``--port`` (bound to 127.0.0.1) with its socket in TARGET, binary
   logging off, replication threads not started;
4. ``mariadb-binlog`` from the backup's position, through every binlog of the window, stopped
   before the first transaction of T's second (``--stop-position``, transaction-aligned) or
   not at all (latest: the binlogs still on the source host follow the shipped ones), is
   piped into the ``mariadb`` client of the new server.

The source's data directory is never the target, and the source server is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from protectctl.errors import ProviderError, RestoreError
from protectctl.provider import Node, Point, PointReader, RestoreOutcome, RestoreRequest
from protectctl.providers.mariadb import binlog as bl
from protectctl.providers.mariadb import server as my
from protectctl.providers.mariadb.catalog import Binlog, Catalog, RestorePlan, state_map, takes_over
from protectctl.providers.mariadb.server import Server

_SOCKET_MAX = 107  # sun_path


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(start: int = 3307) -> int:
    for port in range(start, start + 500):
        if not port_in_use(port):
            return port
    raise RestoreError(f"no free port found from {start}", hint="choose one with --port")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_target(target: Path | None, source: Server, *, overwrite: bool) -> Path:
    """The target directory of a new server; RestoreError when it is missing, the source's, or not empty."""
    if target is None:
        raise RestoreError(
            "a MariaDB restore starts a new server in a directory of its own: give --target DIR",
            hint="the source's data directory is never overwritten",
        )
    target = Path(os.path.abspath(target))
    data = Path(os.path.abspath(source.data_dir))
    if _inside(target, data) or _inside(data, target):
        raise RestoreError(
            f"{target} holds or is inside the source's data directory {data}",
            hint="restore into a directory of its own with --target",
        )
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise RestoreError(f"{target} exists and is not empty", hint="choose an empty or new directory")
    if len(str(target / "mysqld.sock")) > _SOCKET_MAX:
        raise RestoreError(
            f"{target}/mysqld.sock is longer than a Unix socket path may be ({_SOCKET_MAX})",
            hint="choose a shorter --target",
        )
    return target


def _write_owned(path: Path, data: bytes, uid: int, gid: int, mode: int = 0o640) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        os.fchown(out.fileno(), uid, gid)
    os.replace(tmp, path)


def _mkdir_owned(path: Path, uid: int, gid: int, mode: int = 0o750) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def subtree(reader: PointReader, point: Point, name: bytes) -> dict[str, Node]:
    if point.tree is None:
        raise RestoreError(f"point {point.id} has no content")
    for node in reader.load_tree(point.tree).nodes:
        if node.name == name and node.subtree is not None:
            return {n.name.decode(): n for n in reader.load_tree(node.subtree).nodes}
    return {}


def read_verified(reader: PointReader, node: Node, what: str) -> bytes:
    data = b"".join(reader.load_blob(c) for c in node.chunks)
    hasher = reader.content_hasher()
    hasher.update(data)
    if node.content_hash is not None and hasher.digest() != node.content_hash:
        raise RestoreError(f"{what} does not match its stored hash")
    return data


@dataclass(frozen=True, slots=True)
class Staged:
    path: Path
    facts: bl.BinlogFacts
    local: bool  # still on the source host, not in the repository
    start: int | None = None  # replay of a new run starts here (the full's position, or after a failover)


def first_after(facts: bl.BinlogFacts, state: Sequence[str]) -> int | None:
    """The offset of the first transaction of `facts` beyond GTID `state` (per domain)."""
    have = state_map(state)
    for t in facts.transactions:
        domain, seqno = t.gtid.partition("-")[0], t.gtid.rpartition("-")[2]
        if int(seqno) > have.get(int(domain), 0):
            return t.offset
    return None


def local_binlogs(directory: Path, after: Binlog | None) -> list[tuple[Path, bl.BinlogFacts, int | None]]:
    """The binlogs on the source host that continue the shipped chain after `after` (the same
    server's next files, or after a failover the files of this one that hold what came next),
    each cut to its whole events (a server killed mid-write leaves a torn last one)."""
    if after is None or not directory.is_dir():
        return []
    candidates: list[tuple[Path, Binlog, bl.BinlogFacts]] = []
    for path in directory.iterdir():
        seq = bl.sequence(path.name)
        if seq is None or not path.is_file():
            continue
        try:
            with path.open("rb") as handle:
                facts = bl.read_facts(handle.read())
        except (OSError, ValueError):
            continue
        here = Binlog(
            "local", path.name, seq, facts.created, None, None, facts.start_state, facts.last_gtids, facts.size, ""
        )
        candidates.append((path, here, facts))
    candidates.sort(key=lambda c: c[1].seq)
    found: list[tuple[Path, bl.BinlogFacts, int | None]] = []
    prev = after
    stem = after.name.rpartition(".")[0]
    for path, here, facts in candidates:
        if found:
            if here.seq != prev.seq + 1 or set(here.start_state) != set(prev.end_state):
                break
            found.append((path, facts, None))
        elif (
            here.name.rpartition(".")[0] == stem
            and here.seq == after.seq + 1
            and set(here.start_state) == set(after.end_state)
        ):
            found.append((path, facts, None))  # the same server's next file
        elif takes_over(after.end_state, here):
            found.append((path, facts, first_after(facts, after.end_state)))  # after a failover
        else:
            continue
        prev = here
    return found


class ServerRestore:
    """A full backup + binlogs into a new server in `request.target`, started, rolled forward."""

    def __init__(self, request: RestoreRequest, catalog: Catalog, plan: RestorePlan) -> None:
        self.request = request
        self.catalog = catalog
        self.plan = plan
        if request.from_tape:
            raise RestoreError(
                "a MariaDB restore reads its full backup and binlogs from the disk repository",
                hint="restoring MariaDB from tape is not supported yet",
            )
        self.reader = request.reader
        self.points = {p.id: p for p in request.points}
        self.source = Server.from_spec(request.spec)
        self.target = check_target(request.target, self.source, overwrite=request.overwrite)
        self.server = Server.from_spec(request.spec, data_dir=self.target / "data", socket=self.target / "mysqld.sock")

    def _port(self) -> int:
        """The TCP port to listen on; 0: none (`socket_only`, the temporary server of a renamed
        database restore: reached through its socket, so no port can be taken by anyone else)."""
        if self.request.options.get("socket_only"):
            return 0
        given = self.request.options.get("port")
        if given:
            port = int(str(given))
            if not self.request.dry_run and port_in_use(port):
                raise RestoreError(f"port {port} is in use on 127.0.0.1", hint="choose another with --port")
            return port
        return free_port()

    def describe_target(self) -> str:
        plan = self.plan
        if plan.mode == "time":
            return f"roll-forward to {my.show_time(plan.target)} (transactions of earlier seconds)"
        if plan.mode == "end":
            return f"roll-forward to {my.show_time(plan.target)}: {plan.note}"
        if plan.mode == "gtid":
            return f"roll-forward through GTID {plan.gtid} (the transactions after it are not replayed)"
        return "roll-forward to the end of every binlog (latest)"

    def run(self) -> RestoreOutcome:
        request, plan = self.request, self.plan
        port = self._port()
        base_point = self.points[plan.base.point_id]
        base_facts = _mapping(_mapping(base_point.extra.get("mariadb")).get("base"))
        local = self._local() if plan.mode == "latest" else []
        notes = [
            f"full {base_point.id[:12]} consistent at {my.show_time(plan.base.consistent_at)}, "
            f"{len(plan.files)} binlog(s) from the repository"
            + (f" + {len(local)} still on the source host" if local else ""),
            self.describe_target(),
        ]
        details: dict[str, object] = {
            "base_point": base_point.id,
            "base_consistent_at": my.iso_utc(plan.base.consistent_at),
            "mode": plan.mode,
            "target_time": my.iso_utc(plan.target) if plan.target else None,
            "target_gtid": plan.gtid,
            "port": port,
            "binlogs": len(plan.files),
            "binlogs_from_source": len(local),
            "socket": str(self.server.socket),
            "data_dir": str(self.server.data_dir),
        }
        chain = [self.points.get(p) for p in plan.base.parts]
        if any(p is None for p in chain):
            missing = next(p for p in plan.base.parts if p not in self.points)
            raise RestoreError(
                f"express full {base_point.id[:12]} needs full {missing[:12]}, which is not in the repository"
            )
        size = sum(
            int(str(_mapping(_mapping(p.extra.get("mariadb")).get("base")).get("stream_bytes") or 0))
            for p in chain
            if p is not None
        )
        if plan.base.express:
            notes.insert(
                1, f"express full: applies {len(plan.base.parts) - 1} delta(s) on full {plan.base.parts[0][:12]}"
            )
            details["express_chain"] = list(plan.base.parts)
        if request.dry_run:
            return RestoreOutcome(self.target, 0, 0, size, size, _free(self.target), 0, False, tuple(notes), details)
        uid, gid = self.server.ids()
        _mkdir_owned(self.target, uid, gid)
        _mkdir_owned(self.server.data_dir, uid, gid)
        staging = self.target / "binlogs"
        _mkdir_owned(staging, uid, gid)
        staged = self._stage_binlogs(staging, local, uid, gid)
        if plan.mode == "gtid" and plan.gtid is not None:
            try:
                gtid_cut(staged, self._starts(staged), plan.gtid)  # refused before the long steps
            except RestoreError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        files = self._extract(self.points[plan.base.parts[0]], self.server.data_dir, uid, gid)
        request.progress.note("mariadb-backup --prepare")
        prepare = [
            self.server.bin("mariadb-backup"),
            "--no-defaults",
            "--prepare",
            f"--target-dir={self.server.data_dir}",
        ]
        my.run(self.server, prepare, timeout_s=24 * 3600)
        for k, point_id in enumerate(plan.base.parts[1:], 1):  # an express full: each delta in order
            delta = self.target / f"delta-{k}"
            _mkdir_owned(delta, uid, gid)
            self._extract(self.points[point_id], delta, uid, gid)
            request.progress.note(f"mariadb-backup --prepare --incremental-dir (express full {point_id[:12]})")
            my.run(self.server, [*prepare, f"--incremental-dir={delta}"], timeout_s=24 * 3600)
            shutil.rmtree(delta, ignore_errors=True)
        self._write_config(port, base_facts, uid, gid)
        log_file = self.target / "mysqld.err"
        request.progress.note(f"starting mariadbd on {f'127.0.0.1:{port}' if port else self.server.socket}")
        proc = my.start_detached(self.server, self.target / "my.cnf", self.target / "mysqld.out")
        try:
            with my.client(self.server) as c:
                my.wait_ready(self.server, proc, c, log_file)
                replayed = self._replay(c, staged)
        except BaseException:
            my.stop_pid(self.target / "mysqld.pid")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        details.update(replayed)
        notes.append(
            f"last transaction replayed: {replayed.get('last_replayed_gtid') or 'none'}"
            + (f" at {replayed['last_replayed_time']}" if replayed.get("last_replayed_time") else "")
        )
        notes.append(
            f"running on {f'127.0.0.1:{port}, socket ' if port else 'socket '}{self.server.socket} "
            "(binary logging off): connect with "
            f"`mariadb -S {self.server.socket}`; stop with `kill $(cat {self.target}/mysqld.pid)`, start "
            f"again with `mariadbd --defaults-file={self.target}/my.cnf`"
        )
        return RestoreOutcome(self.target, files, 1, size, size, _free(self.target), files, True, tuple(notes), details)

    # -- steps ---------------------------------------------------------------------------

    def _local(self) -> list[tuple[Path, bl.BinlogFacts, int | None]]:
        if self.request.options.get("source_host_reachable") is False:
            return []
        chain = self.plan.window.chain
        directory = self._binlog_dir()
        return local_binlogs(directory, chain[-1].binlog) if directory is not None and chain else []

    def _binlog_dir(self) -> Path | None:
        """Where the source keeps its binlogs: asked of it (in a pair, the server chosen now), else
        as the newest point recorded it (a server that crashed)."""
        try:
            with my.client(self.source) as c:
                basename = c.variables("log_bin_basename")["log_bin_basename"]
            if basename and basename != "NULL":
                return Path(basename).parent
        except ProviderError:
            pass
        for point in sorted(self.points.values(), key=lambda p: p.time, reverse=True):
            basename = _mapping(point.extra.get("mariadb")).get("binlog_basename")
            if isinstance(basename, str) and basename:
                return Path(basename).parent
        return self.source.data_dir

    def _stage_binlogs(
        self, staging: Path, local: Sequence[tuple[Path, bl.BinlogFacts, int | None]], uid: int, gid: int
    ) -> list[Staged]:
        """Decrypt the window's binlogs (and copy those still on the source) into `staging`,
        numbered in replay order: two servers of a pair may use the same file names."""
        staged: list[Staged] = []
        trees: dict[str, dict[str, Node]] = {}
        for link in self.plan.files:
            f = link.binlog
            if f.point_id not in trees:
                trees[f.point_id] = subtree(self.reader, self.points[f.point_id], b"binlog")
            node = trees[f.point_id].get(f.name)
            if node is None:
                raise RestoreError(f"binlog {f.name} is not in point {f.point_id} although its catalog lists it")
            data = read_verified(self.reader, node, f"binlog {f.name} of point {f.point_id[:12]}")
            path = staging / f"{len(staged):04d}.{f.name}"
            _write_owned(path, data, uid, gid)
            facts = bl.read_facts(data)
            start = (
                self.plan.base.binlog_pos
                if not staged
                else (first_after(facts, link.after) if link.after is not None else None)
            )
            if staged and link.after is not None and start is None:
                continue  # another server's file with nothing beyond what is replayed already
            staged.append(Staged(path, facts, False, start))
        for source_path, facts, start in local:
            with source_path.open("rb") as handle:
                data = handle.read(facts.valid_end)
            path = staging / f"{len(staged):04d}.{source_path.name}"
            _write_owned(path, data, uid, gid)
            staged.append(Staged(path, bl.read_facts(data), True, start))
        return staged

    def _extract(self, point: Point, into: Path, uid: int, gid: int) -> int:
        parts = subtree(self.reader, point, b"base")
        if not parts:
            raise RestoreError(f"point {point.id} is not a MariaDB full backup")
        argv = my.as_user(self.server, [self.server.bin("mbstream"), "-x", "-C", str(into)])
        self.request.progress.note(f"extracting {len(parts)} part(s) of the backup stream")
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
        assert proc.stdin is not None and proc.stderr is not None
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
        drain.start()
        try:
            _write_parts(self.reader, [parts[name] for name in sorted(parts)], proc.stdin, point.id)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
        drain.join()
        if status != 0:
            text = b"".join(errors).decode(errors="replace")
            raise ProviderError(f"mbstream -x failed (exit {status}): {my.tail(text)}")
        return sum(len(files) for _, _, files in os.walk(into))

    def _write_config(self, port: int, base: Mapping[str, object], uid: int, gid: int) -> None:
        page = base.get("page_size")
        server_id = int(str(base.get("server_id") or 1)) + 1000
        lines = [
            "# written by protectctl restore: the only option file this server reads",
            "[mariadbd]",
            f"datadir={self.server.data_dir}",
            f"socket={self.server.socket}",
            *([f"port={port}", "bind-address=127.0.0.1"] if port else ["skip-networking"]),
            f"pid-file={self.target / 'mysqld.pid'}",
            f"log-error={self.target / 'mysqld.err'}",
            f"server-id={server_id}",
            "skip-slave-start",
            *([f"innodb_page_size={page}"] if isinstance(page, int) else []),
            "",
            "[client]",
            f"socket={self.server.socket}",
            "",
        ]
        _write_owned(self.target / "my.cnf", "\n".join(lines).encode(), uid, gid, 0o640)

    def _starts(self, files: Sequence[Staged]) -> list[int]:
        return [
            s.start if s.start is not None else (self.plan.base.binlog_pos if i == 0 else 0)
            for i, s in enumerate(files)
        ]

    def _replay(self, c: my.Client, staged: Sequence[Staged]) -> dict[str, object]:
        plan = self.plan
        files = list(staged)
        starts = self._starts(files)
        stop = None
        if plan.mode == "gtid" and plan.gtid is not None:
            count, stop = gtid_cut(files, starts, plan.gtid)
            files = files[:count]
        if not files:
            return {"last_replayed_gtid": plan.base.gtid or None, "last_replayed_time": None}
        if plan.mode == "time" and plan.stop_before is not None:
            for i, s in enumerate(files):
                offset = bl.stop_offset(s.facts, plan.stop_before, start=starts[i])
                if offset is not None:
                    files, stop = files[: i + 1], offset
                    break
        last = _last_applied(files, starts, stop)
        runs = _runs(files, starts)
        self.request.progress.note(
            f"replaying {len(files)} binlog(s)" + (f" up to {files[-1].path.name}:{stop}" if stop is not None else "")
        )
        for k, (start, run) in enumerate(runs):
            self._replay_run(c, start, run, stop if k == len(runs) - 1 else None)
        return {
            "last_replayed_gtid": last[0] if last else (plan.base.gtid or None),
            "last_replayed_time": datetime.fromtimestamp(last[1], UTC).isoformat() if last else None,
            "stop_position": f"{files[-1].path.name}:{stop}" if stop is not None else None,
            "replay_runs": len(runs),
        }

    def _replay_run(self, c: my.Client, start: int, files: Sequence[Staged], stop: int | None) -> None:
        """One mariadb-binlog over consecutive files of one server, piped into the new server."""
        argv = [
            self.server.bin("mariadb-binlog"),
            "--no-defaults",
            f"--start-position={start}",
            *([f"--stop-position={stop}"] if stop is not None else []),
            *(str(s.path) for s in files),
        ]
        dump = subprocess.Popen(
            my.as_user(self.server, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd="/",
            env={**os.environ, "TZ": "UTC"},
        )
        apply_argv = my.as_user(self.server, c.argv("--binary-mode", "--batch"))
        load = subprocess.run(apply_argv, stdin=dump.stdout, capture_output=True, check=False, cwd="/")
        assert dump.stdout is not None and dump.stderr is not None
        dump.stdout.close()
        dump_err = dump.stderr.read().decode(errors="replace")
        dump_status = dump.wait()
        if dump_status != 0:
            raise ProviderError(f"mariadb-binlog failed (exit {dump_status}): {my.tail(dump_err)}")
        if load.returncode != 0:
            raise ProviderError(f"replaying the binlogs failed: {my.tail(load.stderr.decode(errors='replace'))}")


_PREFETCH = 16  # chunks (~1 MiB each) decrypted ahead of the pipe, by as many as _LOADERS threads
_LOADERS = 4


def _write_parts(reader: PointReader, parts: Sequence[Node], out: IO[bytes], point_id: str) -> None:
    """The stream parts' chunks, decrypted and decompressed by a few threads ahead of the pipe
    (zstd and AES release the GIL; mbstream writes the files meanwhile), each part checked
    against its stored hash once it is through."""
    from concurrent.futures import Future, ThreadPoolExecutor

    chunks = [(i, c) for i, part in enumerate(parts) for c in part.chunks]
    hashers = [reader.content_hasher() for _ in parts]
    load = getattr(reader, "load_blob_unchecked", reader.load_blob)  # the part's hash is checked instead
    pending: deque[tuple[int, Future[bytes]]] = deque()
    with ThreadPoolExecutor(_LOADERS, thread_name_prefix="mbstream-load") as pool:
        feed = iter(chunks)
        for i, chunk in feed:
            pending.append((i, pool.submit(load, chunk)))
            if len(pending) >= _PREFETCH:
                break
        while pending:
            i, future = pending.popleft()
            data = future.result()
            hashers[i].update(data)
            out.write(data)
            following = next(feed, None)
            if following is not None:
                pending.append((following[0], pool.submit(load, following[1])))
    for i, part in enumerate(parts):
        if part.content_hash is not None and hashers[i].digest() != part.content_hash:
            raise RestoreError(f"{part.name.decode()} of point {point_id[:12]} does not match its stored hash")


def gtid_cut(files: Sequence[Staged], starts: Sequence[int], gtid: str) -> tuple[int, int | None]:
    """Replay through transaction `gtid` and no further: how many of `files` to replay and where the
    last one stops (the next transaction's GTID event; None: at its end). RestoreError when the
    files hold another server's transaction of that number, or none."""
    domain, _, seqno = gtid.split("-")
    number = f"{domain}-"
    for i, s in enumerate(files):
        found = None
        for t in s.facts.transactions:
            if t.offset < starts[i]:
                if t.gtid == gtid:  # before the full's position: the full holds it already
                    return 0, None
                continue
            if found is not None:
                return i + 1, t.offset
            if t.gtid.startswith(number) and t.gtid.rpartition("-")[2] == seqno:
                if t.gtid != gtid:
                    raise RestoreError(
                        f"GTID {gtid} is not in the shipped binlogs: transaction {seqno} of domain {domain} "
                        f"there is {t.gtid}",
                        hint=f"restore with --to-gtid {t.gtid}",
                    )
                found = t
        if found is not None:
            return i + 1, None
    if files and state_map(files[0].facts.start_state).get(int(domain), 0) >= int(seqno):
        return 0, None
    raise RestoreError(f"GTID {gtid} is not in the shipped binlogs the restore replays")


def _runs(files: Sequence[Staged], starts: Sequence[int]) -> list[tuple[int, list[Staged]]]:
    """Consecutive files replayed by one mariadb-binlog: a new run where replay starts at a
    position (the full's, or after a failover): --start-position applies to the first file only."""
    runs: list[tuple[int, list[Staged]]] = []
    for i, s in enumerate(files):
        if i == 0 or s.start is not None:
            runs.append((starts[i], [s]))
        else:
            runs[-1][1].append(s)
    return runs


def _last_applied(files: Sequence[Staged], starts: Sequence[int], stop: int | None) -> tuple[str, int] | None:
    """The GTID and time of the last transaction the replay applies."""
    last = None
    for i, s in enumerate(files):
        for t in s.facts.transactions:
            if t.offset < starts[i]:
                continue
            if i == len(files) - 1 and stop is not None and t.offset >= stop:
                break
            last = (t.gtid, t.timestamp)
    return last


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _free(path: Path) -> int | None:
    probe = path if path.exists() else path.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
