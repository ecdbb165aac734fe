"""Turn a directory into a recovery point's tree, reading only what changed.

Walks the source (sorted, depth first), captures each entry's metadata, and for a regular
file either reuses the journal's chunk list (sync, identity unchanged, every chunk still in
the repository) or reads the file through the sparse-aware reader, cuts it into chunks and
hands them to the engine's writer, which stores only chunks the repository lacks. Tree blobs
are saved bottom-up. So a sync with nothing changed costs an lstat, an xattr list and a
journal lookup per file, never a read.

A `full` reads every file and compares it with the journal: a file whose identity matches
but whose content differs changed behind the filesystem's back (a silent change); those are
counted and named in the result. Entries that vanish or cannot be read are listed as errors
(the point will be incomplete) and left out of the tree; the walk goes on.

It never prints; it reports to the Progress protocol. It holds no file content beyond one
reused read buffer (chunks are views of it): the writer copies new chunks and bounds the
data in flight.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.agent.fsmeta import base_node, node_type, read_xattrs
from protectctl.agent.journal import FileIdentity, Journal, JournalEntry, JournalWriter
from protectctl.agent.patterns import PathFilter
from protectctl.agent.sparse import DataReader
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import BlobKind, BlobWriter, Repository
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import ProviderError
from protectctl.progress import NullProgress, Progress

log = logging.getLogger(__name__)

_SILENT_NAMED = 100  # silent changes named in the point; all are counted
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    root: Path
    filter: PathFilter
    one_file_system: bool = False
    verify_all: bool = False  # full: read every file and compare with the journal


@dataclass(frozen=True, slots=True)
class Content:
    size: int
    chunks: tuple[BlobId, ...]
    holes: tuple[tuple[int, int], ...]
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class _Dir:
    """The directory being walked: its path from the root and its journal entries."""

    rel: str
    known: dict[str, JournalEntry]


@dataclass(slots=True)
class ArchiveResult:
    tree: BlobId | None = None
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    files_read: int = 0
    files_reused: int = 0
    silent_changes: int = 0
    silent_changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    root: os.stat_result | None = None


class Archiver:
    """One snapshot of one directory into one write session."""

    def __init__(
        self,
        repo: Repository,
        writer: BlobWriter,
        journal: Journal,
        journal_out: JournalWriter,
        options: ArchiveOptions,
        progress: Progress | None = None,
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.journal = journal
        self.journal_out = journal_out
        self.options = options
        self.progress = progress or NullProgress()
        self.result = ArchiveResult()
        self._chunker = repo.chunker()
        # One read buffer for every file: chunks are views of it (the writer copies new ones).
        self._buf = self._chunker.read_buffer()
        self._links: dict[tuple[int, int], Content] = {}
        self._root_dev = 0
        self._noatime = True

    def run(self) -> ArchiveResult:
        """Archive the root; raises ProviderError when the root itself is unusable."""
        root = self.options.root
        try:
            st = os.stat(root)
        except OSError as err:
            raise ProviderError(f"source path {root} cannot be read: {err.strerror}") from err
        if not stat.S_ISDIR(st.st_mode):
            raise ProviderError(f"source path {root} is not a directory")
        self._root_dev = st.st_dev
        self.result.root = st
        self.result.tree = self._archive_dir(
            os.fsencode(root), "", included=not self.options.filter.has_includes
        )
        if self.result.tree is None:  # includes matched nothing: an empty point, not no point
            self.result.tree = self.repo.save_tree(self.writer, Tree(()))
        return self.result

    # -- directories ---------------------------------------------------------------------

    def _archive_dir(self, path: bytes, rel: str, *, included: bool) -> BlobId | None:
        """Save the tree of `path`; None when include patterns select nothing in or below it."""
        nodes: list[Node] = []
        # One journal query per directory, not per file: a no-change sync is lookup-bound.
        here = _Dir(rel, self.journal.directory(rel))
        for name, entry_path in self._list(path, rel):
            child_rel = f"{rel}/{name}" if rel else name
            node = self._entry(entry_path, name, child_rel, here, included=included)
            if node is not None:
                nodes.append(node)
        if not nodes and not included:
            return None
        nodes.sort(key=lambda n: n.name)
        return self.repo.save_tree(self.writer, Tree(tuple(nodes)))

    def _list(self, path: bytes, rel: str) -> list[tuple[str, bytes]]:
        try:
            with os.scandir(path) as entries:
                found = [(os.fsdecode(e.name), e.path) for e in entries]
        except OSError as err:
            self._error(rel or ".", err)
            return []
        return sorted(found)

    def _entry(self, path: bytes, name: str, rel: str, here: _Dir, *, included: bool) -> Node | None:
        try:
            st = os.lstat(path)
        except OSError as err:
            self._error(rel, err)
            return None
        kind = node_type(st.st_mode)
        if kind is None:
            return None
        is_dir = kind is NodeType.DIR
        filt = self.options.filter
        if filt.excluded(rel, is_dir):
            return None
        included = included or filt.included(rel, is_dir)
        if is_dir:
            return self._dir_node(path, name, rel, st, included=included)
        if not included:
            return None
        try:
            return self._leaf_node(path, name, rel, here, st, kind)
        except OSError as err:
            self._error(rel, err)
            return None

    def _dir_node(
        self, path: bytes, name: str, rel: str, st: os.stat_result, *, included: bool
    ) -> Node | None:
        if self.options.one_file_system and st.st_dev != self._root_dev:
            # A mount point: keep the directory itself, not the other filesystem's content.
            subtree: BlobId | None = self.repo.save_tree(self.writer, Tree(()))
        else:
            subtree = self._archive_dir(path, rel, included=included)
        if subtree is None:
            return None
        try:
            xattrs = read_xattrs(os.fsdecode(path))
        except OSError as err:
            self._error(rel, err)
            return None
        self.result.dirs += 1
        return base_node(name, st, NodeType.DIR, xattrs, subtree=subtree)

    # -- leaves --------------------------------------------------------------------------

    def _leaf_node(
        self, path: bytes, name: str, rel: str, here: _Dir, st: os.stat_result, kind: NodeType
    ) -> Node | None:
        xattrs = read_xattrs(os.fsdecode(path))
        if kind is NodeType.SYMLINK:
            return base_node(name, st, kind, xattrs, link_target=os.fsdecode(os.readlink(path)))
        if kind is not NodeType.FILE:
            return base_node(name, st, kind, xattrs)
        content, st = self._content(path, name, rel, here, st)
        if content is None:
            return None
        self.result.files += 1
        self.result.bytes_total += content.size
        self.progress.advance(files=1)
        return base_node(
            name,
            st,
            kind,
            xattrs,
            size=content.size,
            chunks=content.chunks,
            holes=content.holes,
            content_hash=content.content_hash,
        )

    def _content(
        self, path: bytes, name: str, rel: str, here: _Dir, st: os.stat_result
    ) -> tuple[Content | None, os.stat_result]:
        """The file's stored content: reused from a hard link or the journal, or read now."""
        link_key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and link_key in self._links:
            content = self._links[link_key]
            self._remember(here.rel, name, FileIdentity.of(st), content)
            return content, st
        previous = here.known.get(name)
        identity = FileIdentity.of(st)
        reusable = previous is not None and previous.identity == identity and self._present(previous.chunks)
        if reusable and not self.options.verify_all:
            assert previous is not None
            content = Content(identity.size, _ids(previous.chunks), previous.holes, previous.content_hash)
            self.result.files_reused += 1
        else:
            read = self._read(path, rel)
            if read is None:
                return None, st
            content, st = read
            identity = FileIdentity.of(st)
            if reusable and previous is not None and previous.content_hash != content.content_hash:
                self._silent_change(rel)
        if st.st_nlink > 1:
            self._links[link_key] = content
        self._remember(here.rel, name, identity, content)
        return content, st

    def _present(self, chunks: tuple[bytes, ...]) -> bool:
        # A prune may have removed chunks since the journal was written: never trust it blindly.
        return all(self.repo.has_blob(BlobId(c)) for c in chunks)

    def _remember(self, rel_dir: str, name: str, identity: FileIdentity, content: Content) -> None:
        self.journal_out.add(
            rel_dir, name, JournalEntry(identity, content.chunks, content.holes, content.content_hash)
        )

    def _silent_change(self, rel: str) -> None:
        self.result.silent_changes += 1
        if len(self.result.silent_changed) < _SILENT_NAMED:
            self.result.silent_changed.append(rel)
        log.warning("archive.silent_change", extra={"path": rel})

    def _read(self, path: bytes, rel: str) -> tuple[Content, os.stat_result] | None:
        """Read, chunk and store one file; None (and an error) when it cannot be read."""
        try:
            fd = self._open(path)
        except OSError as err:
            self._error(rel, err)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced by something else since the lstat
                self.result.errors.append(f"{rel}: changed type while being read")
                return None
            content = self._read_content(fd, st)
        except OSError as err:
            self._error(rel, err)
            return None
        finally:
            os.close(fd)
        self.result.files_read += 1
        return content, st

    def _read_content(self, fd: int, st: os.stat_result) -> Content:
        """Hash, chunk and store the file's data: one reused buffer, a few large reads, no copies
        (a file that fits the buffer is read whole with one preadv)."""
        hasher = self.repo.content_hasher()
        reader = DataReader(fd, st.st_size, hasher, detect_holes=not _dense(st))
        add = self.writer.add
        pieces = self._chunker.iter_reader(reader.readinto, self._buf)
        chunks = tuple(add(BlobKind.DATA, piece)[0] for piece in pieces)
        self.result.bytes_read += reader.bytes_read
        return Content(reader.limit, chunks, tuple(reader.holes), hasher.digest())

    def _open(self, path: bytes) -> int:
        # O_NOATIME keeps a backup from touching every file's atime; only the owner or root
        # may use it, so fall back once it is refused. O_NONBLOCK: a FIFO swapped in after
        # the lstat must not hang the job (it is refused by the S_ISREG check).
        if self._noatime:
            try:
                return os.open(path, _READ_FLAGS | os.O_NOATIME)
            except PermissionError as err:
                if err.errno != errno.EPERM:
                    raise
                self._noatime = False
        return os.open(path, _READ_FLAGS)

    def _error(self, rel: str, err: OSError) -> None:
        what = "vanished during the backup" if err.errno == errno.ENOENT else (err.strerror or str(err))
        self.result.errors.append(f"{rel}: {what}")
        self.progress.note(f"{rel}: {what}")


def _dense(st: os.stat_result) -> bool:
    """No holes possible: the file has at least as many blocks allocated as its size needs."""
    return st.st_blocks * 512 >= st.st_size


def _ids(chunks: tuple[bytes, ...]) -> tuple[BlobId, ...]:
    return tuple(BlobId(c) for c in chunks)
