"""Turn a directory into a recovery point's tree, reading only what changed.

Walks the source (sorted, depth first), captures each entry's metadata, and for a regular
file either reuses the journal's chunk list (sync, identity unchanged, every chunk still in
the repository) or reads the file through the sparse-aware reader, cuts it into chunks and
hands them to the engine's writer, which stores only chunks the repository lacks. Tree blobs
are saved bottom-up. So a sync with nothing changed costs an lstat, an xattr list and a
journal lookup per file, never a read.

Unchanged directories cost less still: the journal keeps, per directory, the tree blob the
last point stored and a key of every input that tree was built from (each entry's name and
lstat facts as the tree records them, and each subdirectory's tree id). A sync whose lstats
give the same key reuses that tree after checking the repository still has it and every
chunk its files name: no xattr reads, no journal entry decoding, no tree encoding, hashing
or storing, and the directory's journal rows are carried over in one statement. Content
and xattrs are covered by the key as by the per-file journal: any change to either moves
the inode's ctime, which is in the key. In a directory that must be rebuilt (a file in it
changed), each entry whose facts are unchanged reuses its encoded node from the journal the
same way, so only changed entries are captured (xattrs, journal checks) and encoded again;
the chunks of the directory's files are checked with one look-up, and a journal changed in
place keeps the unchanged entries' rows as they are (journal.py).
A `full` never reuses (it reads everything), nor does an archive with a `reread` policy
(it decides per file what to trust).

A file changed within its timestamp's granularity of the previous sync's start is never
trusted (journal.py, racily clean): it is read again, and its directory is not reused.

A `full` reads every file and compares it with the journal: a file whose identity matches
but whose content differs changed behind the filesystem's back (a silent change); those are
counted and named in the result. Entries that vanish or cannot be read are listed as errors
(the point will be incomplete) and left out of the tree; the walk goes on.

Names are bytes from the directory walk to the tree and the journal, never decoded (a
name that is not UTF-8 is stored and restored exactly); they become text only in messages
(`show_name`) and for include/exclude patterns (`name_text`).

It never prints; it reports to the Progress protocol. It holds no file content beyond one
reused read buffer (chunks are views of it): the writer copies new chunks and bounds the
data in flight.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import blake3

from protectctl.agent.fsmeta import base_node, group_name, node_type, read_xattrs, user_name
from protectctl.agent.journal import FileIdentity, Journal, JournalEntry, JournalWriter, chunk_ids, unchanged
from protectctl.agent.patterns import PathFilter
from protectctl.agent.sparse import DataReader
from protectctl.engine.ids import BlobId
from protectctl.engine.names import name_text, show_name
from protectctl.engine.repository import BlobKind, BlobWriter, Repository
from protectctl.engine.tree import HashScheme, Node, NodeType, Tree, assemble_tree, encode_node, extents_hash
from protectctl.errors import ProviderError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    import mmap

    from protectctl.agent.filereads import FileRead, FileReads
    from protectctl.agent.workers import ParallelWalk

log = logging.getLogger(__name__)

_SILENT_NAMED = 100  # silent changes named in the point; all are counted
# A sync or a `full` reads a directory's big files in threads only when they are this much
# together: for a few MiB, starting threads and handing the GIL around costs more than the
# overlap gives (measured on the bench's 1 % sync: docs/performance.md).
READ_AHEAD_MIN_BYTES = 32 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    root: Path
    filter: PathFilter
    one_file_system: bool = False
    verify_all: bool = False  # full: read every file and compare with the journal
    # (path relative to root, lstat) -> read the file although the journal says it is unchanged
    reread: Callable[[bytes, os.stat_result], bool] | None = None
    keep_trees: bool = False  # remember every tree saved (ArchiveResult.trees)
    snapshot: SnapshotView | None = None  # the tree is read from a btrfs snapshot of the source
    big_files: BigFileReader | None = None  # reads big files its own way (agent/tracking.py)
    # directories a change journal knows are unchanged: their trees are reused unwalked (agent/changes.py)
    unchanged: UnchangedTrees | None = None
    # Worker processes a first backup may use (agent/workers.py), and threads reading big files
    # (agent/filereads.py); 1: this process, one thread.
    parallelism: int = 1


@dataclass(frozen=True, slots=True)
class SnapshotView:
    """The walk reads a btrfs snapshot of the source (agent/snapshots.py). Entries of the snapshot
    are recorded with the live source's device number (each snapshot gets its own, and trees and
    the journal hold it). A nested subvolume is an empty placeholder in a snapshot (inode 2 on
    another device): it is read live, from the same place below `live_root`."""

    snapshot_dev: int
    live_dev: int
    live_root: bytes
    snapshot_root: bytes  # where the walk starts, inside the snapshot


_BTRFS_PLACEHOLDER_INO = 2  # BTRFS_EMPTY_SUBVOL_DIR_OBJECTID


class UnchangedTrees(Protocol):
    """The one hook of a journal walk (agent/changes.py): the walker asks before it enters a
    directory below the root; everything it is told is unchanged is reused, not walked."""

    def tree(self, rel: bytes) -> tuple[BlobId, int, int, int] | None:
        """The last point's tree of `rel` and what it holds below it (files, directories, bytes)
        when nothing in or below `rel` changed since; None: walk it."""
        ...


class BigFileReader(Protocol):
    """Reads a big file's content (a reflink clone, changed blocks only): agent/tracking.py."""

    min_size: int

    def read(
        self,
        archiver: Archiver,
        fd: int,
        st: os.stat_result,
        rel: bytes,
        previous: JournalEntry | None,
        *,
        present: bool = False,
    ) -> Content | None:
        """The stored content of the open file `fd`, or None to leave it to the archiver.
        `present`: every chunk of `previous` is known to be in the repository (checked with its
        directory's in this run)."""
        ...


@dataclass(frozen=True, slots=True)
class Content:
    size: int
    chunks: tuple[BlobId, ...]
    holes: tuple[tuple[int, int], ...]
    content_hash: bytes
    hash_scheme: HashScheme = HashScheme.CONTENT


@dataclass(frozen=True, slots=True)
class _Dir:
    """The directory being walked: its path from the root (raw names joined by "/") and its
    journal entries."""

    rel: bytes
    known: Mapping[bytes, JournalEntry]
    present: bool = False  # every chunk `known` names was found in the repository in this run


@dataclass(frozen=True, slots=True)
class _Entry:
    """A directory entry kept by the scan: lstat facts and, for a directory, its saved tree."""

    name: bytes
    path: bytes
    rel: bytes
    st: os.stat_result
    kind: NodeType
    subtree: BlobId | None = None


@dataclass(slots=True)
class ArchiveResult:
    tree: BlobId | None = None
    files: int = 0
    dirs: int = 0
    dirs_reused: int = 0  # directories whose tree was reused from the journal
    nodes_reused: int = 0  # entries of rebuilt directories whose encoded node was reused
    bytes_total: int = 0
    bytes_read: int = 0
    files_read: int = 0
    files_reused: int = 0
    silent_changes: int = 0
    silent_changed: list[str] = field(default_factory=list)  # paths as show_name prints them
    errors: list[str] = field(default_factory=list)
    root: os.stat_result | None = None
    trees: dict[BlobId, Tree] = field(default_factory=dict)  # with keep_trees
    live_subvolumes: list[str] = field(default_factory=list)  # read live: not in the snapshot
    linked_dirs: set[bytes] = field(default_factory=set)  # directories holding files with hard links


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
        # A file up to the smallest chunk is one chunk: read whole, no chunker (_read_small).
        self._one_chunk = min(repo.chunker_params.min_size, len(self._buf))
        self._links: dict[tuple[int, int], Content] = {}
        self._root_dev = 0
        self._noatime = True
        # A `reread` policy vets journal entries file by file: neither a directory's tree nor an
        # entry's node may be reused behind its back. Kept trees are built node by node.
        self._plain = options.reread is None and not options.keep_trees
        self._reuse_dirs = self._plain and not options.verify_all
        self._racy_after = journal.racy_after_ns
        self._reads: FileReads | None = None  # big files read ahead in threads (run, parallelism > 1)
        self._walk: ParallelWalk | None = None  # a sync's new subtrees (_new_subtree)

    def run(self) -> ArchiveResult:
        """Archive the root; raises ProviderError when the root itself is unusable."""
        root = self.options.root
        try:
            st = self._on_device(os.stat(root))
        except OSError as err:
            raise ProviderError(f"source path {root} cannot be read: {err.strerror}") from err
        if not stat.S_ISDIR(st.st_mode):
            raise ProviderError(f"source path {root} is not a directory")
        self._root_dev = st.st_dev
        self.result.root = st
        included = not self.options.filter.has_includes
        if self.options.parallelism > 1:
            from protectctl.agent.filereads import FileReads

            self._reads = FileReads(self, self.options.parallelism)
        try:
            if self.options.parallelism > 1 and self._plain and self.journal.point_id is None:
                # Everything is new (no journal): worker processes capture it (agent/workers.py).
                self.result.tree = self._new_subtrees().archive(os.fsencode(root), b"", included=included)
            else:
                self.result.tree = self._archive_dir(os.fsencode(root), b"", included=included)
        finally:
            # The file-read threads first: once they are joined, none can wake the walk's pipe.
            if self._reads is not None:
                self._reads.close()
                self._reads = None
            if self._walk is not None:
                self._walk.close()
                self._walk = None
        if self.result.tree is None:  # includes matched nothing: an empty point, not no point
            self.result.tree = self.repo.save_tree(self.writer, Tree(()))
        return self.result

    # -- directories ---------------------------------------------------------------------

    def _archive_dir(self, path: bytes, rel: bytes, *, included: bool) -> BlobId | None:
        """Save the tree of `path`; None when include patterns select nothing in or below it."""
        errors = len(self.result.errors)
        r = self.result
        before = (r.files, r.dirs, r.bytes_total)
        entries = self._scan(path, rel, included=included)
        if not entries and not included:
            return None
        if not self._plain:
            return self._save_nodes(rel, entries, included=included)
        facts = [_entry_facts(e) for e in entries]
        tree = self._reuse(rel, _key(facts), entries) if self._reuse_dirs else None
        if tree is None:
            tree = self._save_encoded(rel, entries, facts, included=included, errors=errors)
        if tree is not None and len(r.errors) == errors:  # what the subtree holds, for a journal walk
            self.journal_out.add_subtotal(rel, r.files - before[0], r.dirs - before[1], r.bytes_total - before[2])
        return tree

    def _save_nodes(self, rel: bytes, entries: Sequence[_Entry], *, included: bool) -> BlobId | None:
        """The tree built node by node and encoded whole (for a `reread` policy, or to keep trees)."""
        here = _Dir(rel, self.journal.directory(rel))  # one journal query per directory, not per file
        self._read_ahead(entries, here)
        nodes = [node for entry in entries if (node := self._node(entry, here)) is not None]
        self._drop_read_ahead()
        if not nodes and not included:
            return None
        nodes.sort(key=lambda n: n.name)
        tree = Tree(tuple(nodes))
        tree_id = self.repo.save_tree(self.writer, tree)
        if self.options.keep_trees:
            self.result.trees[tree_id] = tree
        return tree_id

    def _save_encoded(
        self, rel: bytes, entries: Sequence[_Entry], facts: Sequence[bytes], *, included: bool, errors: int
    ) -> BlobId | None:
        """The tree from each entry's encoded node: reused from the journal when the entry's facts
        did not change, else captured and encoded now. Remembers facts and encodings for next time."""
        entries_known = self.journal.directory(rel)
        known = self.journal.directory_nodes(rel) if self._reuse_dirs else {}
        # One look-up for every chunk the directory's files had (a prune may have removed some):
        # when all are there, no file's needs checking again; else each is checked alone.
        ids = chunk_ids(entries_known) if known else None
        present = ids is not None and self.repo.has_blobs(ids)
        here = _Dir(rel, entries_known, present)
        # (name, facts digest, encoded node, seal when reused from the journal), in name order
        kept: list[tuple[bytes, bytes, str, bytes | None]] = []
        kept_files: list[bytes] = []  # files whose journal entries are reused
        self._read_ahead(entries, here)
        for entry, fact in zip(entries, facts, strict=True):
            stored = known.get(entry.name)
            encoded = self._reuse_node(entry, fact, here, stored, present=present)
            if encoded is None:
                node = self._node(entry, here)
                if node is None:
                    continue
                fact, encoded = _node_facts(node), encode_node(node)
                kept.append((entry.name, fact, encoded, None))
            else:
                assert stored is not None
                kept.append((entry.name, fact, encoded, stored[0]))
                if entry.kind is NodeType.FILE:
                    kept_files.append(entry.name)
        self._drop_read_ahead()
        out = self.journal_out
        if kept_files:  # the journal's rows, unchanged (a journal changed in place: left as they are)
            out.keep(rel, kept_files, here.known)
        if not kept and not included:
            return None
        tree, _ = self.writer.add(BlobKind.TREE, assemble_tree([encoded for _, _, encoded, _ in kept]))
        if len(self.result.errors) == errors:  # nothing lost here or below: reusable next time
            out.add_directory(rel, _key([fact for _, fact, _, _ in kept]), tree)
            reused = []
            for name, fact, encoded, seal in kept:
                if seal is None:
                    out.add_node(rel, name, _seal(fact, encoded), encoded)
                else:
                    reused.append((name, seal, encoded))
            out.keep_nodes(rel, reused)
        return tree

    def _reuse_node(
        self, entry: _Entry, fact: bytes, here: _Dir, known: tuple[bytes, str] | None, *, present: bool = False
    ) -> str | None:
        """The encoded node the last point stored for `entry` when its facts are unchanged (for a
        file: its journal entry matches and every chunk is still in the repository, which
        `present` says for all the directory's). The stored seal binds the facts to the
        encoding, so a damaged journal row is rebuilt, never stored."""
        if known is None or not known[1].isascii() or known[0] != _seal(fact, known[1]):
            return None
        if entry.kind is NodeType.FILE:
            if (
                not unchanged(here.known, entry.name, entry.st)
                or self._racy(entry.st)
                or not (present or self.repo.has_blobs(here.known[entry.name].chunks))
            ):
                return None
            size = entry.st.st_size  # the journal's: the identities are equal
            self.result.files += 1
            self.result.files_reused += 1
            self.result.bytes_total += size
            self.progress.advance(files=1, bytes_done=size)  # done, never read
        elif entry.kind is NodeType.DIR:
            self.result.dirs += 1
        self.result.nodes_reused += 1
        return known[1]

    # -- big files read ahead (agent/filereads.py) --------------------------------------------

    def _read_ahead(self, entries: Sequence[_Entry], here: _Dir) -> None:
        """Have the file-read threads read this directory's big files that will be read, when
        there are at least two (one alone is read in place: the writer's threads compress it)
        of at least READ_AHEAD_MIN_BYTES together. A sync reads ahead only files new to the
        journal: a changed file is mostly chunks the repository has (read, cut and hashed, not
        compressed), where two threads cost more CPU than they saved on this machine."""
        if self._reads is None:
            return
        every = self.options.verify_all  # a `full` reads every file; a sync only the new ones ahead
        chosen = [
            e
            for e in entries
            if e.kind is NodeType.FILE
            and (every or e.name not in here.known)
            and self.reads_ahead(e.st, e.name, e.rel, here)
        ]
        if len(chosen) > 1 and sum(e.st.st_size for e in chosen) >= READ_AHEAD_MIN_BYTES:
            self._reads.want([e.path for e in chosen])

    def _drop_read_ahead(self) -> None:
        if self._reads is not None and self._reads.pending():
            self._reads.drop_rest()

    def reads_ahead(self, st: os.stat_result, name: bytes, rel: bytes, here: _Dir) -> bool:
        """`_content` will read this file, and it is worth a thread: more than one chunk (or
        sparse), one link (a hard link's later names reuse the first one's content, in walk
        order), not a BigFileReader's."""
        if st.st_nlink > 1 or (st.st_size <= self._one_chunk and _dense(st)):
            return False
        big = self.options.big_files
        if big is not None and st.st_size >= big.min_size:
            return False
        previous = here.known.get(name)
        if previous is None or self.options.verify_all or self._racy(st):
            return True
        if self.options.reread is not None and self.options.reread(rel, st):
            return True
        return previous.identity != FileIdentity.of(st) or not self._present(previous.chunks)

    def _took(self, read: FileRead, rel: bytes) -> tuple[Content, os.stat_result] | None:
        """A file read ahead, accounted here as `_read` accounts a file read in place."""
        if read.error is not None:
            self._error(rel, read.error)
            return None
        if read.content is None or read.st is None:
            self.result.errors.append(f"{show_name(rel)}: changed type while being read")
            return None
        self.result.files_read += 1
        self.result.bytes_read += read.bytes_read
        self.progress.advance(bytes_done=read.bytes_read)  # the writer did not count it (another thread)
        return read.content, read.st

    def _scan(self, path: bytes, rel: bytes, *, included: bool) -> list[_Entry]:
        """lstat and filter the entries of `path`, archiving subdirectories on the way (bottom-up)."""
        entries: list[_Entry] = []
        filt = self.options.filter
        for name, entry_path in self._list(path, rel):
            child_rel = rel + b"/" + name if rel else name
            try:
                st = self._on_device(os.lstat(entry_path))
            except OSError as err:
                self._error(child_rel, err)
                continue
            kind = node_type(st.st_mode)
            if kind is None:
                continue
            if kind is NodeType.FILE and st.st_nlink > 1:
                self.result.linked_dirs.add(rel)  # a change through another link is seen elsewhere
            is_dir = kind is NodeType.DIR
            pattern_path = name_text(child_rel)  # patterns are text: each undecodable byte is one character
            if filt.excluded(pattern_path, is_dir):
                continue
            view = self.options.snapshot
            if (
                is_dir
                and view is not None
                and st.st_ino == _BTRFS_PLACEHOLDER_INO
                and st.st_dev != view.live_dev
                and entry_path.startswith(view.snapshot_root + b"/")
            ):
                try:  # a nested subvolume, which the snapshot does not hold: read it live
                    entry_path = view.live_root + b"/" + child_rel
                    st = os.lstat(entry_path)
                except OSError as err:
                    self._error(child_rel, err)
                    continue
                self.result.live_subvolumes.append(show_name(child_rel))
            child_included = included or filt.included(pattern_path, is_dir)
            if is_dir:
                subtree = self._subtree(entry_path, child_rel, st, included=child_included)
                if subtree is not None:
                    entries.append(_Entry(name, entry_path, child_rel, st, kind, subtree))
            elif child_included:
                entries.append(_Entry(name, entry_path, child_rel, st, kind))
        return entries

    def _subtree(self, path: bytes, rel: bytes, st: os.stat_result, *, included: bool) -> BlobId | None:
        if self.options.one_file_system and st.st_dev != self._root_dev:
            # A mount point: keep the directory itself, not the other filesystem's content.
            return self.repo.save_tree(self.writer, Tree(()))
        known = self.options.unchanged.tree(rel) if self.options.unchanged is not None else None
        if known is not None:
            tree, files, dirs, size = known
            self.result.files += files
            self.result.files_reused += files
            self.result.dirs += dirs
            self.result.dirs_reused += 1
            self.result.bytes_total += size
            if files:
                self.progress.advance(files=files, bytes_done=size)
            return tree
        if self._new_subtree(path, rel):
            return self._new_subtrees().archive(path, rel, included=included)
        return self._archive_dir(path, rel, included=included)

    def _new_subtree(self, path: bytes, rel: bytes) -> bool:
        """A sync met a directory the journal knows nothing in or below that looks big at its top
        (`_looks_big`): captured like a first backup (agent/workers.py: worker processes once it
        holds enough files). Only for a plain sync whose journal is not rewritten in place (a
        change journal's walk keeps to itself)."""
        if self.options.parallelism <= 1 or not self._reuse_dirs or self.options.unchanged is not None:
            return False
        journal = self.journal
        if journal.point_id is None or journal.directory_tree(rel) is not None or journal.knows_below(rel):
            return False
        return _looks_big(path)

    def _new_subtrees(self) -> ParallelWalk:
        """The run's parallel walk (a first backup's, or a sync's for its new subtrees)."""
        if self._walk is None:
            from protectctl.agent.workers import ParallelWalk

            self._walk = ParallelWalk(self, self.repo, self.options.parallelism)
        return self._walk

    def _reuse(self, rel: bytes, key: bytes, entries: Sequence[_Entry]) -> BlobId | None:
        """The tree the last point stored for `rel` when nothing it was built from changed."""
        if any(self._racy(e.st) for e in entries if e.kind is NodeType.FILE):
            return None
        stored = self.journal.directory_tree(rel)
        if stored is None or stored[0] != key:
            return None
        tree = BlobId(stored[1])
        # A prune may have removed the tree or chunks since the journal was written.
        chunk_lists = self.journal.directory_chunks(rel)
        if chunk_lists is None or not self.repo.has_blobs([tree, *_split_ids(chunk_lists)]):
            return None
        if not self.journal_out.copy_directory(rel):
            return None
        self.journal_out.add_directory(rel, stored[0], tree)
        files = [e for e in entries if e.kind is NodeType.FILE]
        self.result.files += len(files)
        self.result.files_reused += len(files)
        reused_bytes = sum(e.st.st_size for e in files)
        self.result.bytes_total += reused_bytes
        self.result.dirs += sum(1 for e in entries if e.kind is NodeType.DIR)
        self.result.dirs_reused += 1
        if files:
            self.progress.advance(files=len(files), bytes_done=reused_bytes)
        return tree

    def _list(self, path: bytes, rel: bytes) -> list[tuple[bytes, bytes]]:
        """(name, path) of each entry, sorted by name as trees are: names are bytes, never decoded."""
        try:
            with os.scandir(path) as entries:
                found = [(e.name, e.path) for e in entries]
        except OSError as err:
            self._error(rel, err)
            return []
        return sorted(found)

    def _node(self, entry: _Entry, here: _Dir) -> Node | None:
        """The tree node of one scanned entry; None (and an error) when it cannot be captured."""
        if entry.kind is NodeType.DIR:
            try:
                xattrs = read_xattrs(entry.path)
            except OSError as err:
                self._error(entry.rel, err)
                return None
            self.result.dirs += 1
            return base_node(entry.name, entry.st, NodeType.DIR, xattrs, subtree=entry.subtree)
        try:
            return self._leaf_node(entry.path, entry.name, entry.rel, here, entry.st, entry.kind)
        except OSError as err:
            self._error(entry.rel, err)
            return None

    # -- leaves --------------------------------------------------------------------------

    def _leaf_node(
        self, path: bytes, name: bytes, rel: bytes, here: _Dir, st: os.stat_result, kind: NodeType
    ) -> Node | None:
        xattrs = read_xattrs(path)
        if kind is NodeType.SYMLINK:
            return base_node(name, st, kind, xattrs, link_target=os.readlink(path))
        if kind is not NodeType.FILE:
            return base_node(name, st, kind, xattrs)
        read_before = self.result.bytes_read
        content, st = self._content(path, name, rel, here, st)
        if content is None:
            return None
        self.result.files += 1
        self.result.bytes_total += content.size
        # The writer counted the data it was handed; the rest of the file (reused from the
        # journal or a hard link, or holes) is done too: progress counts logical bytes.
        self.progress.advance(files=1, bytes_done=max(0, content.size - (self.result.bytes_read - read_before)))
        return base_node(
            name,
            st,
            kind,
            xattrs,
            size=content.size,
            chunks=content.chunks,
            holes=content.holes,
            content_hash=content.content_hash,
            hash_scheme=content.hash_scheme,
        )

    def _content(
        self, path: bytes, name: bytes, rel: bytes, here: _Dir, st: os.stat_result
    ) -> tuple[Content | None, os.stat_result]:
        """The file's stored content: reused from a hard link or the journal, or read now."""
        link_key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and link_key in self._links:
            content = self._links[link_key]
            self._remember(here.rel, name, FileIdentity.of(st), content)
            return content, st
        previous = here.known.get(name)
        if previous is not None and self.options.reread is not None and self.options.reread(rel, st):
            previous = None  # the caller distrusts the journal for this file: read it
        if previous is not None and self._racy(st):
            previous = None  # changed too close to the last sync to trust its timestamps
        identity = FileIdentity.of(st)
        reusable = (
            previous is not None and previous.identity == identity and (here.present or self._present(previous.chunks))
        )
        if reusable and not self.options.verify_all:
            assert previous is not None
            content = Content(
                identity.size, _ids(previous.chunks), previous.holes, previous.content_hash, previous.hash_scheme
            )
            self.result.files_reused += 1
        else:
            read = self._read(path, rel, here.known.get(name), present=here.present)
            if read is None:
                return None, st
            content, st = read
            identity = FileIdentity.of(st)
            if reusable and previous is not None and _differs(previous, content):
                self._silent_change(rel)
        if st.st_nlink > 1:
            self._links[link_key] = content
        self._remember(here.rel, name, identity, content)
        return content, st

    def _racy(self, st: os.stat_result) -> bool:
        after = self._racy_after
        return after is not None and (st.st_mtime_ns >= after or st.st_ctime_ns >= after)

    def _present(self, chunks: tuple[bytes, ...]) -> bool:
        # A prune may have removed chunks since the journal was written: never trust it blindly.
        return self.repo.has_blobs(chunks)  # one lock for the list: a tracked file has 10^5 chunks

    def _remember(self, rel_dir: bytes, name: bytes, identity: FileIdentity, content: Content) -> None:
        entry = JournalEntry(identity, content.chunks, content.holes, content.content_hash, content.hash_scheme)
        self.journal_out.add(rel_dir, name, entry)

    def _silent_change(self, rel: bytes) -> None:
        self.result.silent_changes += 1
        if len(self.result.silent_changed) < _SILENT_NAMED:
            self.result.silent_changed.append(show_name(rel))
        log.warning("archive.silent_change", extra={"path": show_name(rel)})

    def _read(
        self, path: bytes, rel: bytes, previous: JournalEntry | None = None, *, present: bool = False
    ) -> tuple[Content, os.stat_result] | None:
        """Read, chunk and store one file; None (and an error) when it cannot be read."""
        if self._reads is not None and (ahead := self._reads.take(path)) is not None:
            return self._took(ahead, rel)
        try:
            fd = self._open(path)
        except OSError as err:
            self._error(rel, err)
            return None
        try:
            st = self._on_device(os.fstat(fd))
            if not stat.S_ISREG(st.st_mode):  # replaced by something else since the lstat
                self.result.errors.append(f"{show_name(rel)}: changed type while being read")
                return None
            big = self.options.big_files
            content = None
            if big is not None and st.st_size >= big.min_size:
                content = big.read(self, fd, st, rel, previous, present=present)
            if content is None:
                content = self._read_content(fd, st)
        except OSError as err:
            self._error(rel, err)
            return None
        finally:
            os.close(fd)
        self.result.files_read += 1
        return content, st

    def _read_content(self, fd: int, st: os.stat_result) -> Content:
        """Hash, chunk and store the file's data (`_chunk_file`, this thread's buffer)."""
        content, got = self._chunk_file(fd, st, self._buf)
        self.result.bytes_read += got
        return content

    def _chunk_file(
        self, fd: int, st: os.stat_result, buf: mmap.mmap, check: Callable[[], None] | None = None
    ) -> tuple[Content, int]:
        """The file's content and the bytes read: one reused buffer, a few large reads, no copies
        (a file that fits the buffer is read whole with one preadv). A file with holes gets an
        EXTENTS hash (its holes cost nothing to hash, here or at restore), any other the plain
        CONTENT hash earlier releases wrote, so its node is unchanged. Touches nothing of the
        archiver but the writer (thread-safe): the file-read threads run it too, with `check`
        (called between chunks; they report progress themselves)."""
        if st.st_size <= self._one_chunk and _dense(st):
            return self._read_small(fd, st.st_size, buf, count=check is None)
        hasher = self.repo.content_hasher()
        reader = DataReader(fd, st.st_size, hasher, detect_holes=not _dense(st))
        add = self.writer.add
        pieces = self._chunker.iter_reader(reader.readinto, buf)
        if check is None:
            chunks = tuple(add(BlobKind.DATA, piece)[0] for piece in pieces)
        else:
            found: list[BlobId] = []
            for piece in pieces:
                check()
                found.append(add(BlobKind.DATA, piece, count=False)[0])
            chunks = tuple(found)
        holes = tuple(reader.holes)
        if not holes:
            return Content(reader.limit, chunks, holes, hasher.digest()), reader.bytes_read
        digest = extents_hash(self.repo.content_hasher(), reader.limit, holes, hasher.digest())
        return Content(reader.limit, chunks, holes, digest, HashScheme.EXTENTS), reader.bytes_read

    def _on_device(self, st: os.stat_result) -> os.stat_result:
        """`st` as the live source has it: a snapshot's entries get the source's device number."""
        view = self.options.snapshot
        if view is None or st.st_dev != view.snapshot_dev:
            return st
        return _with_device(st, view.live_dev)

    def _read_small(self, fd: int, size: int, buf: mmap.mmap, *, count: bool = True) -> tuple[Content, int]:
        """A dense file no larger than the smallest chunk: one read, one blob, no chunker. Its
        one chunk is the whole content, so its content hash (the same keyed BLAKE3) is the
        blob id: the node equals what the chunked path builds. Capped at `size` like DataReader."""
        view = memoryview(buf)[:size]
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got:]], got)
            if n <= 0:  # shrank under us: store what is there
                break
            got += n
        if not got:
            return Content(0, (), (), self.repo.content_hasher().digest()), 0
        add = self.writer.add
        blob_id, _ = add(BlobKind.DATA, view[:got]) if count else add(BlobKind.DATA, view[:got], count=False)
        return Content(got, (blob_id,), (), bytes(blob_id)), got

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

    def _error(self, rel: bytes, err: OSError) -> None:
        what = "vanished during the backup" if err.errno == errno.ENOENT else (err.strerror or str(err))
        shown = show_name(rel) if rel else "."
        self.result.errors.append(f"{shown}: {what}")
        self.progress.note(f"{shown}: {what}")


# -- directory keys ------------------------------------------------------------------------
# An entry's facts are exactly the metadata its tree node records from lstat (what
# `base_node` takes) plus a directory's subtree id; a directory's key is a digest of its
# entries' facts in name order (facts are kept as digests). `_node_facts` computes them from a node just built,
# `_entry_facts` from the lstat of a later walk: both must agree field by field
# (tests/unit/test_archiver_reuse.py compares reused trees with trees built from scratch).
_KEY_VERSION = b"protectctl-dir-key/3\n"


# Names enter the digest as `name_text` (exact and reversible), which is what earlier releases
# hashed for every UTF-8 name: their journals' keys stay valid.
def _node_facts(n: Node) -> bytes:
    subtree = None if n.subtree is None else bytes(n.subtree)
    return _digest(
        (
            name_text(n.name),
            n.type.value,
            n.mode,
            n.uid,
            n.gid,
            n.user,
            n.group,
            n.mtime_ns,
            n.atime_ns,
            n.ctime_ns,
            n.size,
            n.rdev,
            n.inode,
            n.dev,
            n.nlink,
            subtree,
        )
    )


def _entry_facts(e: _Entry) -> bytes:
    st, kind = e.st, e.kind
    subtree = None if e.subtree is None else bytes(e.subtree)
    return _digest(
        (
            name_text(e.name),
            kind.value,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            user_name(st.st_uid),
            group_name(st.st_gid),
            st.st_mtime_ns,
            st.st_atime_ns,
            st.st_ctime_ns,
            st.st_size if kind is NodeType.FILE or kind is NodeType.SYMLINK else 0,
            st.st_rdev if kind is NodeType.CHARDEV or kind is NodeType.BLOCKDEV else 0,
            st.st_ino,
            st.st_dev,
            st.st_nlink if kind is NodeType.FILE else 1,
            subtree,
        )
    )


def _digest(facts: tuple[object, ...]) -> bytes:
    # repr of str, int, bytes and None is stable across runs and Python versions; 16 bytes keep
    # the journal small (one per entry) and collisions out of reach.
    return blake3.blake3(_KEY_VERSION + repr(facts).encode("utf-8", "surrogatepass")).digest(16)


def _seal(fact: bytes, encoded: str) -> bytes:
    """What the journal keeps beside an encoded node: a digest of its facts and its encoding."""
    return blake3.blake3(fact + encoded.encode("ascii")).digest(16)


def _key(facts: Sequence[bytes]) -> bytes:
    return blake3.blake3(_KEY_VERSION + b"".join(facts)).digest()


def _split_ids(chunk_lists: Sequence[bytes]) -> list[bytes]:
    return [raw[i : i + 32] for raw in chunk_lists for i in range(0, len(raw), 32)]


def _differs(previous: JournalEntry, content: Content) -> bool:
    """The content read differs from what the journal recorded for the same identity. Hashes of
    different schemes or hole maps cannot be compared without hashing holes: not claimed."""
    same_scheme = previous.hash_scheme is content.hash_scheme
    if same_scheme and (content.hash_scheme is HashScheme.CONTENT or previous.holes == content.holes):
        return previous.content_hash != content.content_hash
    return False


# A new directory goes to the parallel walk when it looks like a big subtree at its top: this
# many entries, or this many subdirectories. A few new directories of a few hundred files (a
# sync's usual news) stay with the serial walk: the parallel walk's parent costs a little more
# per file until it starts workers (at SPAWN_AFTER_FILES), and its modules a few MB.
NEW_SUBTREE_ENTRIES = 2000
NEW_SUBTREE_DIRS = 8


def _looks_big(path: bytes) -> bool:
    entries = dirs = 0
    try:
        with os.scandir(path) as found:
            for entry in found:
                entries += 1
                dirs += entry.is_dir(follow_symlinks=False)
                if entries >= NEW_SUBTREE_ENTRIES or dirs >= NEW_SUBTREE_DIRS:
                    return True
    except OSError:
        return False  # the serial walk reports it
    return False


def _dense(st: os.stat_result) -> bool:
    """No holes possible: the file has at least as many blocks allocated as its size needs."""
    return st.st_blocks * 512 >= st.st_size


_STAT_SEQUENCE = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size")
_STAT_EXTRA = tuple(
    name
    for name in dir(os.stat_result)
    if name.startswith("st_") and name not in _STAT_SEQUENCE and name not in ("st_atime", "st_mtime", "st_ctime")
)


def _with_device(st: os.stat_result, dev: int) -> os.stat_result:
    seq = tuple(st)
    extra = {name: getattr(st, name) for name in _STAT_EXTRA}
    extra.update(st_atime=st.st_atime, st_mtime=st.st_mtime, st_ctime=st.st_ctime)
    return os.stat_result((*seq[:2], dev, *seq[3:]), extra)


def _ids(chunks: tuple[bytes, ...]) -> tuple[BlobId, ...]:
    return tuple(BlobId(c) for c in chunks)
