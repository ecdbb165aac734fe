"""Restore a stored tree to a directory: plan (what, how much, is there room), then write.

The one entry point providers call. A dry run stops after planning and writes nothing.
A real run refuses a non-empty target unless told to overwrite, refuses when the target
filesystem lacks the room, and raises RestoreError listing the entries that failed
(including content that did not match its stored hash) after restoring all the others.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from protectctl.agent.sparse import Hasher
from protectctl.engine.ids import BlobId
from protectctl.engine.names import show_name
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.engine.tree import NodeType, Tree
from protectctl.errors import RestoreError
from protectctl.progress import NullProgress, Progress
from protectctl.provider import RestoreOutcome
from protectctl.restore.fs import FsRestorer, RestoreReport
from protectctl.restore.progress_marker import MARKER, clear_marker, extras, read_marker, write_marker
from protectctl.restore.selection import PointReader, Selected, count, select

_ERRORS_SHOWN = 20
# Decoded trees kept for the walks after the first (select, --delete's walk, then the write
# walk), least recently used first out, by an estimate of their size in memory: a decoded node
# is ~0.8 KB, a chunk id ~0.1 KB more. The count walk reads trees without decoding or keeping
# them (selection.count), so what is cached is mostly the trees above the selection.
_TREE_CACHE_BYTES = 32 << 20
_NODE_BYTES = 900
_CHUNK_BYTES = 100


class CachedTrees:
    """A PointReader whose decoded trees are memoised, up to `_TREE_CACHE_BYTES` (estimated)."""

    def __init__(self, reader: PointReader, *, budget: int = _TREE_CACHE_BYTES) -> None:
        self._reader = reader
        self._trees: OrderedDict[BlobId, tuple[Tree, int]] = OrderedDict()
        self._budget = budget
        self._bytes = 0
        # Restore checks each file's whole content hash, so blobs need no id re-hash each.
        self.load_blob_unchecked: Callable[[BlobId], bytes] = getattr(reader, "load_blob_unchecked", reader.load_blob)

        into = getattr(reader, "load_blob_into", None)
        if into is not None:
            self.load_blob_into: Callable[..., memoryview] = into
            # The repository's index knows each blob's length without reading it: a large file
            # can then be restored in ranges (fs.py). The tape reader offers both (its record tables).
            self.blob_size: Callable[[BlobId], int] = getattr(reader, "blob_size")  # noqa: B009
        # A repository on a local disk: small files can be written by worker processes that
        # read its packs themselves (restore/workers.py), given each chunk's place and the keys.
        if isinstance(reader, Repository) and type(reader.storage) is LocalStorage:
            self.worker_source: tuple[bytes, bytes, str] = (
                reader.encryption_key(),
                reader.id_key(),
                str(reader.storage.path),
            )
            self.blob_place: Callable[[BlobId], tuple[str, int, int, int, str]] = partial(_place, reader)

    def load_tree(self, blob_id: BlobId) -> Tree:
        cached = self._trees.get(blob_id)
        if cached is not None:
            self._trees.move_to_end(blob_id)
            return cached[0]
        tree = self._reader.load_tree(blob_id)
        cost = _NODE_BYTES * len(tree.nodes) + _CHUNK_BYTES * sum(len(n.chunks) for n in tree.nodes)
        if cost <= self._budget:
            self._trees[blob_id] = (tree, cost)
            self._bytes += cost
            while self._bytes > self._budget:
                _, (_, dropped) = self._trees.popitem(last=False)
                self._bytes -= dropped
        return tree

    def forget_tree(self, blob_id: BlobId) -> None:
        """The last walk is done with this tree: free it."""
        cached = self._trees.pop(blob_id, None)
        if cached is not None:
            self._bytes -= cached[1]

    def cached_bytes(self) -> int:
        """The estimated memory of the trees held (tests)."""
        return self._bytes

    def load_blob(self, blob_id: BlobId) -> bytes:
        return self._reader.load_blob(blob_id)

    def content_hasher(self) -> Hasher:
        return self._reader.content_hasher()


def _place(repo: Repository, blob_id: BlobId) -> tuple[str, int, int, int, str]:
    """Where a chunk is stored, for a restore worker process (restore/workers.py `Location`)."""
    located = repo.blob_location(blob_id)
    entry = located.entry
    return located.pack, entry.offset, entry.length, entry.raw_length, entry.kind.value


def restore_tree(
    repo: PointReader,
    tree: BlobId,
    target: Path,
    *,
    subpaths: Sequence[str] = (),
    dry_run: bool = False,
    overwrite: bool = False,
    root_meta: Mapping[str, object] | None = None,
    progress: Progress | None = None,
    writeback: bool = False,
    delete: bool = False,
    resume: bool = False,
) -> RestoreOutcome:
    """Restore `tree` (or its `subpaths`) below `target`; raises RestoreError. `writeback`: start
    writing data to disk as it is restored (for a caller that fsyncs it all next). `delete`: also
    remove what the target holds that the point does not (needs `overwrite`). `resume`: continue
    an unfinished restore of the same point into `target` (progress_marker)."""
    progress = progress or NullProgress()
    repo = CachedTrees(repo)  # selecting, counting and writing each walk the same trees
    selection = select(repo, tree, subpaths)
    totals = count(repo, selection)
    free = free_bytes(target)
    if delete and not overwrite:
        raise RestoreError("--delete removes what the target holds beyond the point: it needs --overwrite")
    marker = read_marker(target)
    resuming = marker is not None and marker.same_restore(tree, subpaths)
    if resume and not resuming:
        raise RestoreError(
            f"{target} holds no unfinished restore of this point to resume",
            hint="restore to an empty directory with --target, or pass --overwrite to replace what is there",
        )
    scopes = _delete_scopes(tree, selection, subpaths) if delete else []
    plan = RestoreOutcome(
        target=target,
        files=totals.files,
        dirs=totals.dirs,
        bytes_total=totals.bytes_total,
        bytes_needed=totals.bytes_needed,
        bytes_free=free,
        verified=0,
        written=False,
    )
    if dry_run:
        return _dry_run(repo, plan, target, scopes, resuming=resuming, overwrite=overwrite)
    _refuse_unsafe_target(target, overwrite=overwrite or resuming, needed=totals.bytes_needed, free=free)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RestoreError(f"cannot use {target} as the restore target: {err.strerror}") from err
    write_marker(target, tree, subpaths)
    progress.start("restore", total_bytes=totals.bytes_total, total_files=totals.files)  # files as a point counts them
    report, deleted = _write(
        repo,
        selection,
        target,
        overwrite or resuming,
        root_meta if not subpaths else None,
        progress,
        writeback,
        scopes=scopes,
        resuming=resuming,
        files=totals.files,
    )
    progress.finish()
    if report.errors:
        shown = "; ".join(report.errors[:_ERRORS_SHOWN])
        more = f" (and {len(report.errors) - _ERRORS_SHOWN} more)" if len(report.errors) > _ERRORS_SHOWN else ""
        raise RestoreError(
            f"{len(report.errors)} entr{'y' if len(report.errors) == 1 else 'ies'} could not be restored"
            f" to {target}: {shown}{more}",
            hint=f"the other {report.files} files were restored and verified; once the cause is fixed, the same "
            "command with --resume finishes the restore",
        )
    clear_marker(target)
    notes = list(report.notes)
    if resuming:
        notes.append(f"resumed an unfinished restore: {report.skipped:,} file(s) already restored were kept")
    if deleted:
        notes.append(f"deleted {len(deleted):,} entr{'y' if len(deleted) == 1 else 'ies'} the point does not hold")
    return replace(
        plan,
        files=report.files,
        dirs=report.dirs,
        verified=report.verified,
        written=True,
        notes=tuple(notes),
        details={"deleted": [_shown(p) for p in deleted]} if delete else {},
    )


def _delete_scopes(
    tree: BlobId, selection: Sequence[Selected], subpaths: Sequence[str]
) -> list[tuple[tuple[bytes, ...], BlobId | None]]:
    """The target directories `--delete` cleans, with the tree each must match: the whole target
    for a whole-point restore, else each selected directory (never a parent of a subpath)."""
    if not subpaths:
        return [((), tree)]
    return [(item.parts, item.node.subtree) for item in selection if item.node.type is NodeType.DIR]


def _dry_run(
    repo: PointReader,
    plan: RestoreOutcome,
    target: Path,
    scopes: Sequence[tuple[tuple[bytes, ...], BlobId | None]],
    *,
    resuming: bool,
    overwrite: bool,
) -> RestoreOutcome:
    """What a real run would do, said: the entries --delete would remove, whether it would resume."""
    notes: list[str] = []
    details: dict[str, object] = {}
    if scopes and target.is_dir():
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            doomed = extras(repo, fd, scopes, remove=False)
        finally:
            os.close(fd)
        details["would_delete"] = [_shown(p) for p in doomed]
        notes.append(
            f"would delete {len(doomed):,} entr{'y' if len(doomed) == 1 else 'ies'} the point does not hold"
            + (" (listed below)" if doomed else "")
        )
    if resuming:
        notes.append("would resume the unfinished restore of this point in the target")
    elif target.is_dir() and any(p.name != MARKER for p in target.iterdir()):
        notes.append(
            "the target is not empty: a real run would replace what differs"
            if overwrite
            else "the target is not empty: a real run needs --overwrite (which replaces what differs)"
        )
    return replace(plan, notes=tuple(notes), details=details)


def _shown(parts: Sequence[bytes]) -> str:
    return show_name(b"/".join(parts))


def _write(
    repo: PointReader,
    selection: Sequence[Selected],
    target: Path,
    overwrite: bool,
    root_meta: Mapping[str, object] | None,
    progress: Progress,
    writeback: bool = False,
    *,
    scopes: Sequence[tuple[tuple[bytes, ...], BlobId | None]] = (),
    resuming: bool = False,
    files: int = 0,
) -> tuple[RestoreReport, list[tuple[bytes, ...]]]:
    try:
        target.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise RestoreError(f"cannot use {target} as the restore target: {err.strerror}") from err
    try:
        # first, so that directory times set at the end of the restore stay as stored
        deleted = extras(repo, root_fd, scopes, remove=True) if scopes else []
        restorer = FsRestorer(
            repo,
            repo.content_hasher,
            overwrite=overwrite,
            progress=progress,
            writeback=writeback,
            keep_done=resuming,
            files_hint=files,
        )
        report = restorer.run(root_fd, selection)
        if root_meta is not None:
            _apply_root(root_fd, root_meta, report)
    except OSError as err:
        raise RestoreError(f"restoring into {target}: {err.strerror}") from err
    finally:
        os.close(root_fd)
    return report, deleted


def _apply_root(fd: int, meta: Mapping[str, object], report: RestoreReport) -> None:
    """The source directory's own metadata goes to the target (whole-tree restores only)."""
    try:
        if os.geteuid() == 0:
            os.fchown(fd, _int(meta, "uid"), _int(meta, "gid"))
        os.fchmod(fd, _int(meta, "mode"))
        os.utime(fd, ns=(_int(meta, "atime_ns"), _int(meta, "mtime_ns")))
    except (KeyError, TypeError, OSError) as err:
        report.notes.append(f"metadata of the target directory not restored: {err}")


def _int(meta: Mapping[str, object], key: str) -> int:
    value = meta[key]
    if not isinstance(value, int):
        raise TypeError(f"{key} is not an integer")
    return value


def _refuse_unsafe_target(target: Path, *, overwrite: bool, needed: int, free: int | None) -> None:
    if not overwrite and target.exists():
        if not target.is_dir():
            raise RestoreError(f"restore target {target} exists and is not a directory")
        if any(p.name != MARKER for p in target.iterdir()):
            raise RestoreError(
                f"restore target {target} is not empty",
                hint="restore to an empty directory with --target, or pass --overwrite to replace what differs "
                "(with --delete: also remove what the point does not hold; --dry-run shows it first)",
            )
    if free is not None and needed > free and not overwrite:
        raise RestoreError(
            f"restore needs {needed} bytes but {target} has {free} bytes free",
            hint="free some space or restore elsewhere with --target",
        )


def free_bytes(target: Path) -> int | None:
    """Free bytes for an unprivileged writer on the filesystem that holds (or would hold) target."""
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        st = os.statvfs(probe)
        return st.f_bavail * st.f_frsize
    return None
