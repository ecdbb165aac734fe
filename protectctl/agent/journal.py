"""The per-source change journal: what the last point stored for each file.

For every file of the source's last recovery point it remembers the file's identity
(device, inode, size, mtime_ns, ctime_ns) and what was stored (chunk ids, holes, content
hash), so a sync reuses the chunk list of a file whose identity did not change without
reading a byte of it.

Crash safety: the journal in use is only ever read. A run writes the next journal to
`<name>.new` and `commit()` renames it into place only after the recovery point is saved;
a run killed at any instant leaves the old journal (matching an older, still valid point)
or the new one (matching the saved point), never a mix. Either way chunk lists are never
trusted blindly: the caller checks the repository still has every chunk before reusing one
(a prune may have run since), and the journal is bound to one repository by its id.

Format: SQLite (stdlib), one table keyed by (directory, name) relative to the source root,
so a walk fetches a whole directory's entries with one query.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protectctl.fsutil import fsync_dir

FORMAT_VERSION = "2"
_ID_LEN = 32
_BATCH = 2000


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What must be unchanged for a file's stored content to be reused unread."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    identity: FileIdentity
    chunks: tuple[bytes, ...]
    holes: tuple[tuple[int, int], ...]
    content_hash: bytes


def _pack_chunks(chunks: tuple[bytes, ...]) -> bytes:
    return b"".join(chunks)


def _unpack_chunks(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw[i : i + _ID_LEN] for i in range(0, len(raw), _ID_LEN))


def _pack_holes(holes: tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(struct.pack("<QQ", start, length) for start, length in holes)


def _unpack_holes(raw: bytes) -> tuple[tuple[int, int], ...]:
    return tuple((start, length) for start, length in struct.iter_unpack("<QQ", raw))


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    dir TEXT NOT NULL, name TEXT NOT NULL, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,
    ctime_ns INTEGER, chunks BLOB, holes BLOB, content_hash BLOB, PRIMARY KEY (dir, name)
) WITHOUT ROWID;
"""


class Journal:
    """The committed journal of one source in one repository (read-only)."""

    def __init__(self, path: Path, *, repo_id: str) -> None:
        self.path = path
        self.repo_id = repo_id
        self._conn = self._open()
        self.meta: dict[str, str] = self._read_meta()
        if self.meta.get("format") != FORMAT_VERSION or self.meta.get("repo_id") != repo_id:
            # Another repository (re-created, or a restored state dir): nothing here is ours.
            self.close()
            self.meta = {}

    def _open(self) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        try:
            # Quoted: the source's safe name contains "%", which a URI would decode.
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error:
            return None

    def _read_meta(self) -> dict[str, str]:
        if self._conn is None:
            return {}
        try:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error:
            return {}

    @property
    def point_id(self) -> str | None:
        return self.meta.get("point_id")

    def directory(self, rel_dir: str) -> dict[str, JournalEntry]:
        """The entries of the files directly in `rel_dir` ("" for the root), by name."""
        if self._conn is None:
            return {}
        try:
            rows = self._conn.execute(
                "SELECT name, dev, ino, size, mtime_ns, ctime_ns, chunks, holes, content_hash"
                " FROM files WHERE dir = ?",
                (rel_dir,),
            ).fetchall()
        except sqlite3.Error:
            return {}
        return {
            row[0]: JournalEntry(
                FileIdentity(*row[1:6]), _unpack_chunks(row[6]), _unpack_holes(row[7]), bytes(row[8])
            )
            for row in rows
        }

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def begin(self) -> JournalWriter:
        """Start the next journal beside this one."""
        return JournalWriter(self.path, repo_id=self.repo_id)


class JournalWriter:
    """The next journal, invisible until `commit`."""

    def __init__(self, path: Path, *, repo_id: str) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".new")
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()  # left by a killed run
        self._conn = sqlite3.connect(self._tmp, check_same_thread=False)
        # Durability comes from fsync + rename at commit, not from SQLite's own journal.
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(_SCHEMA)
        self._meta = {"format": FORMAT_VERSION, "repo_id": repo_id}
        self._pending: list[tuple[object, ...]] = []

    def add(self, rel_dir: str, name: str, entry: JournalEntry) -> None:
        ident = entry.identity
        self._pending.append(
            (
                rel_dir,
                name,
                ident.dev,
                ident.ino,
                ident.size,
                ident.mtime_ns,
                ident.ctime_ns,
                _pack_chunks(entry.chunks),
                _pack_holes(entry.holes),
                entry.content_hash,
            )
        )
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._pending
        )
        self._pending.clear()

    def commit(self, meta: Mapping[str, str]) -> None:
        """Make this the journal; call only after the point it describes is saved."""
        self._flush()
        rows = {**self._meta, **meta}
        self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(rows.items()))
        self._conn.commit()
        self._conn.close()
        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()
