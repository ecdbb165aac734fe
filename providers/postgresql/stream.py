"""Streaming WAL (`streaming: true`): pg_receivewal kept running by the agent, and what a sync ships.

* **The receiver.** `protectctl agent wal-stream GROUP --member M` (a systemd service with
  Restart=always, or a cron `@reboot` line: provision/schedulers) supervises `pg_receivewal`
  run as the OS user: a physical replication slot (``protectctl_<group>_<member>``, created if
  missing, so the primary keeps WAL the receiver has not got), ``--synchronous`` (each write
  flushed and reported at once), into ``<spool>/stream/``. When it exits (server restart,
  network) it is started again with a backoff of 1 s doubling to 30 s; on a standby of a
  pair it waits until that node is promoted. SIGTERM stops it and the receiver.
* **The sync** does not switch WAL: it reads the primary's flush position, waits (30 s at
  most) until the receiver reports having written that far, then moves the completed
  segments of ``stream/`` into the spool and copies the segment being received (its
  ``.partial``, zero-padded to the segment size as pg_receivewal writes it) into the spool
  under the segment's own name; the usual drain stores them. The point covers every commit
  before the sync started, so the recovery point objective is the sync interval and
  `restore --to-time latest` needs nothing from the source host.
* **Why the partial is safe to store under the segment name:** recovery reads records until
  the zeros after the last one received, exactly as at the end of any WAL; a later sync
  stores the completed segment under the same name, and the catalog prefers the later copy.
  The copy is made only while the spool has no file of that name (an archived segment is
  never shadowed), and it leaves the spool once the point is saved. If PostgreSQL's archiver
  pushes the completed segment meanwhile, `push` refuses the name until then and PostgreSQL
  retries: archiving waits a moment, nothing is lost.
* When the receiver is not streaming (not started, behind by more than 30 s) the sync says
  so and falls back to `pg_switch_wal()`, as without streaming.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from protectctl.errors import ProviderError
from protectctl.progress import Progress
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import wal as walspool
from protectctl.providers.postgresql.cluster import Cluster

STREAM = "stream"
WAIT_S = 30.0
_MAX_BACKOFF_S = 30.0


def slot_name(source: str) -> str:
    """The replication slot (and application_name) of a source's receiver."""
    return ("protectctl_" + re.sub(r"[^a-z0-9_]", "_", source.lower()))[:63]


def stream_dir(spool: Path) -> Path:
    return spool / STREAM


def receiver_argv(cluster: Cluster, directory: Path, slot: str) -> list[str]:
    return [
        cluster.bin("pg_receivewal"),
        "-D",
        str(directory),
        "-S",
        slot,
        *pg.conn_args(cluster),
        "--synchronous",
        "-s",
        "1",
        "-n",
        "--no-password",
    ]


def ensure_slot(cluster: Cluster, slot: str) -> None:
    """The physical slot, reserving WAL from now on, if it does not exist yet."""
    if not pg.query(cluster, f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'"):
        pg.query(cluster, f"SELECT pg_create_physical_replication_slot('{slot}', true)")


def _prepare_dir(cluster: Cluster, spool: Path) -> Path:
    directory = stream_dir(spool)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chown(directory, *cluster.ids())
    return directory


def supervise(cluster: Cluster, spool: Path, slot: str, *, stop: threading.Event, log: Callable[[str], None]) -> None:
    """Keep pg_receivewal running into `<spool>/stream` until `stop` is set."""
    backoff = 1.0
    while not stop.is_set():
        state = None
        why = ""
        try:
            state = pg.scalar(cluster, "SELECT pg_is_in_recovery()")
        except ProviderError as err:
            why = f" ({pg.server_message(str(err))})"
        if state != "f":
            log(
                f"PostgreSQL at {pg.where(cluster)} is "
                f"{'a standby' if state == 't' else 'not reachable' + why}: waiting to stream"
            )
            stop.wait(10)
            continue
        try:
            ensure_slot(cluster, slot)
            directory = _prepare_dir(cluster, spool)
        except (ProviderError, OSError) as err:
            log(f"cannot prepare streaming: {err}")
            stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            continue
        started = time.monotonic()
        proc = subprocess.Popen(
            pg.as_user(cluster, receiver_argv(cluster, directory, slot)),
            cwd="/",
            env={**os.environ, "PGAPPNAME": slot, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
        )
        log(f"pg_receivewal started (pid {proc.pid}, slot {slot}) into {directory}")
        while proc.poll() is None and not stop.wait(0.5):
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return
        backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, _MAX_BACKOFF_S)
        log(f"pg_receivewal exited with status {proc.returncode}; restarting in {backoff:.0f} s")
        stop.wait(backoff)


def run_receiver(spec: Mapping[str, object], source: str, state_dir: Path, log: Callable[[str], None]) -> None:
    """The agent's `wal-stream` command: supervise the receiver until SIGTERM or SIGINT."""
    from protectctl.providers.postgresql.spool import spool_dir

    cluster = Cluster.from_spec(spec)
    spool = spool_dir(spec, source, state_dir)
    if not spool.is_dir():
        raise ProviderError(
            f"the WAL spool {spool} of {source} does not exist",
            hint="run `protectctl apply` to configure WAL archiving",
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervise(cluster, spool, slot_name(source), stop=stop, log=log)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stage_streamed(
    cluster: Cluster, spool: Path, source: str, progress: Progress
) -> tuple[dict[str, object], int] | None:
    """Move what the receiver got into the spool (see the module docstring); returns the sync's
    coverage and the segment size, or None when the receiver is not streaming (the caller switches WAL)."""
    slot = slot_name(source)
    with pg.Session(cluster) as session:
        try:
            row = session.query(
                "SELECT pg_is_in_recovery(), (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')"
            )[0]
        except ProviderError:
            return None
        if row[0] == "t":
            return None
        segment_size = int(row[1])
        before = datetime.now(UTC)
        target = session.scalar("SELECT pg_current_wal_flush_lsn()")
        deadline = time.monotonic() + WAIT_S
        while (
            session.scalar(
                f"SELECT coalesce(bool_or(write_lsn >= '{target}'::pg_lsn), false) "
                f"FROM pg_stat_replication WHERE application_name = '{slot}'"
            )
            != "t"
        ):
            if time.monotonic() > deadline:
                progress.note(
                    f"pg_receivewal of {source} has not received up to {target} within {WAIT_S:.0f} s "
                    "(is `protectctl agent wal-stream` running?): switching WAL instead"
                )
                return None
            time.sleep(0.02)
    current = _move_received(stream_dir(spool), spool, segment_size)
    if current is None:
        return None
    seg = walspool.SegmentName.parse(current, segment_size)
    return (
        {
            "covered_until": before.isoformat(),
            "covered_through_segno": seg.segno if seg else None,
            "covered_through": current,
            "streamed": True,
        },
        segment_size,
    )


def _move_received(directory: Path, spool: Path, segment_size: int) -> str | None:
    """Completed segments moved into the spool; the one being received copied there under its own
    name. Returns that segment's name (None when nothing is being received)."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file())
    except FileNotFoundError:
        return None
    for name in names:
        if walspool.SEGMENT_RE.match(name) or name.endswith(".history"):
            with contextlib.suppress(FileExistsError):
                os.link(directory / name, spool / name)  # a crash before the unlink leaves two names: harmless
            (directory / name).unlink()
    partials = [n[: -len(".partial")] for n in names if n.endswith(".partial") and walspool.SEGMENT_RE.match(n[:24])]
    if not partials:
        return None
    current = partials[-1]
    if not (spool / current).exists():
        _copy_padded(directory / f"{current}.partial", spool / current, segment_size)
    return current


def _copy_padded(source: Path, dest: Path, segment_size: int) -> None:
    """A durable copy of a segment being received, zero-padded to the segment size (recovery's rule)."""
    tmp = dest.parent / f".{dest.name}.stream.tmp"
    with source.open("rb") as src, tmp.open("wb") as out:
        data = src.read(segment_size)
        out.write(data)
        if len(data) < segment_size:
            out.truncate(segment_size)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
