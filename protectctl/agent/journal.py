"""The per-source change journal: what the last point stored for each file.

For every file of the source's last recovery point it remembers the file's identity
(device, inode, size, mtime_ns, ctime_ns) and what was stored (chunk ids, holes, content
hash), so a sync reuses the chunk list of a file whose identity did not change without
reading a byte of it.

Crash safety: the journal in use is only ever read. A run writes the next journal to
`<name>.new` and `commit()` renames it into place only after the recovery point is saved;
a run killed at any instant leaves the old journal (matching an older, still valid point)
or the new one (matching the saved point), never a mix. A journal walk (agent/changes.py)
instead changes the journal in place in one SQLite transaction committed at the same moment
(`begin(in_place=True)`): a kill rolls it back, with the same guarantee. Of a directory it
walks, only the rows of entries that changed are written: the rows of unchanged entries stay
where they are (`keep`, `keep_nodes`), and those of entries gone are removed once the walk
has left the directory (`_settle`). Either way chunk lists are never
trusted blindly: the caller checks the repository still has every chunk before reusing one
(a prune may have run since), and the journal is bound to one repository by its id.

Format: SQLite (stdlib), one table keyed by (directory, name) relative to the source root,
so a walk fetches a whole directory's entries with one query, and one table keyed by
directory holding the tree blob the last point stored for it and a key of everything that
tree was built from (see agent/archiver.py): a sync finding the same key reuses that tree
and copies the directory's rows into the next journal in one statement, instead of
rebuilding, re-encoding and re-hashing it. A third table keeps, per entry, the node's
encoding and a seal (a digest of what the node was built from and of that encoding), so a
directory that must be rebuilt (one file in it changed) re-encodes only the entries that
changed, and a damaged row is rebuilt rather than stored. A journal written before those
tables existed simply has nothing to reuse.

Racily clean files: a file's identity holds timestamps of the filesystem's granularity (a
clock tick, a second on some filesystems). A file rewritten, size unchanged, within the same
tick as the sync that read it keeps its identity, and the next sync would reuse the old
content. So the journal records when its run started (`started_ns`, taken before the walk
reads anything) and the next run distrusts every entry whose mtime or ctime is within
RACY_SLACK_NS of that instant (or after it): it is read again (`racy_after_ns`). Such a
re-read costs little (only files touched right before or during the previous sync) and the
journal written by that run trusts the file again. A journal without `started_ns` (written
before) trusts its entries as it always did. PROTECTCTL_RACY_SLACK_NS overrides the slack
(tests that count bytes read set it to 0; a filesystem with coarser timestamps may need more).

Names are bytes (engine/names.py). A `dir` or `name` key is stored as TEXT when it is valid
UTF-8 (as journals before bytes names stored every key, so they stay usable) and as a BLOB
of its raw bytes otherwise; SQLite keeps the two storage classes apart (a TEXT never equals
a BLOB), so the mapping is exact and reversible. `dir` is the names from the source root
joined by "/", "" for the root. `content_hash` is 32 bytes for a HashScheme.CONTENT hash,
a 0x01 byte then 32 for an EXTENTS one, a 0x02 byte then 32 for a BLOCKS one (format 3;
format 2 journals, which have none, are read as they are).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protectctl import crashpoint
from protectctl.engine.tree import HashScheme
from protectctl.errors import StateError
from protectctl.fsutil import fsync_dir, os_error_text

FORMAT_VERSION = "3"
_READABLE_FORMATS = ("2", "3")
_ID_LEN = 32
_BATCH = 2000
# Larger than any timestamp granularity of a Linux filesystem the agent backs up (ext4 with
# 128-byte inodes and NFS servers keep seconds) and than clock skew between a file server and us.
RACY_SLACK_NS = 2_000_000_000
_SLACK_ENV = "PROTECTCTL_RACY_SLACK_NS"


def racy_slack_ns() -> int:
    """The racy-clean slack in force (RACY_SLACK_NS unless PROTECTCTL_RACY_SLACK_NS says otherwise)."""
    raw = os.environ.get(_SLACK_ENV, "")
    try:
        return max(0, int(raw)) if raw else RACY_SLACK_NS
    except ValueError:
        return RACY_SLACK_NS


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
    hash_scheme: HashScheme = HashScheme.CONTENT


def _db_key(raw: bytes) -> str | bytes:
    """How a name or a directory path is stored: TEXT when UTF-8, else a BLOB (see above)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _raw_key(stored: object) -> bytes:
    if isinstance(stored, str):
        return stored.encode("utf-8")
    if isinstance(stored, bytes):
        return stored
    raise TypeError(f"a journal key is TEXT or BLOB, not {type(stored).__name__}")


_MARKS = {HashScheme.EXTENTS: b"\x01", HashScheme.BLOCKS: b"\x02"}
_SCHEMES = {mark: scheme for scheme, mark in _MARKS.items()}


def _pack_hash(content_hash: bytes, scheme: HashScheme) -> bytes:
    return _MARKS.get(scheme, b"") + content_hash


def _unpack_hash(stored: bytes) -> tuple[bytes, HashScheme]:
    if len(stored) == _ID_LEN + 1 and stored[:1] in _SCHEMES:
        return stored[1:], _SCHEMES[stored[:1]]
    return stored, HashScheme.CONTENT


def _entry(
    dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int, chunks: bytes, holes: bytes, stored_hash: bytes
) -> JournalEntry:
    content_hash, scheme = _unpack_hash(bytes(stored_hash))
    identity = FileIdentity(dev, ino, size, mtime_ns, ctime_ns)
    return JournalEntry(identity, _unpack_chunks(chunks), _unpack_holes(holes), content_hash, scheme)


class DirectoryEntries(Mapping[bytes, JournalEntry]):
    """The journal entries of one directory, each decoded on first use: a walked directory in
    which one file changed checks the others' identities on the raw rows (`unchanged`) and
    decodes only the entries it needs."""

    __slots__ = ("_decoded", "_rows")

    def __init__(self, rows: dict[bytes, tuple[object, ...]]) -> None:
        self._rows = rows  # name -> (dev, ino, size, mtime_ns, ctime_ns, chunks, holes, content_hash)
        self._decoded: dict[bytes, JournalEntry] = {}

    def __getitem__(self, name: bytes) -> JournalEntry:
        entry = self._decoded.get(name)
        if entry is None:
            entry = self._decoded[name] = _entry(*self._rows[name])  # type: ignore[arg-type]
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def unchanged(self, name: bytes, st: os.stat_result) -> bool:
        """The entry of `name` has the identity `st` gives (FileIdentity.of), compared raw."""
        row = self._rows.get(name)
        return row is not None and row[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def chunk_ids(self) -> list[bytes] | None:
        """Every chunk id the directory's entries name; None when a row is damaged."""
        lists = [row[5] for row in self._rows.values()]
        if not all(isinstance(raw, bytes) and len(raw) % _ID_LEN == 0 for raw in lists):
            return None
        joined = b"".join(lists)  # type: ignore[arg-type]
        return [joined[i : i + _ID_LEN] for i in range(0, len(joined), _ID_LEN)]


def unchanged(entries: Mapping[bytes, JournalEntry], name: bytes, st: os.stat_result) -> bool:
    """`entries` has `name` with the identity `st` gives."""
    if isinstance(entries, DirectoryEntries):
        return entries.unchanged(name, st)
    previous = entries.get(name)
    return previous is not None and previous.identity == FileIdentity.of(st)


def chunk_ids(entries: Mapping[bytes, JournalEntry]) -> list[bytes] | None:
    """Every chunk id the entries name; None when one is damaged."""
    if isinstance(entries, DirectoryEntries):
        return entries.chunk_ids()
    return [c for e in entries.values() for c in e.chunks]


def _pack_chunks(chunks: tuple[bytes, ...]) -> bytes:
    return b"".join(chunks)


def _unpack_chunks(raw: bytes) -> tuple[bytes, ...]:
    return tuple([raw[i : i + _ID_LEN] for i in range(0, len(raw), _ID_LEN)])  # a list first: ~2x faster


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
CREATE TABLE dirs (dir TEXT PRIMARY KEY, key BLOB NOT NULL, tree BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE nodes (
    dir TEXT NOT NULL, name TEXT NOT NULL, seal BLOB NOT NULL, encoded TEXT NOT NULL, PRIMARY KEY (dir, name)
) WITHOUT ROWID;
"""
# What a directory's subtree holds (files, directories, bytes below it), so that a sync that
# reuses a subtree unwalked (agent/changes.py) still counts what the point holds.
_SUBTOTALS = """
CREATE TABLE IF NOT EXISTS subtotals (
    dir TEXT PRIMARY KEY, files INTEGER NOT NULL, dirs INTEGER NOT NULL, bytes INTEGER NOT NULL
) WITHOUT ROWID;
"""


class Journal:
    """The committed journal of one source in one repository (read-only)."""

    def __init__(self, path: Path, *, repo_id: str) -> None:
        self.path = path
        self.repo_id = repo_id
        _recover(path)
        self._conn = self._open()
        self.meta: dict[str, str] = self._read_meta()
        if self.meta.get("format") not in _READABLE_FORMATS or self.meta.get("repo_id") != repo_id:
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

    @property
    def racy_after_ns(self) -> int | None:
        """Entries whose mtime or ctime is at or after this instant may have changed unseen within
        their timestamp's granularity: read them again (None: the journal does not know)."""
        try:
            started = int(self.meta["started_ns"])
        except (KeyError, ValueError):
            return None
        return started - racy_slack_ns()

    def directory(self, rel_dir: bytes) -> DirectoryEntries:
        """The entries of the files directly in `rel_dir` (b"" for the root), by name."""
        if self._conn is None:
            return DirectoryEntries({})
        try:
            rows = self._conn.execute(
                "SELECT CAST(name AS BLOB), dev, ino, size, mtime_ns, ctime_ns, chunks, holes, content_hash "
                "FROM files WHERE dir = ?",
                (_db_key(rel_dir),),
            ).fetchall()
        except sqlite3.Error:
            return DirectoryEntries({})
        # names come back raw (a TEXT name as its UTF-8 bytes, as _raw_key gives it)
        return DirectoryEntries({row[0]: row[1:] for row in rows if isinstance(row[0], bytes)})

    def directory_tree(self, rel_dir: bytes) -> tuple[bytes, bytes] | None:
        """(key, tree blob id) the last point stored for `rel_dir`; None when unknown."""
        if self._conn is None:
            return None
        try:
            row = self._conn.execute("SELECT key, tree FROM dirs WHERE dir = ?", (_db_key(rel_dir),)).fetchone()
        except sqlite3.Error:  # a journal from before the dirs table: nothing to reuse
            return None
        if row is None or not isinstance(row[0], bytes) or not isinstance(row[1], bytes):
            return None
        return (row[0], row[1])

    def directory_nodes(self, rel_dir: bytes) -> dict[bytes, tuple[bytes, str]]:
        """name -> (seal, encoded node) of every entry the last point stored in `rel_dir`."""
        if self._conn is None:
            return {}
        try:
            rows = self._conn.execute(
                "SELECT CAST(name AS BLOB), seal, encoded FROM nodes WHERE dir = ?", (_db_key(rel_dir),)
            ).fetchall()
        except sqlite3.Error:
            return {}
        # Names come back raw (as _raw_key gives them). Rows of an unexpected shape (a damaged or
        # foreign journal) are skipped: rebuilt, not trusted.
        return {
            row[0]: (row[1], row[2])
            for row in rows
            if isinstance(row[0], bytes) and isinstance(row[1], bytes) and isinstance(row[2], str)
        }

    def directory_chunks(self, rel_dir: bytes) -> list[bytes] | None:
        """The chunk ids of every file directly in `rel_dir`, as one concatenated blob per file."""
        if self._conn is None:
            return None
        try:
            rows = self._conn.execute("SELECT chunks FROM files WHERE dir = ?", (_db_key(rel_dir),)).fetchall()
        except sqlite3.Error:
            return None
        if not all(isinstance(row[0], bytes) and len(row[0]) % _ID_LEN == 0 for row in rows):
            return None  # damaged: the caller rebuilds the directory
        return [row[0] for row in rows]

    def subtotal(self, rel_dir: bytes) -> tuple[int, int, int] | None:
        """(files, directories, bytes) the last point holds below `rel_dir`; None when unknown."""
        if self._conn is None:
            return None
        try:
            row = self._conn.execute(
                "SELECT files, dirs, bytes FROM subtotals WHERE dir = ?", (_db_key(rel_dir),)
            ).fetchone()
        except sqlite3.Error:  # a journal from before the subtotals table
            return None
        if row is None or not all(isinstance(v, int) for v in row):
            return None
        return (row[0], row[1], row[2])

    def knows_below(self, rel_dir: bytes) -> bool:
        """Whether the last point had any file in `rel_dir` or below it (else the subtree is new
        to this journal: the archiver may capture it with worker processes, agent/workers.py)."""
        if self._conn is None:
            return False
        bounds: list[tuple[str | bytes, str | bytes, str | bytes]] = [(rel_dir, rel_dir + b"/", rel_dir + b"0")]
        with contextlib.suppress(UnicodeDecodeError):
            bounds.append((rel_dir.decode(), rel_dir.decode() + "/", rel_dir.decode() + "0"))
        try:
            for exact, low, high in bounds:
                query = "SELECT 1 FROM files WHERE dir = ? OR (dir >= ? AND dir < ?) LIMIT 1"
                if self._conn.execute(query, (exact, low, high)).fetchone() is not None:
                    return True
        except sqlite3.Error:
            return True  # unreadable: not known to be new
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def begin(self, *, started_ns: int | None = None, in_place: bool = False) -> JournalWriter:
        """Start the next journal beside this one (able to copy rows from this one); `started_ns`:
        when the content it describes was captured, if earlier than now (a snapshot's instant).
        `in_place`: the next journal is this one changed in one SQLite transaction (a journal
        walk rewrites only the directories it walks, agent/changes.py; copying the whole
        journal would cost what the walk saves)."""
        return JournalWriter(
            self.path,
            repo_id=self.repo_id,
            previous=self.path if self._conn else None,
            started_ns=started_ns,
            in_place=in_place and self._conn is not None,
        )


def file_row(rel_dir: bytes, name: bytes, entry: JournalEntry) -> tuple[object, ...]:
    """The `files` row `JournalWriter.add` stores for `entry`."""
    ident = entry.identity
    return (
        _db_key(rel_dir),
        _db_key(name),
        ident.dev,
        ident.ino,
        ident.size,
        ident.mtime_ns,
        ident.ctime_ns,
        _pack_chunks(entry.chunks),
        _pack_holes(entry.holes),
        _pack_hash(entry.content_hash, entry.hash_scheme),
    )


class JournalWriter:
    """The next journal, invisible until `commit`."""

    def __init__(
        self,
        path: Path,
        *,
        repo_id: str,
        previous: Path | None = None,
        started_ns: int | None = None,
        in_place: bool = False,
    ) -> None:
        # Before anything of the run is read: the next run distrusts files changed since (racy).
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.path = path
        self._tmp = path.with_name(path.name + ".new")
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()  # left by a killed run
        _recover(path)
        self._in_place = in_place
        self._cleared: set[str | bytes] = set()
        # In place: directories being rewritten -> the names of their file and node rows written
        # or kept (`keep`) so far; the rest of their rows go once the walk has left them (_settle).
        self._open: dict[str | bytes, tuple[set[bytes], set[bytes]]] = {}
        self._forgotten: list[bytes] = []  # forget_below: rows the journal read from are gone here
        self._subtotals: list[tuple[str | bytes, int, int, int]] = []
        self._meta = {"format": FORMAT_VERSION, "repo_id": repo_id, "started_ns": str(self.started_ns)}
        self._pending: list[tuple[object, ...]] = []
        self._dirs: list[tuple[str | bytes, bytes, bytes]] = []
        self._nodes: list[tuple[str | bytes, str | bytes, bytes, str]] = []
        self._previous = False
        if in_place:
            # One transaction on the journal itself, committed after the point is saved: the
            # journal in place (read through another connection, which sees only committed
            # rows) stays exactly the last one until then, and a kill rolls it back (SQLite's
            # rollback journal, undone by the next opener: _recover). No spilling of dirty
            # pages before the commit: readers are never locked out during the walk.
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            for pragma in ("journal_mode=DELETE", "synchronous=FULL", "cache_spill=0", "cache_size=-1048576"):
                self._conn.execute(f"PRAGMA {pragma}")
            self._conn.executescript(_SUBTOTALS)
            self._conn.execute("BEGIN IMMEDIATE")
            return
        # A URI (quoted, see Journal._open) so that ATTACH below may open the previous one read-only.
        self._conn = sqlite3.connect(f"file:{urllib.parse.quote(str(self._tmp))}", check_same_thread=False, uri=True)
        # Durability comes from fsync + rename at commit, not from SQLite's own journal.
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(_SCHEMA)
        self._conn.executescript(_SUBTOTALS)
        if previous is not None:
            try:
                uri = f"file:{urllib.parse.quote(str(previous))}?mode=ro"
                self._conn.execute("ATTACH DATABASE ? AS previous", (uri,))
                self._previous = True
            except sqlite3.Error:
                pass

    def _rewriting(self, key: str | bytes) -> None:
        """The first row of a cleared directory: its old file and node rows go (see clear_directory)."""
        if key in self._cleared:
            self._cleared.discard(key)
            for table in ("files", "nodes"):
                self._conn.execute(f"DELETE FROM {table} WHERE dir = ?", (key,))

    def _written(self, key: str | bytes) -> tuple[set[bytes], set[bytes]] | None:
        """Rows of the directory `key` are written or kept now: in place, the raw names of its
        file and node rows written or kept so far, to add them to (None: not in place, or a
        directory not walked, whose rows stay as they are). A cleared directory is rewritten row
        by row: rows written replace theirs, rows kept stay, and the rest go once the walk has
        left the directory (_settle)."""
        if not self._in_place:
            if self._cleared:
                self._rewriting(key)
            return None
        names = self._open.get(key)
        if names is None:
            if key not in self._cleared:
                return None
            self._cleared.discard(key)
            if self._open:
                self._settle()  # the walk writes one directory's rows together: the last one is done
            names = self._open[key] = (set(), set())
        return names

    def _settle(self) -> None:
        """Remove the rows of the directories being rewritten that were neither written nor kept."""
        for key, kept in self._open.items():
            for table, names in zip(("files", "nodes"), kept, strict=True):
                query = f"SELECT name, CAST(name AS BLOB) FROM {table} WHERE dir = ?"
                stale = [(key, row[0]) for row in self._conn.execute(query, (key,)) if row[1] not in names]
                if stale:
                    self._conn.executemany(f"DELETE FROM {table} WHERE dir = ? AND name = ?", stale)
        self._open.clear()

    def add(self, rel_dir: bytes, name: bytes, entry: JournalEntry) -> None:
        if (self._cleared or self._open) and (names := self._written(_db_key(rel_dir))) is not None:
            names[0].add(name)
        self._pending.append(file_row(rel_dir, name, entry))
        if len(self._pending) >= _BATCH:
            self._flush()

    def _keeps(self, rel_dir: bytes) -> bool:
        """In place, the rows of `rel_dir` are the ones the journal walk read (not forgotten)."""
        if not self._in_place:
            return False
        if not self._forgotten:
            return True
        return not any(rel_dir == gone or rel_dir.startswith(gone + b"/") or not gone for gone in self._forgotten)

    def keep(self, rel_dir: bytes, names: Sequence[bytes], entries: Mapping[bytes, JournalEntry]) -> None:
        """`add` for the entries of `names` in `entries` (the directory as the journal this one
        follows has it), unchanged: in place, their rows are already there and stay (no write)."""
        if not self._keeps(rel_dir):
            for name in names:
                self.add(rel_dir, name, entries[name])
        elif (kept := self._written(_db_key(rel_dir))) is not None:
            kept[0].update(names)

    def keep_nodes(self, rel_dir: bytes, nodes: Sequence[tuple[bytes, bytes, str]]) -> None:
        """`add_node` for (name, seal, encoded) read from the journal this one follows, unchanged
        (see `keep`)."""
        if not self._keeps(rel_dir):
            for name, seal, encoded in nodes:
                self.add_node(rel_dir, name, seal, encoded)
        elif (kept := self._written(_db_key(rel_dir))) is not None:
            kept[1].update(name for name, _, _ in nodes)

    def add_rows(self, files: list[tuple[object, ...]]) -> None:
        """`add` for rows made by `file_row` elsewhere (an archiver worker process)."""
        if self._cleared or self._open:
            for row in files:
                if (names := self._written(row[0])) is not None:  # type: ignore[arg-type]
                    names[0].add(_raw_key(row[1]))
        self._pending += files
        if len(self._pending) >= _BATCH:
            self._flush()

    def add_directory(self, rel_dir: bytes, key: bytes, tree: bytes) -> None:
        """Remember the tree stored for `rel_dir` and the key it was built from."""
        self._dirs.append((_db_key(rel_dir), key, tree))
        if len(self._dirs) >= _BATCH:
            self._flush()

    def add_node(self, rel_dir: bytes, name: bytes, seal: bytes, encoded: str) -> None:
        """Remember how the tree node of `name` encoded, sealed with what it was built from."""
        key = _db_key(rel_dir)
        if (self._cleared or self._open) and (names := self._written(key)) is not None:
            names[1].add(name)
        self._nodes.append((key, _db_key(name), seal, encoded))
        if len(self._nodes) >= _BATCH:
            self._flush()

    def add_subtotal(self, rel_dir: bytes, files: int, dirs: int, size: int) -> None:
        """Remember what the point holds below `rel_dir`."""
        self._subtotals.append((_db_key(rel_dir), files, dirs, size))
        if len(self._subtotals) >= _BATCH:
            self._flush()

    def clear_directory(self, rel_dir: bytes) -> None:
        """`rel_dir` is about to be walked (a journal rewritten in place): its tree and subtotal
        go now; its file and node rows when the walk writes its first one, or stay when the
        walk reuses the directory (copy_directory), or go at the commit when it wrote none."""
        self._flush()
        key = _db_key(rel_dir)
        for table in ("dirs", "subtotals"):
            self._conn.execute(f"DELETE FROM {table} WHERE dir = ?", (key,))
        self._cleared.add(key)

    def forget_below(self, rel_dir: bytes) -> None:
        """Forget `rel_dir` and everything below it (a directory that left)."""
        self._flush()
        self._forgotten.append(rel_dir)
        bounds: list[tuple[str | bytes, str | bytes, str | bytes]] = [(rel_dir, rel_dir + b"/", rel_dir + b"0")]
        with contextlib.suppress(UnicodeDecodeError):
            bounds.append((rel_dir.decode(), rel_dir.decode() + "/", rel_dir.decode() + "0"))
        for table in ("files", "nodes", "dirs", "subtotals"):
            for exact, low, high in bounds:
                self._conn.execute(f"DELETE FROM {table} WHERE dir = ? OR (dir >= ? AND dir < ?)", (exact, low, high))

    def copy_directory(self, rel_dir: bytes) -> bool:
        """Carry the file rows of `rel_dir` over from the journal this one follows; False when
        that journal cannot be read (the caller then must not reuse the directory)."""
        if self._in_place:
            self._cleared.discard(_db_key(rel_dir))  # the rows are there: keep them
            return True
        if not self._previous:
            return False
        try:
            for table in ("files", "nodes"):
                self._conn.execute(
                    f"INSERT OR REPLACE INTO {table} SELECT * FROM previous.{table} WHERE dir = ?",
                    (_db_key(rel_dir),),
                )
        except sqlite3.Error:
            return False
        return True

    def _flush(self) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._pending)
        self._pending.clear()
        self._conn.executemany("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?)", self._dirs)
        self._dirs.clear()
        self._conn.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?)", self._nodes)
        self._nodes.clear()
        self._conn.executemany("INSERT OR REPLACE INTO subtotals VALUES (?, ?, ?, ?)", self._subtotals)
        self._subtotals.clear()

    def commit(self, meta: Mapping[str, str]) -> None:
        """Make this the journal; call only after the point it describes is saved.

        Raises StateError when it cannot be written (a full disk): the next journal is then
        removed, never left behind (its megabytes once kept the disk full for every later sync),
        and the journal in place stays, matching an older point, which is merely less helpful."""
        try:
            self._publish(meta)
        except (sqlite3.Error, OSError) as err:
            self.abort()
            raise StateError(
                f"the change journal {self.path} was not updated: {_error_text(err)}",
                hint="free space in the agent's state directory; the next sync reads "
                "the files this journal would have let it skip",
            ) from err

    def _publish(self, meta: Mapping[str, str]) -> None:
        if self._open:
            self._settle()
        for key in list(self._cleared):  # walked, and nothing written: empty now
            self._rewriting(key)
        self._flush()
        rows = {**self._meta, **meta}
        self._conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(rows.items()))
        if self._in_place:
            crashpoint.reached("journal.in_place_commit")  # written, not committed: a kill rolls back
            self._conn.execute("COMMIT")  # synchronous=FULL: durable when it returns
            self._conn.close()
            return
        self._conn.commit()
        if self._previous:
            self._conn.execute("DETACH DATABASE previous")
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
            if self._in_place:
                self._conn.execute("ROLLBACK")
            self._conn.close()
        if not self._in_place:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


def _recover(path: Path) -> None:
    """Roll back what a killed in-place writer left (SQLite's hot rollback journal): a read-only
    opener cannot, and a new journal renamed over `path` must never meet an old one's. A
    read-write open does it (SQLite undoes a hot journal on first access)."""
    if not os.path.exists(f"{path}-journal") or not path.exists():
        return
    try:
        conn = sqlite3.connect(str(path))
        try:
            conn.execute("SELECT count(*) FROM meta").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        pass  # a writer holds it (its own transaction, live): nothing to undo


def writing_error(path: Path, err: sqlite3.Error | OSError) -> StateError:
    """A failure to write the next journal while a snapshot runs (a full disk), for users."""
    return StateError(
        f"writing the change journal {path}.new: {_error_text(err)}",
        hint="free space in the agent's state directory; no recovery point was saved",
    )


def _error_text(err: sqlite3.Error | OSError) -> str:
    if isinstance(err, OSError):
        return os_error_text(err)
    if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return "no space left: the filesystem is full"
    return str(err)
