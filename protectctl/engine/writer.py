"""`BlobWriter`: one write session that dedups, compresses, encrypts and packs blobs.

Pipeline: `add` hashes in the caller's thread and asks the repository whether the id is
known; only a new blob is copied (the caller's buffer may be reused for the next chunk) and
compressed in a small thread pool (zstd releases the GIL) — a small one (`INLINE_MAX`: small
files, trees) is compressed right in the caller's thread, cheaper than a hand-off; the
caller's thread encrypts each compressed record straight into the open pack's buffer
(AES-GCM `encrypt_into`, no copy) and hands full packs to a single upload thread. `add` may
be called from several threads at once (the archiver reads big files in a few threads,
agent/filereads.py): hashing runs in the calling thread, everything that orders or packs
records holds the writer's lock. Pack buffers are reused: at most one pack is being
uploaded while the next one fills, and in-flight compressions are bounded, so memory stays
at about two packs plus a few chunks whatever the input size. On a normal exit the writer
flushes the open packs, waits for every upload and then writes an index object for its
packs; on an exception it stops and writes nothing further (uploaded packs without an index
are harmless: gc condemns and later deletes them).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, cast

from protectctl.engine.buffers import BufferPool, Scratch
from protectctl.engine.crypto import Sealer, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.index import IndexFile, encode_index
from protectctl.engine.pack import (
    LEVELS,
    BlobKind,
    PackEntry,
    blob_body,
    frame,
    record_size,
    seal_pack_header,
    seal_record_into,
    sealed_header_size,
    small_body,
)
from protectctl.engine.storage.base import ObjectKind, StorageBackend
from protectctl.progress import NullProgress, Progress

# 8 MiB packs: few enough objects (128k per TiB) for cheap listing on object stores, small
# enough that a damaged pack loses little. The writer holds two pack buffers (one filling,
# one uploading), so the pack size is most of a backup's memory beyond the interpreter:
# 16 MiB packs measured ~20 MB more peak RSS than 8 MiB for no gain in speed.
DEFAULT_PACK_SIZE = 8 << 20
# Write an index every 64 packs (~1 GiB) so an interrupted first backup can reuse what it
# already uploaded, without an index object per pack.
INDEX_EVERY_PACKS = 64
# Packs being uploaded while the caller fills the next one. One keeps the disk busy while
# the CPUs seal; more only holds more 16 MiB buffers (peak RSS) without going faster.
_UPLOADS_QUEUED = 1
# Pack buffers start here and double up to the pack size: a tree pack of a small source
# never costs a full pack of memory.
_INITIAL_BUFFER = 1 << 20
# Blobs up to this size (small files, the tails of large ones, trees) are compressed in the
# caller's thread: a thread-pool hand-off (submit, wake-up, future, GIL hand-back) costs more
# than compressing a few KiB. Measured on 20,000 files of 1-3 KiB: see docs/performance.md.
INLINE_MAX = 64 << 10


class WriterHost(Protocol):
    """What a writer needs from its repository (kept narrow to avoid an import cycle)."""

    storage: StorageBackend

    def blob_id(self, data: bytes | bytearray | memoryview) -> BlobId: ...

    def _claim_new(self, blob_id: BlobId) -> bool: ...

    def _packs_stored(self, pack: str, entries: list[PackEntry]) -> None: ...

    def _packs_indexed(self, name: str, index: IndexFile) -> None: ...

    def _session_ended(self, abandoned: set[BlobId], committed: bool) -> None: ...


@dataclass(slots=True)
class _OpenPack:
    """Records sealed in place into `buf`; the header is sealed behind them at upload."""

    buf: bytearray = field(default_factory=bytearray)
    entries: list[PackEntry] = field(default_factory=list)
    size: int = 0


class BlobWriter:
    """Context manager; `add` blobs inside it, leave it normally to commit.

    `add` is thread-safe (a lock orders the records; hashing and compression run outside it);
    `commit` and `abort` belong to the thread that opened the writer, once the others are done.
    The repository dedups across all of its active writers too.
    """

    def __init__(
        self,
        host: WriterHost,
        sealer: Sealer,
        *,
        progress: Progress | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        workers: int | None = None,
    ) -> None:
        self._host = host
        self._sealer = sealer
        self._progress = progress or NullProgress()
        self._pack_size = pack_size
        self._workers = workers or min(4, os.cpu_count() or 1)
        self.parallelism = workers  # the job's `parallelism` setting as given (None: the default)
        self._seal_pool: ThreadPoolExecutor | None = None
        self._upload_pool: ThreadPoolExecutor | None = None
        # (kind, id, raw length, buffers to give back, body or its future), in add order.
        self._sealing: deque[tuple[BlobKind, BlobId, int, tuple[Scratch, ...], Future[memoryview] | bytes]] = deque()
        self._buffers = BufferPool()  # chunk copies and compressed records, reused (engine/buffers.py)
        self._uploads: deque[Future[tuple[str, list[PackEntry], bytearray]]] = deque()
        self._spare: bytearray | None = None  # a full-size pack buffer back from the uploader
        self._open: dict[BlobKind, _OpenPack] = {kind: _OpenPack() for kind in BlobKind}
        self._unindexed: dict[str, list[PackEntry]] = {}
        self._claimed: set[BlobId] = set()
        self._closed = False
        # Orders records into packs when several threads add (uncontended: ~0.1 us per add).
        self._lock = threading.RLock()
        self.bytes_added = 0  # stored bytes of new blobs (after compression and encryption)
        self.chunks_new = 0  # new DATA blobs
        self.blobs_new = 0  # new blobs of any kind
        self.packs_written = 0

    def __enter__(self) -> BlobWriter:
        self._seal_pool = ThreadPoolExecutor(self._workers, thread_name_prefix="seal")
        # A backend with latency per request (s3) says how many PUTs to keep in flight.
        self._parallel_puts = max(1, int(getattr(self._host.storage, "put_parallelism", 1)))
        self._upload_pool = ThreadPoolExecutor(self._parallel_puts, thread_name_prefix="upload")
        self._progress.start("upload")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(
        self, kind: BlobKind, data: bytes | bytearray | memoryview, *, level: int | None = None, count: bool = True
    ) -> tuple[BlobId, bool]:
        """Store `data` unless the repository already has it; returns (id, was_new). `level`:
        the zstd level of a new blob (pack.LEVELS), default the repository's. `count`: False
        when the caller reports the progress itself (a thread other than the progress's).

        `data` may be a view of a buffer the caller reuses once `add` returns: a new blob is
        copied before it is queued, a known one is never copied.
        """
        if self._seal_pool is None or self._closed:
            raise RuntimeError("BlobWriter.add outside its `with` block")
        if level is not None and level not in LEVELS:
            raise ValueError(f"zstd level {level} is not one of {LEVELS.start}..{LEVELS.stop - 1}")
        blob_id = self._host.blob_id(data)  # outside the lock: BLAKE3 releases the GIL
        if kind is BlobKind.DATA and count:  # progress counts content (tree blobs are bookkeeping)
            self._progress.advance(bytes_done=len(data))
        with self._lock:
            if self._closed:
                raise RuntimeError("BlobWriter.add outside its `with` block")
            if not self._host._claim_new(blob_id):
                return blob_id, False
            self._claimed.add(blob_id)
            if len(data) <= INLINE_MAX:
                body = small_body(data, level)
                if not self._sealing:  # nothing queued before it: straight into the pack
                    self._append(kind, blob_id, len(data), body)
                    return blob_id, True
                self._sealing.append((kind, blob_id, len(data), (), body))
            else:
                copy, out = self._buffers.take(), self._buffers.take()
                future = self._seal_pool.submit(blob_body, frame(data, copy), out, level)
                self._sealing.append((kind, blob_id, len(data), (copy, out), future))
            self._drain_sealed(block_over=self._workers + 2)
        return blob_id, True

    def add_sealed(self, kind: BlobKind, blob_id: BlobId, raw_length: int, record: bytes | bytearray) -> bool:
        """Store a record another process sealed (`seal_record_into` with this repository's key,
        by an archiver worker: agent/workers.py) unless the repository has the blob or another
        writer claimed it; True when it was stored. The caller already counted its progress."""
        if self._seal_pool is None or self._closed:
            raise RuntimeError("BlobWriter.add_sealed outside its `with` block")
        with self._lock:
            if not self._host._claim_new(blob_id):
                return False
            self._claimed.add(blob_id)
            if self._sealing:  # records keep their add order in the packs
                self._drain_sealed(block_over=0)
            pack, out = self._room(kind, len(record))
            out[:] = record
            self._entered(pack, kind, blob_id, len(record), raw_length)
        return True

    def commit(self) -> None:
        """Flush open packs, wait for uploads, write the index. Idempotent."""
        if self._closed:
            return
        try:
            with self._lock:
                self._drain_sealed(block_over=0)
                for kind in BlobKind:
                    self._finish_pack(kind)
                self._drain_uploads(block_over=0)
                self._write_index()
        except BaseException:
            self.abort()
            raise
        self._shutdown()
        self._claimed.clear()
        self._host._session_ended(set(), committed=True)

    def abort(self) -> None:
        """Stop without writing anything further."""
        if self._closed:
            return
        self._shutdown(cancel=True)
        abandoned = set(self._claimed)
        for entries in self._unindexed.values():
            abandoned.update(e.blob_id for e in entries)
        self._host._session_ended(abandoned, committed=False)

    def _shutdown(self, *, cancel: bool = False) -> None:
        self._closed = True
        for pool in (self._seal_pool, self._upload_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=cancel)
        self._progress.finish()

    def _drain_sealed(self, *, block_over: int) -> None:
        # Collect finished compressions in order; block on the oldest while too many are in flight.
        while self._sealing and (len(self._sealing) > block_over or _done(self._sealing[0][-1])):
            kind, blob_id, raw_length, buffers, pending = self._sealing.popleft()
            if isinstance(pending, bytes):
                self._append(kind, blob_id, raw_length, pending)
                continue
            body = pending.result()
            self._append(kind, blob_id, raw_length, body)
            body.release()
            for scratch in buffers:
                self._buffers.give(scratch)

    def _append(self, kind: BlobKind, blob_id: BlobId, raw_length: int, body: memoryview | bytes) -> None:
        length = record_size(len(body))
        pack, out = self._room(kind, length)
        seal_record_into(self._sealer, kind, blob_id, body, out)
        self._entered(pack, kind, blob_id, length, raw_length)

    def _room(self, kind: BlobKind, length: int) -> tuple[_OpenPack, memoryview]:
        """The open pack of `kind` with room for a record of `length` bytes, and that room."""
        pack = self._open[kind]
        if pack.entries and pack.size + length + sealed_header_size(len(pack.entries) + 1) > self._pack_size:
            self._finish_pack(kind)
            pack = self._open[kind]
        self._reserve(pack, pack.size + length + sealed_header_size(len(pack.entries) + 1))
        return pack, memoryview(pack.buf)[pack.size : pack.size + length]

    def _entered(self, pack: _OpenPack, kind: BlobKind, blob_id: BlobId, length: int, raw_length: int) -> None:
        pack.entries.append(PackEntry(blob_id, kind, pack.size, length, raw_length))
        pack.size += length
        self.bytes_added += length
        self.blobs_new += 1
        if kind is BlobKind.DATA:
            self.chunks_new += 1

    def _reserve(self, pack: _OpenPack, needed: int) -> None:
        """Make `pack.buf` at least `needed` bytes: reuse a spare pack buffer, else grow by doubling."""
        if needed <= len(pack.buf):
            return
        if not pack.buf and self._spare is not None and len(self._spare) >= needed:
            pack.buf, self._spare = self._spare, None
            return
        grown = bytearray(max(needed, min(2 * len(pack.buf), self._pack_size), _INITIAL_BUFFER))
        grown[: pack.size] = memoryview(pack.buf)[: pack.size]
        pack.buf = grown

    def _finish_pack(self, kind: BlobKind) -> None:
        pack = self._open[kind]
        if not pack.entries:
            return
        self._open[kind] = _OpenPack()
        assert self._upload_pool is not None
        self._uploads.append(self._upload_pool.submit(self._upload, pack))
        self._drain_uploads(block_over=_UPLOADS_QUEUED * self._parallel_puts)

    def _upload(self, pack: _OpenPack) -> tuple[str, list[PackEntry], bytearray]:
        # The header goes behind the records, in the room `_append` reserved for it.
        header = seal_pack_header(self._sealer, pack.entries)
        end = pack.size + len(header)
        pack.buf[pack.size : end] = header
        body = memoryview(pack.buf)[:end]
        try:
            name = content_name(body)
            # A view, not a 16 MiB copy: `put` only reads `data` while it runs (storage.base).
            self._host.storage.put(ObjectKind.DATA, name, cast(bytes, body))
        finally:
            body.release()
        return name, pack.entries, pack.buf

    def _drain_uploads(self, *, block_over: int) -> None:
        while self._uploads and (len(self._uploads) > block_over or self._uploads[0].done()):
            name, entries, buf = self._uploads.popleft().result()
            if len(buf) >= self._pack_size and (self._spare is None or len(buf) > len(self._spare)):
                self._spare = buf  # the next pack fills it: no new 16 MiB allocation, no page faults
            self._unindexed[name] = entries
            self.packs_written += 1
            self._host._packs_stored(name, entries)
        if len(self._unindexed) >= INDEX_EVERY_PACKS:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        index = IndexFile(packs=dict(self._unindexed))
        name, stored = encode_index(self._sealer, index)
        self._host.storage.put(ObjectKind.INDEX, name, stored)
        for entries in self._unindexed.values():
            self._claimed.difference_update(e.blob_id for e in entries)
        self._unindexed.clear()
        self._host._packs_indexed(name, index)


def _done(pending: Future[memoryview] | bytes) -> bool:
    return isinstance(pending, bytes) or pending.done()
