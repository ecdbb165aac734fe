"""The WAL spool on the source host: where it is, the archive_command that fills it, and the
drain that stores its files into a point (the sync's and the full's `wal/` tree).

`wal.py` beside this module is what archive_command and restore_command run (stdlib only,
installed into the spool as a script the PostgreSQL OS user can run).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from protectctl.progress import Progress
from protectctl.provider import BlobId, Node, SnapshotSink, Tree, file_node, safe_name
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import wal as walspool
from protectctl.providers.postgresql.cluster import Cluster

DEFAULT_SPOOL_LIMIT = 4 << 30
SCRIPT_NAME = ".protectctl-wal.py"
STAGING = ".protectctl-restore"


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


def python_for_os_user() -> str:
    # The OS user usually cannot reach our interpreter (a virtualenv under /root): the system one.
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def archive_command(spool: Path, limit: int) -> str:
    return f"'{python_for_os_user()}' -I '{spool / SCRIPT_NAME}' push --spool '{spool}' --max-bytes {limit} '%p'"


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
class Shipped:
    tree: BlobId
    nodes: int
    bytes_total: int
    extra: dict[str, object]
    done: list[tuple[Path, int, int]]  # (path, inode, mtime_ns) to delete once the point is saved
    drop_files: list[Path]


def claim_drops(spool: Path) -> list[Path]:
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


def _read_hashed(sink: SnapshotSink, path: Path) -> _ReadFile | None:
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
    return _ReadFile(path, st, data, sink.hash_content(data))


def _store_read(sink: SnapshotSink, read: _ReadFile) -> Node:
    return file_node(
        read.path.name, read.st, size=len(read.data), chunks=sink.store_content(read.data), content_hash=read.digest
    )


# Files read and hashed ahead of the one being chunked and stored (16 MiB each by default).
_READ_AHEAD = 2


def drain_spool(sink: SnapshotSink, cluster: Cluster, spool: Path, segment_size: int, progress: Progress) -> Shipped:
    """Store every WAL file in the spool (and its transaction times) as one `wal/` tree.

    Three things overlap: pg_waldump finding the transaction times (another process), reading
    and hashing the next files (a thread; both release the GIL), and chunking and storing this
    one (the writer compresses and encrypts in its own threads).
    """
    drop_files = claim_drops(spool)
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
                ahead.append(pool.submit(_read_hashed, sink, path))
            if not ahead:
                break
            read = ahead.popleft().result()
            if read is not None:
                stored.append((_store_read(sink, read), read.path, read.st.st_ino, read.st.st_mtime_ns))
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
            wal.append(
                {
                    "name": path.name,
                    "timeline": seg.timeline,
                    "segno": seg.segno,
                    "start_lsn": pg.format_lsn(start),
                    "end_lsn": pg.format_lsn(start + segment_size),
                    "first_xact": pg.iso_utc(min(found)) if found else None,
                    "last_xact": pg.iso_utc(max(found)) if found else None,
                    "xacts": len(found),
                }
            )
        elif path.name.endswith(".history"):
            history.append(path.name)
        else:
            other.append(path.name)
    for d in drops:
        progress.note(f"WAL segment {d.get('name')} was DROPPED by the full spool: {d.get('reason')}")
    tree = sink.save_tree(Tree(tuple(sorted(nodes, key=lambda n: n.name))))
    extra: dict[str, object] = {
        "wal": wal,
        "history": history,
        "other": other,
        "dropped": drops,
        "wal_segment_size": segment_size,
    }
    return Shipped(tree, len(nodes), total, extra, done, drop_files)


def _xact_times(cluster: Cluster, spool: Path, names: Sequence[str], segment_size: int) -> dict[int, list[datetime]]:
    """Transaction times per segment number, one pg_waldump per run of consecutive segments."""
    segs = sorted(
        (s.timeline, s.segno, n) for n in names if (s := walspool.SegmentName.parse(n, segment_size)) is not None
    )
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


def finish_drain(shipped: Shipped) -> None:
    for path, ino, mtime in shipped.done:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if st.st_ino == ino and st.st_mtime_ns == mtime:  # not re-pushed since we read it
                path.unlink()
    for f in shipped.drop_files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
