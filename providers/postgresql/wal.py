"""The WAL spool on a PostgreSQL host: what `archive_command` and `restore_command` run.

PostgreSQL runs `archive_command` as its OS user (never root) once per completed segment.
That user cannot read the repository key, so archiving is split in two:

* `push` (the archive_command) copies the segment into a spool directory owned by the OS
  user (temp name, fsync, rename, fsync dir) and returns at once; the agent's `sync` (root,
  holding the key) drains the spool into the repository and deletes what it stored.
* The spool is bounded (`--max-bytes`). Past the bound a segment is *dropped loudly*: a
  JSON line is appended to `dropped.jsonl` (the agent reports it as a gap, with its time
  range, in the next point, in `points list` and in `status`) and `push` returns 0, so
  PostgreSQL recycles the segment instead of filling the disk it needs.
* `fetch` (the restore_command) copies a segment that a protectctl restore process is
  decrypting from the repository into a staging directory; it waits while that process is
  still working on a name it announced (`.protectctl-names`) and fails at once, as
  PostgreSQL expects for "no such file", for any other name (PostgreSQL probes for
  history files and the segment after the last one).

Stdlib only, and runnable as a script (`python3 -I wal.py push ...`): apply installs a copy
readable by the PostgreSQL OS user, which usually cannot import protectctl (a virtualenv
under /root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DROPPED = "dropped.jsonl"
DRAINING = "dropped.draining.jsonl"
FETCHING_MARK = ".protectctl-fetching"  # present while the restore process still stages WAL
NAMES = ".protectctl-names"  # every name the restore process will stage, one a line, written first
# 000000010000000000000003, 00000002.history, 000000010000000000000003.00000028.backup, ...partial
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
SPOOLED_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class SegmentName:
    timeline: int
    segno: int  # segment number counted from LSN 0 (log * segments_per_log + seg)

    @classmethod
    def parse(cls, name: str, segment_size: int) -> SegmentName | None:
        m = SEGMENT_RE.match(name)
        if m is None:
            return None
        per_log = 0x100000000 // segment_size
        return cls(int(m.group(1), 16), int(m.group(2), 16) * per_log + int(m.group(3), 16))

    def name(self, segment_size: int) -> str:
        per_log = 0x100000000 // segment_size
        return f"{self.timeline:08X}{self.segno // per_log:08X}{self.segno % per_log:08X}"


def spooled_files(spool: Path) -> list[Path]:
    """Files a sync must ship, oldest name first (history files sort after their timeline's segments)."""
    try:
        names = [e.name for e in os.scandir(spool) if e.is_file() and SPOOLED_RE.match(e.name)]
    except FileNotFoundError:
        return []
    return [spool / n for n in sorted(names)]


def spool_bytes(spool: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(spool) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    total += entry.stat().st_size
    return total


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(_COPY_BLOCK), fb.read(_COPY_BLOCK)
            if x != y:
                return False
            if not x:
                return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durably(source: Path, dest: Path, *, mode: int = 0o600) -> None:
    """Copy via a temp name, fsync, rename, fsync the directory: a crash leaves all or nothing."""
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    try:
        with source.open("rb") as src, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as out:
            while block := src.read(_COPY_BLOCK):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def record_drop(spool: Path, name: str, size: int, reason: str, now: float | None = None) -> None:
    line = json.dumps(
        {"name": name, "time": now if now is not None else time.time(), "bytes": size, "reason": reason}, sort_keys=True
    )
    fd = os.open(spool / DROPPED, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_drops(path: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    out.append(value)
    return out


def push(source: Path, spool: Path, max_bytes: int) -> tuple[int, str]:
    """Spool one WAL file; returns (exit status for PostgreSQL, message for its log)."""
    name = source.name
    if not SPOOLED_RE.match(name):
        return 1, f"protectctl wal-push: {name!r} is not a WAL file name"
    dest = spool / name
    try:
        if dest.exists():
            if _same_content(source, dest):
                return 0, ""
            # PostgreSQL re-archiving a name with other content is a bug or a second cluster
            # writing into this spool: refuse, so the segment stays in pg_wal and nothing is lost.
            return 1, f"protectctl wal-push: {dest} exists with different content; not overwriting"
        size = source.stat().st_size
        used = spool_bytes(spool)
        if used + size > max_bytes:
            record_drop(spool, name, size, f"spool full: {used} + {size} bytes > limit {max_bytes}")
            return 0, (
                f"protectctl wal-push: WARNING: spool {spool} is full ({used} of {max_bytes} bytes); "
                f"DROPPED {name}: point-in-time recovery has a gap here until the next full backup"
            )
        copy_durably(source, dest)
    except OSError as err:
        return 1, f"protectctl wal-push: {name}: {err.strerror or err}"
    return 0, ""


def fetch(name: str, dest: Path, staging: Path, *, timeout_s: float = 3600.0) -> tuple[int, str]:
    """Copy a staged WAL file to where PostgreSQL asked; 1 when it does not exist (normal at the end)."""
    source = staging / name
    announced: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        announced = set((staging / NAMES).read_text(encoding="utf-8").split())
    deadline = time.monotonic() + timeout_s
    while True:
        if source.exists():
            try:
                copy_durably(source, dest)
            except OSError as err:
                return 1, f"protectctl wal-fetch: {name}: {err.strerror or err}"
            return 0, ""
        if name not in announced or not (staging / FETCHING_MARK).exists():
            return 1, ""
        if time.monotonic() > deadline:
            return 1, f"protectctl wal-fetch: {name} was not staged within {timeout_s:.0f} s"
        time.sleep(0.02)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="protectctl-wal")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push")
    p.add_argument("--spool", required=True, type=Path)
    p.add_argument("--max-bytes", required=True, type=int)
    p.add_argument("path", type=Path)
    f = sub.add_parser("fetch")
    f.add_argument("--dir", required=True, type=Path)
    f.add_argument("name")
    f.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "push":
        status, message = push(args.path, args.spool, args.max_bytes)
    else:
        status, message = fetch(args.name, args.dest, args.dir)
    if message:
        sys.stderr.write(message + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
