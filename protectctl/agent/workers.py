"""Multi-core first backups: worker processes capture whole directories, the parent writes.

A first backup (no journal: every file is new) of many small files is per-file Python work
(lstat, xattrs, read, hash, compress, encrypt, node encoding) that one interpreter does on
one core. `ParallelWalk` spreads it over worker processes:

* a **task** is one directory. A worker lists and lstats it (`Archiver._scan`, without
  descending), and for every entry but a subdirectory builds the node exactly as the serial
  archiver does (`Archiver._node`: the same code), reading small files whole, hashing,
  compressing and sealing their blobs with the repository's keys. It answers first with the
  directory's subdirectories (the parent hands them out at once, so workers never starve),
  then with the entries in parts of at most `_PART_FILES` files or `_PART_BYTES` sealed bytes:
  encoded nodes, journal rows, sealed records (`pack.seal_record_into`, ciphertext + id).
* the **parent** keeps what must be one: it dedups (`BlobWriter.add_sealed`: a blob already
  stored or claimed is dropped, so each is written once), appends records to packs, writes
  the journal, and assembles each directory's tree once its subdirectories' trees are known
  (bottom-up, as the serial walk). Files larger than the smallest chunk (and sparse ones, and
  big files a `BigFileReader` reads its own way) are sent back unread and read by the parent
  with the serial code: several at once by its file-read threads (agent/filereads.py; read,
  FastCDC, BLAKE3, zstd and AES-GCM release the GIL), each file's node built by the parent
  once its content is back, while the walk goes on.

Deterministic: a node is built by the same code from the same lstat and content, a tree from
the same encoded nodes in name order, so the tree ids do not depend on the parallelism or on
the order results arrive in (tests/unit/test_archiver_parallel.py). Memory is bounded by the
tasks in flight (`_TASKS_PER_WORKER`), the answers queued (`_QUEUED_PARTS` per worker, each
at most `_PART_FILES` files or about `_PART_BYTES`) and the directories still waiting for a
subdirectory (handed out depth first, so that is about the walk's depth), not by the size of
the tree.

Start-up: workers are started only once the walk has met `SPAWN_AFTER_FILES` files and has
more directories queued; until they are ready the parent runs tasks itself with the same code.
A small first backup never starts a process, and a sync with a journal never comes here.
A worker is a fresh interpreter (`python -I -c`, no fork of a threaded process) that receives
the parent's import path, the keys and the options through its stdin pipe: never argv, the
environment or a file. It asks the kernel to SIGKILL it when the parent dies
(PR_SET_PDEATHSIG) and never touches the repository, so a killed parent leaves exactly what
a killed serial backup leaves. A worker that dies or fails fails the backup with one line;
nothing is published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, cast

import blake3

from protectctl import workerproc
from protectctl.agent.archiver import (
    Archiver,
    ArchiveResult,
    _dense,
    _Dir,
    _Entry,
    _key,
    _node_facts,
    _seal,
)
from protectctl.agent.filereads import FileRead
from protectctl.agent.fsmeta import base_node, read_xattrs
from protectctl.agent.journal import JournalEntry, file_row
from protectctl.agent.patterns import PathFilter
from protectctl.crashpoint import reached
from protectctl.engine.chunker import Chunker, ChunkerParams
from protectctl.engine.crypto import Sealer
from protectctl.engine.ids import BlobId
from protectctl.engine.pack import BlobKind, blob_body, frame, record_size, seal_record_into, small_body
from protectctl.engine.tree import NodeType, Tree, assemble_tree, encode_node, encode_tree
from protectctl.engine.writer import INLINE_MAX
from protectctl.errors import ProviderError
from protectctl.progress import Progress

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from protectctl.agent.archiver import SnapshotView
    from protectctl.engine.repository import Repository

log = logging.getLogger(__name__)

# Workers start once the walk has met this many files (and has directories left to hand out):
# below that, start-up (~0.2 s of CPU per worker) costs more than it saves.
SPAWN_AFTER_FILES = 2000
# While the workers start (~0.2 s of CPU each, more under load), the parent runs tasks itself.
PARENT_WORKS_WHILE_STARTING = True
# Tasks in flight per worker, and answers a worker may have ready before the parent reads them:
# on a busy machine the parent is not scheduled for tens of milliseconds at a time, and workers
# must not run dry meanwhile (a task of 100 small files is ~15 ms of work).
_TASKS_PER_WORKER = 8
_QUEUED_PARTS = 16
_PART_FILES = 256  # entries per message
_PART_BYTES = 2 << 20  # sealed bytes per message
_UNREAD_MAX = 256  # deferred big files waiting for a file-read thread before no more tasks go out
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ of a worker's answer pipe (the kernel may cap it)
_F_SETPIPE_SZ = 1031
_PENDING = BlobId(b"\xff" * 32)  # a subdirectory whose tree the parent builds (never an id: identity)
_KIND = {BlobKind.DATA: 0, BlobKind.TREE: 1}
_KINDS = (BlobKind.DATA, BlobKind.TREE)


@dataclass(frozen=True, slots=True)
class _Setup:
    """What a worker needs, sent through its stdin pipe: keys included, so never in argv or env."""

    encryption_key: bytes
    id_key: bytes
    chunker_seed: int
    chunker: ChunkerParams
    root_dev: int
    filter: PathFilter
    one_file_system: bool
    snapshot: SnapshotView | None
    defer_from: int | None  # files of at least this size go to the parent (a BigFileReader's)


# A task: (task id, path, rel, included). A message back: a `_Part`, or ("error", text).


@dataclass(slots=True)
class _Part:
    task: int
    final: bool = False
    slots: int = -1  # the directory's entries (first part only)
    subdirs: list[tuple[int, bytes, bytes, bytes, os.stat_result, tuple[tuple[bytes, bytes], ...], bool]] = field(
        default_factory=list
    )  # (slot, name, path, rel, lstat, xattrs, included)
    leaves: list[tuple[int, bytes, bytes, str]] = field(default_factory=list)  # (slot, name, facts, encoded)
    deferred: list[tuple[int, bytes, bytes, bytes, os.stat_result]] = field(default_factory=list)  # the parent reads
    blobs: list[tuple[int, bytes, int, bytearray]] = field(default_factory=list)  # (kind, id, raw length, record)
    rows: list[tuple[object, ...]] = field(default_factory=list)  # journal `files` rows
    counts: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # files, dirs, bytes total, bytes read, files read
    progress: tuple[int, int] = (0, 0)  # files, bytes done
    errors: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # nested subvolumes read live
    linked: set[bytes] = field(default_factory=set)  # directories holding files with hard links
    sealed_bytes: int = 0


# -- the worker side -----------------------------------------------------------------------


class _Sealing:
    """The archiver's writer in a worker: hashes, compresses and seals every blob it is given
    into the current part; the parent decides which are new."""

    def __init__(self, setup: _Setup, part: _Part, progress: _Counting) -> None:
        self._sealer = Sealer(setup.encryption_key)
        self._id_key = setup.id_key
        self.part = part
        self._progress = progress

    def add(self, kind: BlobKind, data: bytes | bytearray | memoryview) -> tuple[BlobId, bool]:
        hasher = blake3.blake3(key=self._id_key)
        hasher.update(data)
        blob_id = BlobId(hasher.digest())
        if kind is BlobKind.DATA:  # as BlobWriter.add counts
            self._progress.advance(bytes_done=len(data))
        body = small_body(data) if len(data) <= INLINE_MAX else bytes(blob_body(frame(data)))
        record = bytearray(record_size(len(body)))
        seal_record_into(self._sealer, kind, blob_id, body, memoryview(record))
        self.part.blobs.append((_KIND[kind], bytes(blob_id), len(data), record))
        self.part.sealed_bytes += len(record)
        return blob_id, True


class _Rows:
    """The archiver's journal writer in a worker: rows go to the parent with the part."""

    def __init__(self, part: _Part) -> None:
        self.part = part

    def add(self, rel_dir: bytes, name: bytes, entry: JournalEntry) -> None:
        self.part.rows.append(file_row(rel_dir, name, entry))


class _NoJournal:
    """A first backup's journal: knows nothing."""

    racy_after_ns = None

    def directory(self, rel_dir: bytes) -> dict[bytes, JournalEntry]:
        return {}


class _Keys:
    """The little of a repository the archiver uses in a worker."""

    def __init__(self, setup: _Setup) -> None:
        self.chunker_params = setup.chunker
        self._setup = setup

    def chunker(self) -> Chunker:
        return Chunker(self.chunker_params, self._setup.chunker_seed)

    def content_hasher(self) -> blake3.blake3:
        return blake3.blake3(key=self._setup.id_key)

    def has_blobs(self, blob_ids: object) -> bool:
        return False

    def save_tree(self, writer: _Sealing, tree: Tree) -> BlobId:
        return writer.add(BlobKind.TREE, encode_tree(tree))[0]


class _Counting:
    """Progress in a worker: counted and sent with the part. In the parent (`forward`), passed on
    at once, file by file as the serial walk reports it."""

    wants_totals = False

    def __init__(self, forward: Progress | None = None) -> None:
        self.files = 0
        self.bytes_done = 0
        self._forward = forward

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        return None

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        if self._forward is not None:
            self._forward.advance(files=files, bytes_done=bytes_done)
            return
        self.files += files
        self.bytes_done += bytes_done

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        return None

    def note(self, message: str) -> None:
        return None  # errors travel in the part

    def finish(self) -> None:
        return None


class _TaskArchiver(Archiver):
    """The serial archiver's capture code, one directory at a time, without descending."""

    def __init__(self, setup: _Setup, progress: Progress | None = None) -> None:
        from protectctl.agent.archiver import ArchiveOptions

        self._part = _Part(-1)
        self._counting = _Counting(progress)
        self._sealing = _Sealing(setup, self._part, self._counting)
        self._rows = _Rows(self._part)
        options = ArchiveOptions(
            root=cast(Any, None),
            filter=setup.filter,
            one_file_system=setup.one_file_system,
            snapshot=setup.snapshot,
        )
        super().__init__(
            cast("Repository", _Keys(setup)),
            cast(Any, self._sealing),
            cast(Any, _NoJournal()),
            cast(Any, self._rows),
            options,
            self._counting,
        )
        self._root_dev = setup.root_dev
        self._defer_from = setup.defer_from
        self._subdirs: dict[bytes, bool] = {}

    def _subtree(self, path: bytes, rel: bytes, st: os.stat_result, *, included: bool) -> BlobId | None:
        if self.options.one_file_system and st.st_dev != self._root_dev:
            return self.repo.save_tree(self.writer, Tree(()))  # a mount point: kept empty, as serially
        self._subdirs[rel] = included
        return _PENDING

    def run_task(self, task: int, path: bytes, rel: bytes, included: bool) -> Iterator[_Part]:
        """The parts of one directory's answer, in order."""
        self._start(task)
        self._subdirs = {}
        entries = self._scan(path, rel, included=included)
        part = self._part
        part.slots = len(entries)
        here = _Dir(rel, {})
        leaves: list[tuple[int, _Entry]] = []
        for slot, entry in enumerate(entries):
            if entry.kind is NodeType.DIR and entry.subtree is _PENDING:
                try:
                    xattrs = read_xattrs(entry.path)
                except OSError as err:
                    self._error(entry.rel, err)  # left out, as the serial walk leaves it out
                    continue
                part.subdirs.append(
                    (slot, entry.name, entry.path, entry.rel, entry.st, xattrs, self._subdirs[entry.rel])
                )
            elif entry.kind is NodeType.FILE and self._defers(entry.st):
                part.deferred.append((slot, entry.name, entry.path, entry.rel, entry.st))
            else:
                leaves.append((slot, entry))
        yield self._sealed(final=not leaves)  # subdirectories first: the parent hands them out now
        for n, (slot, entry) in enumerate(leaves):
            node = self._node(entry, here)
            if node is not None:
                self._part.leaves.append((slot, entry.name, _node_facts(node), encode_node(node)))
            last = n == len(leaves) - 1
            if last or len(self._part.leaves) >= _PART_FILES or self._part.sealed_bytes >= _PART_BYTES:
                yield self._sealed(final=last)

    def _defers(self, st: os.stat_result) -> bool:
        """Read by the parent: more than one chunk, sparse, or a BigFileReader's."""
        if st.st_size > self._one_chunk or not _dense(st):
            return True
        return self._defer_from is not None and st.st_size >= self._defer_from

    def _start(self, task: int) -> None:
        self._part = self._sealing.part = self._rows.part = _Part(task)
        self.result = ArchiveResult()
        self._counting.files = self._counting.bytes_done = 0

    def _sealed(self, *, final: bool) -> _Part:
        """The part so far, with the counters since the last one; a fresh part for what follows."""
        part, r = self._part, self.result
        part.final = final
        part.counts = (r.files, r.dirs, r.bytes_total, r.bytes_read, r.files_read)
        part.progress = (self._counting.files, self._counting.bytes_done)
        part.errors = r.errors
        part.live = r.live_subvolumes
        part.linked = r.linked_dirs
        self._start(part.task)
        return part


def worker_main(conn: Connection) -> None:
    """A worker process: the setup, then tasks until the parent closes the pipe."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    workerproc.die_with_parent(int(sys.argv[1]))
    out = _Sender(Connection(os.dup(1), readable=False))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing printed may mix with the answers
    os.close(devnull)
    try:
        archiver = _TaskArchiver(conn.recv())
        out.send(("ready", os.getpid()))
        while True:
            try:
                task = conn.recv()
            except EOFError:
                break
            if task is None:
                break
            reached("archive-worker-task")
            for part in archiver.run_task(*task):
                out.send(part)
        out.close()
    except BaseException as err:  # one line for the parent's message; the process ends
        with contextlib.suppress(OSError):
            out.send(("error", f"{type(err).__name__}: {err}"))
            out.close()
        raise SystemExit(1) from None


class _Sender:
    """Answers go out through a thread with a bounded queue: on a busy machine the parent is not
    always running, and a worker that had to wait for it at every full pipe would idle too."""

    def __init__(self, conn: Connection) -> None:
        import queue
        import threading

        self._conn = conn
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUED_PARTS)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="answers", daemon=True)
        self._thread.start()

    def send(self, message: object) -> None:
        self._put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def close(self) -> None:
        """Wait until everything queued is sent."""
        self._put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _put(self, item: bytes | None) -> None:
        import queue

        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except OSError as err:  # the parent is gone: the main thread stops at its next send
                self._error = err
                return


# -- the parent side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BigRead:
    """A deferred big file being read by the owner's file-read threads."""

    task: int
    slot: int
    entry: _Entry
    future: Future[FileRead]


@dataclass(slots=True)
class _Pending:
    """A directory being captured: its slots fill as parts and subdirectory trees arrive."""

    path: bytes
    rel: bytes
    included: bool
    parent: int | None  # the task of the directory holding it (None: the walk's root)
    slot: int = -1  # its place there
    node: tuple[bytes, os.stat_result, tuple[tuple[bytes, bytes], ...]] | None = None  # (name, lstat, xattrs)
    slots: list[tuple[bytes, bytes, str] | None] = field(default_factory=list)  # (name, facts, encoded)
    waiting: int = 0  # subdirectories not finished yet
    answered: bool = False  # the final part arrived
    dirty: bool = False  # an entry here or below was lost: not reusable next time
    # What it holds below it (files, directories, bytes), as the serial walk's subtotal counts
    # it: its entries and everything below them; a subdirectory counts in its parent.
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], tasks: Connection, answers: Connection) -> None:
        self.proc = proc
        self.tasks = tasks
        self.answers = answers
        self.ready = False
        self.busy: list[int] = []


class ParallelWalk:
    """Archives a directory tree with worker processes for the archiver `owner` (its writer,
    journal, result and progress), when its journal is empty (agent/archiver.py decides)."""

    def __init__(self, owner: Archiver, repo: Repository, workers: int) -> None:
        self._owner = owner
        keys = repo._keys  # the workers seal with them: sent through their pipes only
        big = owner.options.big_files
        self._setup = _Setup(
            encryption_key=keys.encryption,
            id_key=keys.id_key,
            chunker_seed=keys.chunker_seed,
            chunker=repo.chunker_params,
            root_dev=owner._root_dev,
            filter=owner.options.filter,
            one_file_system=owner.options.one_file_system,
            snapshot=owner.options.snapshot,
            defer_from=big.min_size if big is not None else None,
        )
        self._max_workers = workers
        self._workers: list[_Worker] = []
        self._local: _TaskArchiver | None = None
        self._dirs: dict[int, _Pending] = {}
        self._queue: list[int] = []  # tasks not handed out yet: a stack, so the walk goes depth first
        self._next = 0
        self._files_seen = 0
        self._root_tree: BlobId | None = None
        self._root_done = False
        self.started = 0  # worker processes started (tests, the docs' measurements)
        # Deferred big files: being read by the owner's file-read threads, and waiting for one.
        self._reading: list[_BigRead] = []
        self._unread: deque[tuple[int, int, _Entry]] = deque()
        # The file-read threads wake the walk through this pipe when a file is done.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # the walk

    def archive(self, path: bytes, rel: bytes, *, included: bool) -> BlobId | None:
        """The tree of `path` (None when include patterns select nothing in or below it)."""
        self._root_done, self._root_tree = False, None
        self._add(path, rel, included, None)
        while not self._root_done:
            self._step()
        return self._root_tree

    def close(self) -> None:
        """Stop the workers (also after an error): close their pipes, then kill what lingers."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        for worker in self._workers:
            for conn in (worker.tasks, worker.answers):
                with contextlib.suppress(OSError):
                    conn.close()
        deadline = time.monotonic() + 2
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        self._workers = []

    def _add(self, path: bytes, rel: bytes, included: bool, parent: int | None, slot: int = -1) -> _Pending:
        task = self._next
        self._next += 1
        pending = _Pending(path, rel, included, parent, slot)
        self._dirs[task] = pending
        self._queue.append(task)
        return pending

    def _step(self) -> None:
        if self._reading:
            self._collect_reads()
            if self._root_done:  # the last big file completed the walk: nothing more to wait for
                return
        ready = [w for w in self._workers if w.ready]
        if ready:
            self._hand_out(ready)
        if self._workers:
            self._spawn_if_due()
            timeout = None if ready or not self._queue else 0.0
            self._receive(timeout)
            if ready or not self._queue:
                return
        if self._workers and not PARENT_WORKS_WHILE_STARTING:
            self._receive(None)
            return
        if self._queue:  # no worker ready yet: the parent works itself
            task = self._queue.pop()
            if self._local is None:
                self._local = _TaskArchiver(self._setup, self._owner.progress)
            pending = self._dirs[task]
            for part in self._local.run_task(task, pending.path, pending.rel, pending.included):
                self._take(part)
            self._spawn_if_due()
        elif self._reading and not self._workers:  # nothing left but big files being read
            self._reading[0].future.exception()  # waits for it (its error is raised when taken)

    def _spawn_if_due(self) -> None:
        if len(self._workers) >= self._max_workers or self._files_seen < SPAWN_AFTER_FILES or not self._queue:
            return
        while len(self._workers) < self._max_workers:
            try:
                self._workers.append(self._spawn())
            except OSError as err:  # no process to be had: this one does the work
                log.warning("archive.workers_unavailable", extra={"error": str(err)})
                self._max_workers = len(self._workers)

    def _spawn(self) -> _Worker:
        proc, tasks, answers = workerproc.spawn("protectctl.agent.workers", self._setup)
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(answers.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        self.started += 1
        return _Worker(proc, tasks, answers)

    def _hand_out(self, ready: list[_Worker]) -> None:
        if len(self._unread) > _UNREAD_MAX:  # big files wait for a file-read thread: no more tasks yet
            return
        while self._queue:
            worker = min(ready, key=lambda w: len(w.busy))
            if len(worker.busy) >= _TASKS_PER_WORKER:
                return
            task = self._queue.pop()
            pending = self._dirs[task]
            worker.busy.append(task)
            try:
                worker.tasks.send((task, pending.path, pending.rel, pending.included))
            except OSError:
                self._failed(worker, None)

    def _receive(self, timeout: float | None) -> None:
        from multiprocessing.connection import wait

        by_conn = {w.answers: w for w in self._workers}
        waiting: list[Any] = list(by_conn)
        if self._reading:
            waiting.append(self._wake_r)
        for conn in wait(waiting, timeout):
            if conn == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            worker = by_conn[cast("Connection", conn)]
            while True:
                try:
                    message = pickle.loads(worker.answers.recv_bytes())
                except (EOFError, OSError):
                    if worker.ready or worker.busy:
                        self._failed(worker, None)
                    self._unstarted(worker)  # it never took a task: nothing is lost
                    break
                if isinstance(message, _Part):
                    if message.final:
                        worker.busy.remove(message.task)
                    self._take(message)
                elif message[0] == "ready":
                    worker.ready = True
                else:
                    self._failed(worker, str(message[1]))
                if not worker.answers.poll():
                    break

    def _unstarted(self, worker: _Worker) -> None:
        """A worker that died before it was ready (it could not start): the others, or this process, go on."""
        code = worker.proc.wait()
        log.warning("archive.worker_did_not_start", extra={"exit_status": code})
        self._workers.remove(worker)
        self._max_workers = len(self._workers)
        for conn in (worker.tasks, worker.answers):
            with contextlib.suppress(OSError):
                conn.close()

    def _failed(self, worker: _Worker, why: str | None) -> NoReturn:
        if why is None:
            why = workerproc.exit_reason(worker.proc)
        raise ProviderError(
            f"an archive worker process failed ({why}): the backup was stopped, nothing was published",
            hint="run the backup again; `parallelism: 1` in the settings archives without worker processes",
        )

    # results

    def _take(self, part: _Part) -> None:
        owner = self._owner
        pending = self._dirs[part.task]
        writer = owner.writer
        for code, blob_id, raw_length, record in part.blobs:
            writer.add_sealed(_KINDS[code], BlobId(blob_id), raw_length, record)
        if part.rows:
            cast(Any, owner.journal_out).add_rows(part.rows)
        result = owner.result
        files, dirs, bytes_total, bytes_read, files_read = part.counts
        result.files += files
        result.dirs += dirs
        result.bytes_total += bytes_total
        pending.files += files
        pending.dirs += dirs
        pending.bytes_total += bytes_total
        result.bytes_read += bytes_read
        result.files_read += files_read
        result.live_subvolumes += part.live
        result.linked_dirs |= part.linked
        self._files_seen += len(part.leaves) + len(part.deferred)
        if part.progress != (0, 0):
            owner.progress.advance(files=part.progress[0], bytes_done=part.progress[1])
        for error in part.errors:
            result.errors.append(error)
            owner.progress.note(error)
            pending.dirty = True
        if part.slots >= 0:
            pending.slots = [None] * part.slots
            for slot, name, path, rel, st, xattrs, included in reversed(part.subdirs):
                child = self._add(path, rel, included, part.task, slot)
                child.node = (name, st, xattrs)
                pending.waiting += 1
        for slot, name, facts, encoded in part.leaves:
            pending.slots[slot] = (name, facts, encoded)
        here = _Dir(pending.rel, {})
        reads = owner._reads
        for slot, name, path, rel, st in part.deferred:
            entry = _Entry(name, path, rel, st, NodeType.FILE)
            if reads is not None and owner.reads_ahead(st, name, rel, here):
                pending.waiting += 1  # its node comes once a file-read thread has read it
                self._unread.append((part.task, slot, entry))
            else:
                self._read_here(pending, slot, entry)
        self._submit_reads()
        if part.final:
            pending.answered = True
            self._finish(part.task)

    def _read_here(self, pending: _Pending, slot: int, entry: _Entry) -> None:
        """The node of a deferred file, read in this thread or taken from the file-read threads."""
        owner = self._owner
        r = owner.result
        errors, before = len(r.errors), (r.files, r.dirs, r.bytes_total)
        node = owner._node(entry, _Dir(pending.rel, {}))
        pending.files += r.files - before[0]
        pending.dirs += r.dirs - before[1]
        pending.bytes_total += r.bytes_total - before[2]
        if node is not None:
            pending.slots[slot] = (entry.name, _node_facts(node), encode_node(node))
        if len(owner.result.errors) != errors:
            pending.dirty = True

    def _submit_reads(self) -> None:
        reads = self._owner._reads
        while reads is not None and self._unread and len(self._reading) < reads.window:
            task, slot, entry = self._unread.popleft()
            future = reads.submit(entry.path, self._wake)
            self._reading.append(_BigRead(task, slot, entry, future))

    def _wake(self) -> None:
        if self._wake_w < 0:  # closed (the owner joins the file-read threads before that)
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _collect_reads(self) -> None:
        """Build the nodes of the big files read since, and finish their directories."""
        done = [r for r in self._reading if r.future.done()]
        if not done:
            return
        self._reading = [r for r in self._reading if all(r is not d for d in done)]
        for read in done:
            pending = self._dirs[read.task]
            self._read_here(pending, read.slot, read.entry)  # takes the read from the threads
            pending.waiting -= 1
        self._submit_reads()
        for task in dict.fromkeys(read.task for read in done):
            if task in self._dirs:  # not finished already by a directory below it
                self._finish(task)

    def _finish(self, task: int | None) -> None:
        """Save the trees of `task` and of every directory above it that it completes."""
        owner = self._owner
        while task is not None:
            pending = self._dirs[task]
            if not pending.answered or pending.waiting:
                return
            del self._dirs[task]
            kept = [s for s in pending.slots if s is not None]
            tree: BlobId | None = None
            if kept or pending.included:
                tree, _ = owner.writer.add(BlobKind.TREE, assemble_tree([encoded for _, _, encoded in kept]))
                if not pending.dirty:  # nothing lost here or below: reusable next time
                    out = owner.journal_out
                    out.add_directory(pending.rel, _key([facts for _, facts, _ in kept]), tree)
                    for name, facts, encoded in kept:
                        out.add_node(pending.rel, name, _seal(facts, encoded), encoded)
                    # what it holds, as the serial walk records it (a journal walk reuses it unwalked)
                    out.add_subtotal(pending.rel, pending.files, pending.dirs, pending.bytes_total)
            if pending.parent is None:
                self._root_tree, self._root_done = tree, True
                return
            parent = self._dirs[pending.parent]
            parent.waiting -= 1
            parent.dirty = parent.dirty or pending.dirty
            parent.files += pending.files
            parent.dirs += pending.dirs
            parent.bytes_total += pending.bytes_total
            if tree is not None and pending.node is not None:
                name, st, xattrs = pending.node
                node = base_node(name, st, NodeType.DIR, xattrs, subtree=tree)
                owner.result.dirs += 1
                parent.dirs += 1
                parent.slots[pending.slot] = (name, _node_facts(node), encode_node(node))
            task = pending.parent
