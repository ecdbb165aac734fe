"""Write a point's tree into a target directory, with metadata, verified.

All writes go through directory fds and single checked names (see `safety`), so nothing
lands outside the target. File content is laid out around the stored holes (pwrite into
the data ranges, ftruncate for the size), so sparse files stay sparse. Each file's logical
content is hashed as it is written and compared with the hash stored at backup time.
Owners are restored only when running as root (by name when the name exists here, else by
number, as tar does). Directory metadata is applied at the end, deepest first, since
creating a child changes the parent's mtime and a read-only directory could not receive
children.

Regular files are written by pools of threads: the walk (trees, directories, links, specials)
stays in the calling thread and queues work a bounded number of tasks ahead, so file creation,
reads, decompression, hashing and writes overlap (they release the GIL) and memory stays at a
few chunks per thread. A large file is one task on the file pool. Small files are batched, many
per task, on a pool of at most one thread per core: one file is ~10 short system calls, and with
one file per task and more threads than cores, the threads spent more time handing the GIL to
each other (futex storms, system time) than writing. Results are collected in walk order, so the
report, the progress and the `restore-file` crashpoint see files in the same order as before.
Hard-linked files are written in the walk's thread, in order, so a link always finds its first
name complete. Trees are released once the write walk has used them (bounded memory).

With `writeback` (PostgreSQL restores), written data is handed to the disk as it goes
(Linux sync_file_range, asynchronous, as PostgreSQL's own writeback does), not left dirty in
the page cache: the fsync of the whole data directory before recovery then finds little left
to write, instead of waiting for all of it at once. Plain file restores leave writeback to
the kernel (starting it early only slows a restore nobody fsyncs).
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import TypeVar

from protectctl import crashpoint
from protectctl.agent.sparse import Hasher
from protectctl.engine.buffers import BlobScratch
from protectctl.engine.ids import BlobId
from protectctl.engine.names import show_name
from protectctl.engine.tree import HashScheme, Node, NodeType, blocks_hash, extents_hash
from protectctl.errors import ProtectctlError, RestoreError
from protectctl.progress import NullProgress, Progress
from protectctl.restore import ranges as _ranges
from protectctl.restore import workers as _workers
from protectctl.restore.progress_marker import already_restored
from protectctl.restore.ranges import ByteBudget, OrderedHash, Range, hash_zeros, plan_ranges, segments
from protectctl.restore.safety import check_name, make_dir, open_dir_path, remove_entry
from protectctl.restore.selection import Selected, TreeReader
from protectctl.restore.workers import (
    BatchFuture,
    Location,
    RestoreWorkers,
    WorkerSetup,
    parallelism,
    work_item,
)

# File tasks in flight: each holds one chunk at a time (<= 4 MiB plaintext), so memory stays
# at a few MiB per thread. Creating a file costs ~1 ms on some filesystems: more threads than
# cores hide that latency.
_WORKERS = min(8, 2 * (os.cpu_count() or 1) + 2)
# Tasks (a file, a range's file or a batch: a few KiB of nodes each) the walk may queue past the
# oldest one not collected: far enough that the small files' batches reach their threads or
# worker processes while the large files before them in the walk are still being written.
_QUEUED = 64
# Small files: batched, at most this many files or bytes per task, on one thread per core (max 4).
_SMALL_FILE = 256 << 10
_BATCH_FILES = 128
_BATCH_BYTES = 4 << 20
_SMALL_WORKERS = max(1, min(4, os.cpu_count() or 1))
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_RW = _CREATE & ~os.O_WRONLY | os.O_RDWR  # a file in ranges is read back for its hash
_XATTR_SKIP = {errno.ENOTSUP, errno.EPERM, errno.EACCES}
# Start writeback every this many bytes of a file: large enough for sequential writes on the
# device, small enough that the flush overlaps the rest of the restore (bench_postgresql: a
# scale-50 cluster's fsync before recovery went from ~3 s to ~0.3 s).
_WRITEBACK_BYTES = 8 << 20
_READ_BACK = 1 << 20  # a range hashed after it was written is read back in pieces of this size
_SYNC_FILE_RANGE_WRITE = 2
# A CONTENT hash (format 1) covers holes as zeros, ~2.4 GB/s to hash here: a file with more
# holes than this is not checked as a whole (each blob is still checked against its id), so
# a huge sparse file from an older point, or a crafted one, cannot stall a restore for hours.
# EXTENTS hashes, written since, cost nothing per hole.
_ZERO_HASH_LIMIT = 1 << 30


def _writeback_function() -> Callable[[int, int, int], None]:
    """sync_file_range(fd, offset, length, WRITE) where libc has it; else a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        native = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    native.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    native.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        native(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure changes nothing

    return start


_start_writeback = _writeback_function()


@dataclass(frozen=True, slots=True)
class _Item:
    """One regular file for a pool thread to write: where (a dir fd the task owns), what, its path."""

    dir_fd: int
    name: bytes
    node: Node
    parts: tuple[bytes, ...]


_Outcome = bytes | None | OSError | ProtectctlError
_T = TypeVar("_T")


@dataclass(slots=True, eq=False)
class _BigFile:
    """A large file being written in ranges by several pool threads (ranges.py)."""

    fd: int
    dir_fd: int  # the job's own dup of its directory's fd
    name: bytes
    node: Node
    parts: tuple[bytes, ...]
    future: Future[list[_Outcome]]
    remaining: int  # ranges not finished
    verify_each: bool  # each chunk checked against its id (no whole-file hash in file order)
    zeros_hashed: bool  # the whole-file hash covers holes as zeros (CONTENT)
    ordered: OrderedHash | None  # the whole-file hash, fed in file order
    blocks: list[list[tuple[int, bytes]]] | None  # BLOCKS: (length, id) of each chunk, per range
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, err: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = err
        if self.ordered is not None:
            self.ordered.broken = True

    def range_finished(self) -> bool:
        """One range is done; True for the last one (its thread finishes the file)."""
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0


@dataclass(slots=True)
class RestoreReport:
    files: int = 0
    dirs: int = 0
    links: int = 0
    specials: int = 0
    bytes_written: int = 0
    verified: int = 0
    skipped: int = 0  # files a resumed restore found already restored
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=4096)
def stored_uid(name: str | None, fallback: int) -> int:
    """The uid of a node's stored owner name on this host, else its stored number (restore, mount)."""
    try:
        return pwd.getpwnam(name).pw_uid if name else fallback
    except KeyError:
        return fallback


@lru_cache(maxsize=4096)
def stored_gid(name: str | None, fallback: int) -> int:
    """The gid of a node's stored group name on this host, else its stored number."""
    try:
        return grp.getgrnam(name).gr_gid if name else fallback
    except KeyError:
        return fallback


class FsRestorer:
    """Restores selected nodes below an open target directory."""

    def __init__(
        self,
        reader: TreeReader,
        new_hasher: Callable[[], Hasher],
        *,
        overwrite: bool,
        progress: Progress | None = None,
        writeback: bool = False,
        keep_done: bool = False,
        files_hint: int = 0,
    ) -> None:
        self.reader = reader
        self._files_hint = files_hint  # the files the selection holds (its count walk), when known
        self.keep_done = keep_done  # resuming: keep files an earlier run of this restore finished
        self._writeback = _start_writeback if writeback else None
        # A copy of a keyed hasher made once: cheaper per file than keying one anew.
        template = new_hasher()
        copy = getattr(template, "copy", None)
        self.new_hasher: Callable[[], Hasher] = copy if callable(copy) else new_hasher
        self.overwrite = overwrite
        self.progress = progress or NullProgress()
        self.owners = os.geteuid() == 0
        self.report = RestoreReport()
        self._links: dict[tuple[int, int], tuple[bytes, ...]] = {}
        # The job's `parallelism` setting caps the threads and the worker processes (workers.py).
        self._cores = parallelism()
        self._pool = ThreadPoolExecutor(max_workers=min(_WORKERS, 2 * self._cores + 2), thread_name_prefix="restore")
        self._small_threads = min(_SMALL_WORKERS, self._cores)
        self._small_pool = ThreadPoolExecutor(max_workers=self._small_threads, thread_name_prefix="restore-small")
        # Optional reader capability (CachedTrees over a local repository): batches of small
        # files written by worker processes, which need each chunk's place and the keys.
        self._worker_source: tuple[bytes, bytes, str] | None = getattr(reader, "worker_source", None)
        self._blob_location: Callable[[BlobId], Location] | None = getattr(reader, "blob_place", None)
        self._procs: RestoreWorkers | None = None
        self._batches = 0  # batches of small files submitted so far
        # Submitted work in walk order: each task's files and its future (a list of outcomes).
        self._tasks: deque[tuple[list[_Item], Future[list[_Outcome]], bool]] = deque()
        self._batch: list[_Item] = []  # small files not yet submitted
        self._batch_bytes = 0
        self._batch_fds: dict[int, int] = {}  # walk's dir fd -> the batch's own dup of it
        self._small_running: deque[Future[list[_Outcome]]] = deque()  # batches submitted, maybe not done
        # Optional reader capability (CachedTrees): drop a tree once the write walk has used it.
        self._forget_tree: Callable[[BlobId], None] | None = getattr(reader, "forget_tree", None)
        self._dirs: dict[tuple[bytes, ...], Node] = {}  # metadata applied at the end
        self._root_fd = -1
        # Blobs of a file whose whole content is hashed and checked need no id re-hash each.
        self._load_for_file: Callable[[BlobId], bytes] = getattr(reader, "load_blob_unchecked", reader.load_blob)
        # Optional reader capability (the repository): blobs into per-thread scratch buffers.
        self._load_into: Callable[..., memoryview] | None = getattr(reader, "load_blob_into", None)
        self._scratch = threading.local()
        # Optional reader capability (the repository's index): chunk lengths, so a large file
        # can be written in ranges on several threads (ranges.py).
        self._blob_size: Callable[[BlobId], int] | None = (
            getattr(reader, "blob_size", None) if self._load_into is not None else None
        )
        self._budget = ByteBudget(_ranges.INFLIGHT_BYTES)
        self._big: set[_BigFile] = set()  # files being written in ranges
        self._pool_jobs = 0  # file-pool jobs queued or running (whole files and ranges)
        self._pool_jobs_lock = threading.Lock()

    def run(self, root_fd: int, selection: Sequence[Selected]) -> RestoreReport:
        self._root_fd = root_fd
        if self._files_hint >= _workers.SPAWN_AT_FILES:
            self._start_workers()  # ready by the time the walk reaches the small files
        try:
            for item in selection:
                self._restore_selected(item, self._dirs)
            self._submit_batch()
            self._wait_files(0)
        finally:
            self._drop_batch()
            if self._procs is not None:
                self._procs.close()
            self._small_pool.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
            for job in list(self._big):  # the walk failed with ranges never run
                self._big.discard(job)
                os.close(job.fd)
                os.close(job.dir_fd)
        # Deepest first: a parent's mtime must be set after its children's changes.
        for parts in sorted(self._dirs, key=len, reverse=True):
            self._guard(parts, partial(self._apply_dir_meta_at, parts, self._dirs[parts]))
        return self.report

    def _restore_selected(self, item: Selected, parents: dict[tuple[bytes, ...], Node]) -> None:
        fd = os.dup(self._root_fd)
        try:
            for depth, parent in enumerate(item.parents):
                child = make_dir(fd, parent.name, replace=self.overwrite)
                os.close(fd)
                fd = child
                parents[item.parts[: depth + 1]] = parent
            self._restore_node(fd, item.node, item.parts)
        except (OSError, ProtectctlError) as err:
            self._fail(item.parts, err)
        finally:
            self._batch_fds_release(fd)  # before the number can name another directory
            os.close(fd)

    def _guard(self, parts: tuple[bytes, ...], action: Callable[[], None]) -> None:
        try:
            action()
        except (OSError, ProtectctlError) as err:
            self._fail(parts, err)

    def _fail(self, parts: tuple[bytes, ...], err: BaseException) -> None:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        self.report.errors.append(f"{_shown(parts)}: {reason}")

    # -- one node ---------------------------------------------------------------------

    def _restore_node(self, dir_fd: int, node: Node, parts: tuple[bytes, ...]) -> None:
        if node.damage is not None:
            raise RestoreError(f"refusing to restore this entry: {node.damage}")
        name = check_name(node.name)
        if node.type is NodeType.DIR:
            self._restore_dir(dir_fd, node, parts)
        elif node.type is NodeType.FILE:
            self._restore_file(dir_fd, name, node, parts)
        elif node.type is NodeType.SYMLINK:
            self._restore_symlink(dir_fd, name, node)
        elif node.type is NodeType.SOCKET:
            self.report.notes.append(f"{_shown(parts)}: sockets are not restored (the owning program makes them)")
        else:
            self._restore_special(dir_fd, name, node, parts)

    def _restore_dir(self, dir_fd: int, node: Node, parts: tuple[bytes, ...]) -> None:
        fd = make_dir(dir_fd, node.name, replace=self.overwrite)
        try:
            if node.subtree is not None:
                nodes = self.reader.load_tree(node.subtree).nodes
                if self._forget_tree is not None:
                    self._forget_tree(node.subtree)  # this walk is the last to need it
                for child in nodes:
                    child_parts = parts + (child.name,)
                    self._guard(child_parts, partial(self._restore_node, fd, child, child_parts))
        finally:
            self._batch_fds_release(fd)
            os.close(fd)
        self._dirs[parts] = node
        self.report.dirs += 1

    def _apply_dir_meta_at(self, parts: tuple[bytes, ...], node: Node) -> None:
        fd = open_dir_path(self._root_fd, parts)
        try:
            self._apply_fd_meta(fd, node, parts)
        finally:
            os.close(fd)

    def _create(self, dir_fd: int, name: bytes, make: Callable[[], None]) -> None:
        """Run `make` to create `name`; an existing entry is replaced only when overwriting."""
        try:
            make()
        except FileExistsError:
            if not self.overwrite:
                raise
            remove_entry(dir_fd, name)
            make()

    def _restore_file(self, dir_fd: int, name: bytes, node: Node, parts: tuple[bytes, ...]) -> None:
        key = (node.dev, node.inode)
        if self.keep_done and already_restored(dir_fd, name, node):
            if node.nlink > 1:
                self._links.setdefault(key, parts)
            self.report.skipped += 1
            self.report.files += 1
            self.report.verified += node.content_hash is not None  # it was, when it was written
            self.progress.advance(files=1, bytes_done=node.size)
            return
        if node.nlink > 1:
            # In this thread and in walk order: a later name links to a first that is complete.
            if key in self._links and self._link(dir_fd, name, self._links[key], node.size):
                return
            self._finish_file(parts, node, self._write_file(dir_fd, name, node, parts))
            self._links.setdefault(key, parts)
            return
        if node.size <= _SMALL_FILE:
            self._add_small(dir_fd, name, node, parts)
            return
        self._submit_batch()  # walk order: the small files before this one go first
        if (
            self._blob_size is not None
            and node.size >= 2 * _ranges.RANGE_BYTES
            and self._pool_jobs < _ranges.SPLIT_BELOW_JOBS
        ):
            plan = self._plan_ranges(node)
            if plan is not None:
                self._submit_ranges(dir_fd, name, node, parts, plan)
                self._wait_files(_QUEUED)
                return
        task_fd = os.dup(dir_fd)
        item = _Item(task_fd, name, node, parts)
        try:
            future = self._pool_submit(self._files_task, [item], close=True)
        except BaseException:
            os.close(task_fd)
            raise
        self._tasks.append(([item], future, False))
        self._wait_files(_QUEUED)

    def _add_small(self, dir_fd: int, name: bytes, node: Node, parts: tuple[bytes, ...]) -> None:
        task_fd = self._batch_fds.get(dir_fd)
        if task_fd is None:
            task_fd = self._batch_fds[dir_fd] = os.dup(dir_fd)
        self._batch.append(_Item(task_fd, name, node, parts))
        self._batch_bytes += node.size
        if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
            self._submit_batch()

    def _batch_fds_release(self, dir_fd: int) -> None:
        """The walk closes `dir_fd`: the batch holding files in it goes (it owns its own dup), as
        the batch's fds are found by the walk's fd number, which the kernel reuses."""
        if dir_fd in self._batch_fds:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        items, fds = self._batch, list(self._batch_fds.values())
        self._batch, self._batch_bytes, self._batch_fds = [], 0, {}
        self._batches += 1
        future: Future[list[_Outcome]] | None = self._to_worker(items)
        if future is not None:
            for fd in fds:
                os.close(fd)  # a worker opens the directory itself, from the target's fd
        else:
            try:
                future = self._small_pool.submit(self._batch_task, items, fds)
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
        self._small_running.append(future)
        self._tasks.append((items, future, True))
        self._wait_files(_QUEUED, small=2 * max(self._small_threads, self._procs.ready() if self._procs else 0))

    def _to_worker(self, items: list[_Item]) -> BatchFuture | None:
        """Hand a batch to a worker process (workers.py), starting them once the restore proves
        large enough; None when none is ready (the batch goes to this process's threads)."""
        if self._worker_source is None or self._blob_location is None or self._cores < 2:
            return None
        if self._procs is None:
            if self._batches < _workers.SPAWN_AFTER_BATCHES:
                return None
            self._start_workers()
        if self._procs is None:
            return None
        return self._procs.submit(
            [work_item(item.parts, item.name, item.node, self._places(item.node)) for item in items]
        )

    def _start_workers(self) -> None:
        if (
            not _workers.ENABLED
            or self._worker_source is None
            or self._blob_location is None
            or self._cores < 2
            or self._procs is not None
        ):
            return
        encryption_key, id_key, storage_path = self._worker_source
        setup = WorkerSetup(
            encryption_key, id_key, storage_path, self._root_fd, self.overwrite, self._writeback is not None
        )
        self._procs = RestoreWorkers(setup, self._cores)
        self._procs.start()

    def _places(self, node: Node) -> tuple[Location, ...]:
        """Where each chunk of `node` is stored, or why it cannot be found (the worker raises it)."""
        locate = self._blob_location
        assert locate is not None
        places: list[Location] = []
        for chunk in node.chunks:
            try:
                places.append(locate(chunk))
            except ProtectctlError as err:
                places.append(str(err))
        return tuple(places)

    def _drop_batch(self) -> None:
        """Close the fds of a batch never submitted (the walk failed)."""
        for fd in self._batch_fds.values():
            os.close(fd)
        self._batch, self._batch_bytes, self._batch_fds = [], 0, {}

    def _batch_task(self, items: list[_Item], fds: list[int]) -> list[_Outcome]:
        try:
            return self._files_task(items, close=False)
        finally:
            for fd in fds:
                os.close(fd)

    def _files_task(self, items: list[_Item], *, close: bool) -> list[_Outcome]:
        """Write each file of `items` (in a pool thread); one outcome each: a digest or the error."""
        outcomes: list[_Outcome] = []
        try:
            for item in items:
                try:
                    outcomes.append(self._write_file(item.dir_fd, item.name, item.node, item.parts))
                except (OSError, ProtectctlError) as err:
                    outcomes.append(err)
        finally:
            if close:
                for item in items:
                    os.close(item.dir_fd)
        return outcomes

    def _wait_files(self, keep: int, *, small: int | None = None) -> None:
        """Collect finished tasks in order; block on the oldest while more than `keep` tasks are
        queued, and on the oldest batch of small files while more than `small` are not done."""
        while True:
            while self._tasks and self._tasks[0][1].done():
                items, future, _ = self._tasks.popleft()
                self._collect(items, future)
            running = self._small_running
            while running and running[0].done():
                running.popleft()
            if small is not None and len(running) > small:
                wait_futures([running[0]])
            elif self._tasks and len(self._tasks) > keep:
                items, future, _ = self._tasks.popleft()
                self._collect(items, future)
            else:
                return

    def _collect(self, items: list[_Item], future: Future[list[_Outcome]]) -> None:
        try:
            outcomes: list[_Outcome] = future.result()
        except (OSError, ProtectctlError) as err:
            outcomes = [err] * len(items)
        if isinstance(future, BatchFuture):
            self.report.notes.extend(future.notes)  # made in a worker process, in file order
        for item, outcome in zip(items, outcomes, strict=True):
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                self._finish_file(item.parts, item.node, outcome)
            except (OSError, ProtectctlError) as err:
                self._fail(item.parts, err)

    def _write_file(self, dir_fd: int, name: bytes, node: Node, parts: tuple[bytes, ...]) -> bytes | None:
        """Create and fill one file, apply its metadata; the digest of what was written (None when
        it is not checked as a whole)."""
        holder: list[int] = []
        self._create(dir_fd, name, lambda: holder.append(os.open(name, _CREATE, 0o600, dir_fd=dir_fd)))
        fd = holder[0]
        try:
            try:
                digest = self._write_content(fd, node)
                if node.content_hash is not None and digest is not None and digest != node.content_hash:
                    raise RestoreError("restored content does not match the stored hash")
            except (OSError, ProtectctlError) as err:
                raise self._discard_partial(dir_fd, name, parts, err) from err
            self._apply_fd_meta(fd, node, parts)
        finally:
            os.close(fd)
        return digest

    def _discard_partial(
        self, dir_fd: int, name: bytes, parts: tuple[bytes, ...], err: OSError | ProtectctlError
    ) -> RestoreError:
        """Remove a file whose content could not be restored (we created it, O_EXCL), so no
        half-written 0600 file passes for a restored one; the error says what became of it."""
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError as unlink_err:
            return RestoreError(
                f"{reason}; the partial file {_shown(parts)} is left (mode 0600, incomplete): {unlink_err.strerror}"
            )
        return RestoreError(f"{reason}; the partial file was removed")

    def _finish_file(self, parts: tuple[bytes, ...], node: Node, digest: bytes | None) -> None:
        if node.content_hash is not None and digest is None:
            self.report.notes.append(
                f"{_shown(parts)}: not checked against its whole-file hash (an older point's hash of"
                f" {_hole_bytes(node)} bytes of holes); each stored block was checked"
            )
        elif node.content_hash is not None:
            if digest != node.content_hash:  # checked in _write_file, which removes such a file
                raise RestoreError("restored content does not match the stored hash")
            self.report.verified += 1
        self.report.files += 1
        self.report.bytes_written += node.size - _hole_bytes(node)
        self.progress.advance(files=1, bytes_done=node.size)
        crashpoint.reached("restore-file")  # a file restored and verified (tests stop a restore here)

    def _link(self, dir_fd: int, name: bytes, first: tuple[bytes, ...], size: int) -> bool:
        """Hard-link `name` to the already restored `first`; False to write a copy instead."""
        src_fd = open_dir_path(self._root_fd, first[:-1])
        try:
            self._create(
                dir_fd,
                name,
                lambda: os.link(first[-1], name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False),
            )
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOENT):
                return False
            raise
        finally:
            os.close(src_fd)
        self.report.links += 1
        self.report.files += 1
        self.progress.advance(files=1, bytes_done=size)  # count() counts each name's bytes
        return True

    def _restore_symlink(self, dir_fd: int, name: bytes, node: Node) -> None:
        target = node.link_target or b""
        self._create(dir_fd, name, lambda: os.symlink(target, name, dir_fd=dir_fd))
        self._apply_name_meta(dir_fd, name, node, mode=False)
        self.report.specials += 1

    def _restore_special(self, dir_fd: int, name: bytes, node: Node, parts: tuple[bytes, ...]) -> None:
        if node.type is NodeType.FIFO:
            self._create(dir_fd, name, lambda: os.mkfifo(name, 0o600, dir_fd=dir_fd))
        elif not self.owners:
            self.report.notes.append(f"{_shown(parts)}: device nodes are restored only as root")
            return
        else:
            kind = stat.S_IFCHR if node.type is NodeType.CHARDEV else stat.S_IFBLK
            self._create(dir_fd, name, lambda: os.mknod(name, kind | 0o600, node.rdev, dir_fd=dir_fd))
        self._apply_name_meta(dir_fd, name, node, mode=True)
        self.report.specials += 1

    def _apply_name_meta(self, dir_fd: int, name: bytes, node: Node, *, mode: bool) -> None:
        """Metadata of an entry that cannot be opened for it (a symlink, a FIFO, a device)."""
        if self.owners:
            uid, gid = stored_uid(node.user, node.uid), stored_gid(node.group, node.gid)
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        if mode:
            # Just created by us and not a symlink, so following is moot; Linux has no lchmod.
            os.chmod(name, node.mode, dir_fd=dir_fd)
        os.utime(name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    # -- large files in ranges (ranges.py) -----------------------------------------------

    def _pool_submit(self, fn: Callable[..., _T], /, *args: object, **kwargs: object) -> Future[_T]:
        """Submit to the file pool, counting the jobs queued or running (SPLIT_BELOW_JOBS)."""
        with self._pool_jobs_lock:
            self._pool_jobs += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._pool_job_done()
            raise
        future.add_done_callback(self._pool_job_done)
        return future

    def _pool_job_done(self, _future: object = None) -> None:
        with self._pool_jobs_lock:
            self._pool_jobs -= 1

    def _plan_ranges(self, node: Node) -> list[Range] | None:
        blob_size = self._blob_size
        if blob_size is None:
            return None
        try:
            return plan_ranges(node.size, node.holes, [blob_size(c) for c in node.chunks], _ranges.RANGE_BYTES)
        except (OSError, ProtectctlError):
            return None  # the one-task path reports what is wrong with it

    def _submit_ranges(self, dir_fd: int, name: bytes, node: Node, parts: tuple[bytes, ...], plan: list[Range]) -> None:
        """Create the file at its size (holes stay holes) and queue its ranges; its outcome comes
        in walk order like any file's."""
        future: Future[list[_Outcome]] = Future()
        item = _Item(dir_fd, name, node, parts)
        self._tasks.append(([item], future, False))
        holder: list[int] = []
        try:
            self._create(dir_fd, name, lambda: holder.append(os.open(name, _CREATE_RW, 0o600, dir_fd=dir_fd)))
        except (OSError, ProtectctlError) as err:
            future.set_result([err])
            return
        fd = holder[0]
        try:
            os.ftruncate(fd, node.size)
            job_dir = os.dup(dir_fd)
        except OSError as err:
            future.set_result([self._discard_partial(dir_fd, name, parts, err)])
            os.close(fd)
            return
        checked = _checkable(node)
        blocks = node.hash_scheme is HashScheme.BLOCKS
        job = _BigFile(
            fd=fd,
            dir_fd=job_dir,
            name=name,
            node=node,
            parts=parts,
            future=future,
            remaining=len(plan),
            verify_each=not checked or blocks,
            zeros_hashed=node.hash_scheme is HashScheme.CONTENT,
            ordered=None,
            blocks=[[] for _ in plan] if checked and blocks else None,
        )
        if checked and not blocks:
            job.ordered = OrderedHash(self.new_hasher(), partial(self._hash_back, job, plan), self._budget.give)
        self._big.add(job)
        for index, part in enumerate(plan):
            self._budget.take(part.nbytes)
            try:
                self._pool_submit(self._range_task, job, part)
            except BaseException:
                self._budget.give(part.nbytes)
                job.remaining -= len(plan) - index  # never run: the pool is going away
                raise

    def _range_task(self, job: _BigFile, part: Range) -> None:
        hashed = False
        try:
            if job.error is None:
                hashed = self._write_range(job, part)
                crashpoint.reached("restore-range")  # a range written, its file not finished (tests)
        except BaseException as err:
            job.fail(err)
            if not isinstance(err, (OSError, ProtectctlError)):
                raise
        finally:
            if job.ordered is not None:
                job.ordered.done(part.index, hashed, part.nbytes)  # gives the bytes back once hashed
            else:
                self._budget.give(part.nbytes)
            if job.range_finished():
                self._finish_ranges(job)

    def _write_range(self, job: _BigFile, part: Range) -> bool:
        """Fetch, decode and write one range; True when it fed the whole-file hash as it went
        (it was the head: every range before it hashed)."""
        load_into = self._load_into
        assert load_into is not None  # ranges are planned only with it
        scratch = self._thread_scratch()
        ordered = job.ordered
        hasher = ordered.hasher if ordered is not None and ordered.is_head(part.index) else None
        blocks = job.blocks[part.index] if job.blocks is not None else None
        chunks, verify, fd = job.node.chunks, job.verify_each, job.fd
        chunk, end = part.first, part.first + len(part.sizes)
        pending = memoryview(b"")

        def load() -> memoryview:
            nonlocal chunk
            if chunk >= end:
                raise RestoreError("stored content is shorter than the file")
            data = load_into(chunks[chunk], scratch, verify_id=verify)
            if len(data) != part.sizes[chunk - part.first]:
                raise RestoreError("a stored chunk is not the length its index says")
            if blocks is not None:
                blocks.append((len(data), bytes(chunks[chunk])))
            chunk += 1
            return data

        for offset, length, is_hole in part.pieces:
            if is_hole:
                if hasher is not None and job.zeros_hashed:
                    hash_zeros(hasher, length)
                continue
            while length:
                while not pending:
                    pending = load()
                take = min(length, len(pending))
                piece = pending[:take]
                _pwrite_all(fd, piece, offset)
                if hasher is not None:
                    hasher.update(piece)
                pending, offset, length = pending[take:], offset + take, length - take
        while chunk < end:  # empty chunks at the end of the range
            if load():
                raise RestoreError("stored content is longer than the file")
        if pending:
            raise RestoreError("stored content is longer than the file")
        if self._writeback is not None:
            self._writeback(fd, part.start, part.end - part.start)
        return hasher is not None

    def _hash_back(self, job: _BigFile, plan: list[Range], index: int) -> None:
        """Feed range `index` of a file to its whole-file hash from what was written (its turn
        came after it was written): read back through this thread's reused buffer."""
        ordered = job.ordered
        assert ordered is not None
        hasher, buffer = ordered.hasher, self._thread_scratch().stored
        try:
            for offset, length, is_hole in plan[index].pieces:
                if is_hole:
                    if job.zeros_hashed:
                        hash_zeros(hasher, length)
                    continue
                while length:
                    view = buffer.view(min(length, _READ_BACK))
                    got = os.preadv(job.fd, [view], offset)
                    if got <= 0:
                        raise RestoreError("the restored file is shorter than what was written to it")
                    hasher.update(view[:got])
                    offset, length = offset + got, length - got
        except (OSError, ProtectctlError) as err:
            job.fail(err)  # the chain of ranges goes on (budget, order); the file fails

    def _finish_ranges(self, job: _BigFile) -> None:
        """The last range is done (in its thread): check the whole-file hash, apply metadata."""
        node, err = job.node, job.error
        outcome: _Outcome = None
        try:
            if err is None:
                try:
                    outcome = self._ranges_digest(job)
                    if node.content_hash is not None and outcome is not None and outcome != node.content_hash:
                        raise RestoreError("restored content does not match the stored hash")
                except (OSError, ProtectctlError) as check_err:
                    err = check_err
            if isinstance(err, (OSError, ProtectctlError)):
                outcome = self._discard_partial(job.dir_fd, job.name, job.parts, err)
            elif err is None:
                try:
                    self._apply_fd_meta(job.fd, node, job.parts)
                except (OSError, ProtectctlError) as meta_err:
                    outcome = meta_err
        finally:
            self._big.discard(job)
            os.close(job.fd)
            os.close(job.dir_fd)
        if err is not None and not isinstance(err, (OSError, ProtectctlError)):
            job.future.set_exception(err)
        else:
            job.future.set_result([outcome])

    def _ranges_digest(self, job: _BigFile) -> bytes | None:
        node = job.node
        if job.blocks is not None:
            pieces = [piece for part in job.blocks for piece in part]
            return blocks_hash(self.new_hasher(), node.size, node.holes, pieces)
        if job.ordered is None:
            return None
        digest = job.ordered.hasher.digest()
        return digest if job.zeros_hashed else extents_hash(self.new_hasher(), node.size, node.holes, digest)

    def _thread_scratch(self) -> BlobScratch:
        scratch: BlobScratch | None = getattr(self._scratch, "buffers", None)
        if scratch is None:
            scratch = self._scratch.buffers = BlobScratch()
        return scratch

    # -- content and metadata -----------------------------------------------------------

    def _write_content(self, fd: int, node: Node) -> bytes | None:
        """Lay the chunks out around the holes; returns the file's hash in its node's scheme, or
        None when it is not checked as a whole. Holes cost nothing but an EXTENTS entry each.

        Runs in a pool thread. With a whole-file hash to check, chunks are read without an id
        re-hash each: the file's hash, checked by the caller, covers every byte written.
        """
        hasher = self.new_hasher()
        checked = _checkable(node)
        zeros_hashed = node.hash_scheme is HashScheme.CONTENT
        # BLOCKS: each chunk is checked against its id and the file's hash covers (length, id) of each.
        blocks = node.hash_scheme is HashScheme.BLOCKS
        pieces: list[tuple[int, bytes]] = []
        verify_each = not checked or blocks
        load_into = self._load_into
        if load_into is not None:
            scratch = self._thread_scratch()

            def load(blob_id: BlobId) -> bytes | memoryview:
                return load_into(blob_id, scratch, verify_id=verify_each)

        else:

            def load(blob_id: BlobId) -> bytes | memoryview:
                return self._load_for_file(blob_id) if not verify_each else self.reader.load_blob(blob_id)

        blobs = iter(node.chunks)
        pending = memoryview(b"")
        flushed = 0  # bytes before this offset were handed to the disk
        for offset, length, is_hole in segments(node.size, node.holes):
            if is_hole:
                if checked and zeros_hashed:
                    hash_zeros(hasher, length)
                continue
            while length:
                if not pending:
                    blob_id = next(blobs, None)
                    if blob_id is None:
                        raise RestoreError("stored content is shorter than the file")
                    pending = memoryview(load(blob_id))
                    if blocks:
                        pieces.append((len(pending), bytes(blob_id)))
                    if not pending:
                        continue
                take = min(length, len(pending))
                piece = pending[:take]
                _pwrite_all(fd, piece, offset)
                hasher.update(piece)
                pending, offset, length = pending[take:], offset + take, length - take
                if self._writeback is not None and offset - flushed >= _WRITEBACK_BYTES:
                    self._writeback(fd, flushed, offset - flushed)
                    flushed = offset
        if pending or next(blobs, None) is not None:
            raise RestoreError("stored content is longer than the file")
        if flushed and self._writeback is not None:
            self._writeback(fd, flushed, 0)  # the tail of a large file (length 0: to its end)
        if node.holes:
            os.ftruncate(fd, node.size)  # a hole at the end has no data to extend the file
        if not checked:
            return None
        if blocks:
            return blocks_hash(self.new_hasher(), node.size, node.holes, pieces)
        return (
            hasher.digest() if zeros_hashed else extents_hash(self.new_hasher(), node.size, node.holes, hasher.digest())
        )

    def _apply_fd_meta(self, fd: int, node: Node, parts: tuple[bytes, ...]) -> None:
        """Owner, then mode (chown clears set-id bits), xattrs, and times last."""
        if self.owners:
            os.fchown(fd, stored_uid(node.user, node.uid), stored_gid(node.group, node.gid))
        os.fchmod(fd, node.mode)
        for key, value in node.xattrs:
            try:
                os.setxattr(fd, key, value)
            except OSError as err:
                if err.errno not in _XATTR_SKIP:
                    raise
                self.report.notes.append(f"{_shown(parts)}: xattr {show_name(key)} not restored ({err.strerror})")
        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))


def _shown(parts: Sequence[bytes]) -> str:
    return show_name(b"/".join(parts))


def _hole_bytes(node: Node) -> int:
    return sum(length for _, length in node.holes)


def _checkable(node: Node) -> bool:
    """The file's whole-content hash can be checked at a cost bounded by its data (or a little more)."""
    if node.content_hash is None:
        return False
    return node.hash_scheme is not HashScheme.CONTENT or _hole_bytes(node) <= _ZERO_HASH_LIMIT


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
