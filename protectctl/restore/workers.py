"""Restore worker processes: batches of small files written by other interpreters.

A restore's threads (restore/fs.py) overlap everything that releases the GIL (reads, AES-GCM,
zstd, BLAKE3, `pwrite`), but each small file is also ~100 us of Python (create, lay out,
verify, metadata) that one interpreter runs one thread at a time: on 2 cores a restore of
thousands of small files uses ~1.3 of them. With worker processes the batches of small files
(the walk already groups them, up to 128 files or 4 MiB per batch) are written by other
interpreters, each on a core of its own, with the same code (`FsRestorer._write_file`).

What stays in the parent: the walk (trees, directories, links, specials), hard-linked files
(a later name links to a first one that is complete), large files (its threads, in ranges),
the index (each batch carries the pack, offset and lengths of every chunk it needs, so a
worker never loads the index), the report and the progress (outcomes collected in walk order,
as before, so the report, the progress and the `restore-file` crashpoint see the same order).

A worker reads packs itself: only from a local repository (`LocalStorage`; on sftp or s3 a
worker would need its own connection and credentials, and the threads already overlap the
requests there). It is a fresh interpreter (`python -I -c`, no fork of a threaded process)
that gets the parent's import path, the keys and the options through its stdin pipe (never
argv, the environment or a file) and the target directory's descriptor (`pass_fds`). Every
file it writes is created below a directory it opens from that descriptor one component at a
time without following symlinks (`safety.open_dir_path`), with the single checked name the
walk gave: a worker can no more write outside the target than the parent. It asks the kernel
to SIGKILL it when the parent dies and never writes to the repository: a killed restore leaves
the repository untouched and at most a few files incomplete (mode 0600, size or mtime not the
stored ones), which `--resume` rewrites.

Workers start only when `ENABLED` (off by default: see there) and the restore holds at least
`SPAWN_AT_FILES` files (else once the walk has queued `SPAWN_AFTER_BATCHES` batches of small
files: a worker's start-up is ~0.15 s of CPU); until one is ready, batches go to the parent's
threads.
A worker that dies fails the files of its batches (reported, `--resume` finishes them) and
the others, or the parent's threads, go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from protectctl import workerproc
from protectctl.engine.buffers import BlobScratch
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.tree import HashScheme, Node, NodeType
from protectctl.errors import CorruptionError, ProtectctlError, RepositoryError, RestoreError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

# Workers start with the write walk when the selection holds this many files (its count walk
# said so), else once the walk has queued this many batches of small files: a restore of a few
# hundred files is over before a worker would be ready (~0.2 s of CPU each to start).
SPAWN_AT_FILES = 1000
# Off by default: on this project's 2-core test machine, under the load it always carries, the
# workers did not make a restore faster than the parent's threads and cost more CPU (start-up
# ~0.15 s each, sending the files); docs/performance.md has the figures. Tests turn them on.
ENABLED = False
SPAWN_AFTER_BATCHES = 4
# Batches wait for a worker to be ready instead of going to the parent's threads meanwhile
# (tests: every batch then goes to a worker).
WAIT_FOR_WORKERS = False

# The `parallelism` setting of the job restoring (agent/jobs.py sets it around the provider's
# restore): worker processes and threads; None: the host's cores, at most 4.
_PARALLELISM: ContextVar[int | None] = ContextVar("restore_parallelism", default=None)


@contextlib.contextmanager
def restore_parallelism(setting: int | None) -> Iterator[None]:
    """Restores started inside use at most `setting` cores (None: the default)."""
    token = _PARALLELISM.set(setting)
    try:
        yield
    finally:
        _PARALLELISM.reset(token)


def parallelism() -> int:
    setting = _PARALLELISM.get()
    return max(1, setting if setting is not None else min(4, os.cpu_count() or 1))


# A chunk's place: (pack, offset, stored length, plain length, blob kind), or why it cannot be
# read (raised when the worker needs it).
Location = tuple[str, int, int, int, str] | str
# A file for a worker, in builtins only: a pickled Node costs ~45 us to send and rebuild, this
# ~5 (`work_item`, `_node`): (path below the target, checked name, size, mode, uid, gid, user,
# group, atime_ns, mtime_ns, chunks, holes, xattrs, content hash, hash scheme, chunks' places).
WorkItem = tuple[
    tuple[bytes, ...],
    bytes,
    int,
    int,
    int,
    int,
    str | None,
    str | None,
    int,
    int,
    tuple[BlobId, ...],
    tuple[tuple[int, int], ...],
    tuple[tuple[bytes, bytes], ...],
    bytes | None,
    str,
    tuple[Location, ...],
]
# What a worker answers per file: its digest (or None), or the error (rebuilt in the parent).
Answer = bytes | None | tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker needs, sent through its stdin pipe: keys included, never in argv or env."""

    encryption_key: bytes
    id_key: bytes
    storage_path: str
    root_fd: int
    overwrite: bool
    writeback: bool


class BatchFuture(Future[list[bytes | None | OSError | ProtectctlError]]):
    """A batch's outcomes, and the notes its worker made (xattrs not restored), in file order."""

    notes: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.notes = []


@dataclass(slots=True, eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    tasks: Connection
    answers: Connection
    ready: bool = False
    gone: bool = False
    pending: dict[int, BatchFuture] = field(default_factory=dict)


class RestoreWorkers:
    """Worker processes writing batches of small files below `setup.root_fd`."""

    def __init__(self, setup: WorkerSetup, count: int) -> None:
        self._setup = setup
        self._count = count
        self._workers: list[_Worker] = []
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)  # a worker became ready or was lost
        self._next_task = 0
        self._receiver: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.started = 0

    def start(self) -> None:
        """Start the workers (they say when they are ready); no process to be had: none."""
        for _ in range(self._count):
            try:
                self._workers.append(self._spawn())
            except OSError as err:
                log.warning("restore.workers_unavailable", extra={"error": str(err)})
                break
        if self._workers:
            self._receiver = threading.Thread(target=self._receive, name="restore-workers", daemon=True)
            self._receiver.start()

    def ready(self) -> int:
        """Workers ready for batches."""
        with self._mutex:
            return sum(1 for w in self._workers if w.ready and not w.gone)

    def submit(self, items: Sequence[WorkItem]) -> BatchFuture | None:
        """Hand a batch to the least busy ready worker; None when none is ready."""
        with self._mutex:
            ready = [w for w in self._workers if w.ready and not w.gone]
            while not ready and WAIT_FOR_WORKERS and any(not w.gone for w in self._workers):
                self._changed.wait()
                ready = [w for w in self._workers if w.ready and not w.gone]
            if not ready:
                return None
            worker = min(ready, key=lambda w: len(w.pending))
            task = self._next_task
            self._next_task += 1
            future = BatchFuture()
            worker.pending[task] = future
        with contextlib.suppress(OSError):  # it died: the receiver fails its pending batches, this one too
            worker.tasks.send((task, list(items)))
        return future

    def close(self) -> None:
        """Let the workers finish what they hold, then stop them."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.tasks.close()
        os.write(self._wake_w, b"x")
        if self._receiver is not None:
            self._receiver.join()
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            with contextlib.suppress(OSError):
                worker.answers.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _spawn(self) -> _Worker:
        proc, tasks, answers = workerproc.spawn(
            "protectctl.restore.workers", self._setup, pass_fds=(self._setup.root_fd,)
        )
        self.started += 1
        return _Worker(proc, tasks, answers)

    def _receive(self) -> None:
        """The receiver thread: answers to futures, until every worker has ended."""
        from multiprocessing.connection import wait

        closing = False
        while True:
            with self._mutex:
                live = {w.answers: w for w in self._workers if not w.gone}
            if not live:
                return
            waiting: list[object] = [*live, self._wake_r] if not closing else list(live)
            for conn in wait(waiting):  # type: ignore[arg-type]
                if conn == self._wake_r:
                    closing = True
                    continue
                worker = live[conn]  # type: ignore[index]
                try:
                    message = worker.answers.recv()
                except (EOFError, OSError):
                    self._lost(worker, None)
                    continue
                self._take(worker, message)

    def _take(self, worker: _Worker, message: tuple[object, ...]) -> None:
        if message[0] == "ready":
            with self._mutex:
                worker.ready = True
                self._changed.notify_all()
            return
        if message[0] == "error":
            self._lost(worker, str(message[1]))
            return
        task, answers, notes = cast("tuple[int, list[Answer], list[str]]", message)
        with self._mutex:
            future = worker.pending.pop(task)
        future.notes = notes
        future.set_result([_outcome(a) for a in answers])

    def _lost(self, worker: _Worker, why: str | None) -> None:
        if why is None:
            why = workerproc.exit_reason(worker.proc)
        with self._mutex:
            worker.gone = True
            pending, worker.pending = worker.pending, {}
            self._changed.notify_all()
        if pending:
            log.warning("restore.worker_failed", extra={"why": why})
        for future in pending.values():
            future.set_exception(RestoreError(f"the restore worker process writing it failed ({why})"))


def work_item(parts: tuple[bytes, ...], name: bytes, node: Node, places: tuple[Location, ...]) -> WorkItem:
    """What a worker needs of a regular file to write it (`_write_file`: content and metadata)."""
    return (
        parts,
        name,
        node.size,
        node.mode,
        node.uid,
        node.gid,
        node.user,
        node.group,
        node.atime_ns,
        node.mtime_ns,
        node.chunks,
        node.holes,
        node.xattrs,
        node.content_hash,
        node.hash_scheme.value,
        places,
    )


def _node(item: WorkItem) -> Node:
    parts, name, size, mode, uid, gid, user, group, atime_ns, mtime_ns, chunks, holes, xattrs, digest, scheme, _ = item
    return Node(
        name=name,
        type=NodeType.FILE,
        mode=mode,
        uid=uid,
        gid=gid,
        user=user,
        group=group,
        mtime_ns=mtime_ns,
        atime_ns=atime_ns,
        ctime_ns=0,
        size=size,
        chunks=chunks,
        holes=holes,
        xattrs=xattrs,
        content_hash=digest,
        hash_scheme=HashScheme(scheme),
    )


def _outcome(answer: Answer) -> bytes | None | OSError | ProtectctlError:
    if isinstance(answer, tuple):
        kind, number, text = answer
        return OSError(number, text) if kind == "os" else RestoreError(text)
    return answer


def _answer(outcome: bytes | None | BaseException) -> Answer:
    if isinstance(outcome, OSError):
        return ("os", outcome.errno or 0, outcome.strerror or str(outcome))
    if isinstance(outcome, BaseException):
        return ("error", 0, str(outcome))
    return outcome


# -- the worker side -----------------------------------------------------------------------


class _BatchReader:
    """Blobs read from the local packs at the places the parent sent with the batch."""

    def __init__(self, setup: WorkerSetup) -> None:
        from pathlib import Path

        from protectctl.engine.crypto import Sealer
        from protectctl.engine.storage.local import LocalStorage

        self.storage = LocalStorage(Path(setup.storage_path))
        self.sealer = Sealer(setup.encryption_key)
        self.id_key = setup.id_key
        self.places: dict[bytes, Location] = {}

    def load_blob_into(self, blob_id: BlobId, scratch: BlobScratch, *, verify_id: bool = True) -> memoryview:
        from protectctl.engine.crypto import keyed_hasher
        from protectctl.engine.pack import BlobKind, PackEntry, open_blob_into
        from protectctl.engine.storage.base import ObjectKind, ObjectMissingError

        place = self.places.get(blob_id, f"blob {short_id(blob_id)} has no place in this batch")
        if isinstance(place, str):
            raise CorruptionError(place)
        pack, offset, length, raw_length, kind = place
        entry = PackEntry(blob_id, BlobKind(kind), offset, length, raw_length)
        what = f"pack {pack} (blob {short_id(entry.blob_id)})"
        stored = scratch.stored.view(entry.length)
        try:
            self.storage.get_into(ObjectKind.DATA, pack, entry.offset, stored)
        except ObjectMissingError as err:
            raise CorruptionError(f"{what}: the pack is missing") from err
        except RepositoryError as err:
            raise CorruptionError(f"{what}: {err.message}") from err
        data = open_blob_into(self.sealer, entry, stored, scratch, what)
        if verify_id:
            hasher = keyed_hasher(self.id_key)
            hasher.update(data)
            if hasher.digest() != entry.blob_id:
                raise CorruptionError(f"{what}: content does not match its id")
        return data

    def load_blob(self, blob_id: BlobId) -> bytes:
        return bytes(self.load_blob_into(blob_id, BlobScratch()))


def worker_main(conn: Connection) -> None:
    """A worker process: the setup, then batches until the parent closes the pipe."""
    from multiprocessing.connection import Connection

    from protectctl.crashpoint import reached
    from protectctl.engine.crypto import keyed_hasher
    from protectctl.restore.fs import FsRestorer
    from protectctl.restore.safety import open_dir_path

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    workerproc.die_with_parent(int(sys.argv[1]))
    out = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing printed may mix with the answers
    os.close(devnull)
    try:
        setup: WorkerSetup = conn.recv()
        reader = _BatchReader(setup)
        new_hasher: Callable[[], object] = lambda: keyed_hasher(setup.id_key)  # noqa: E731
        restorer = FsRestorer(
            reader,  # type: ignore[arg-type]
            new_hasher,  # type: ignore[arg-type]
            overwrite=setup.overwrite,
            writeback=setup.writeback,
        )
        out.send(("ready", os.getpid()))
        while True:
            try:
                task = conn.recv()
            except EOFError:
                break
            number, items = task
            reached("restore-worker-batch")  # a batch received, not written yet (tests)
            out.send((number, *_write_batch(restorer, reader, setup.root_fd, items, open_dir_path)))
        out.close()
    except BaseException as err:  # one line for the parent's message; the process ends
        with contextlib.suppress(OSError):
            out.send(("error", f"{type(err).__name__}: {err}"))
            out.close()
        raise SystemExit(1) from None


def _write_batch(
    restorer: object,
    reader: _BatchReader,
    root_fd: int,
    items: list[WorkItem],
    open_dir_path: Callable[[int, Sequence[bytes]], int],
) -> tuple[list[Answer], list[str]]:
    from protectctl.restore.fs import FsRestorer

    assert isinstance(restorer, FsRestorer)
    reader.places = {c: place for item in items for c, place in zip(item[10], item[15], strict=True)}
    answers: list[Answer] = []
    dirs: dict[tuple[bytes, ...], int | OSError] = {}
    try:
        for item in items:
            parts, name, node = item[0], item[1], _node(item)
            where = parts[:-1]
            dir_fd = dirs.get(where)
            if dir_fd is None:
                try:
                    dir_fd = dirs[where] = open_dir_path(root_fd, where)
                except OSError as err:
                    dir_fd = dirs[where] = err
            if isinstance(dir_fd, OSError):
                answers.append(_answer(dir_fd))
                continue
            try:
                answers.append(restorer._write_file(dir_fd, name, node, parts))
            except (OSError, ProtectctlError) as err:
                answers.append(_answer(err))
    finally:
        for fd in dirs.values():
            if isinstance(fd, int):
                os.close(fd)
        reader.places = {}
    notes, restorer.report.notes = restorer.report.notes, []
    return answers, notes
