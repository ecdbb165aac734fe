"""`BlobWriter`: one write session that dedups, compresses, encrypts and packs blobs.

Pipeline: `add` hashes in the caller's thread and asks the repository whether the id is
known; a new blob is sealed (zstd + AES-GCM, both release the GIL) in a small thread pool;
the caller's thread collects sealed records into one open pack per blob kind and hands
full packs to a single upload thread. In-flight seals and queued uploads are bounded, so
memory stays at a few packs whatever the input size. On a normal exit the writer flushes
the open packs, waits for every upload and then writes an index object for its packs; on
an exception it stops and writes nothing further (uploaded packs without an index are
harmless: gc condemns and later deletes them).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from protectctl.engine.crypto import Sealer, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.index import IndexFile, encode_index
from protectctl.engine.pack import BlobKind, PackEntry, seal_blob, seal_pack_header
from protectctl.engine.storage.base import ObjectKind, StorageBackend
from protectctl.progress import NullProgress, Progress

# 16 MiB packs: few enough objects (64k per TiB) for cheap listing on object stores,
# small enough that a damaged pack loses little and a restore's range reads stay local.
DEFAULT_PACK_SIZE = 16 << 20
# Write an index every 64 packs (~1 GiB) so an interrupted first backup can reuse what it
# already uploaded, without an index object per pack.
INDEX_EVERY_PACKS = 64
_UPLOADS_QUEUED = 2


class WriterHost(Protocol):
    """What a writer needs from its repository (kept narrow to avoid an import cycle)."""

    storage: StorageBackend

    def blob_id(self, data: bytes) -> BlobId: ...

    def _claim_new(self, blob_id: BlobId) -> bool: ...

    def _packs_stored(self, pack: str, entries: list[PackEntry]) -> None: ...

    def _packs_indexed(self, name: str, index: IndexFile) -> None: ...

    def _session_ended(self, abandoned: set[BlobId], committed: bool) -> None: ...


@dataclass(slots=True)
class _OpenPack:
    records: list[bytes] = field(default_factory=list)
    entries: list[PackEntry] = field(default_factory=list)
    size: int = 0


class BlobWriter:
    """Context manager; `add` blobs inside it, leave it normally to commit.

    One writer belongs to one thread; for parallel archiving open one writer per thread
    (the repository dedups across all of its active writers).
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
        self._seal_pool: ThreadPoolExecutor | None = None
        self._upload_pool: ThreadPoolExecutor | None = None
        self._sealing: deque[tuple[BlobKind, BlobId, int, Future[bytes]]] = deque()
        self._uploads: deque[Future[tuple[str, list[PackEntry]]]] = deque()
        self._open: dict[BlobKind, _OpenPack] = {kind: _OpenPack() for kind in BlobKind}
        self._unindexed: dict[str, list[PackEntry]] = {}
        self._claimed: set[BlobId] = set()
        self._closed = False
        self.bytes_added = 0  # stored bytes of new blobs (after compression and encryption)
        self.chunks_new = 0  # new DATA blobs
        self.blobs_new = 0  # new blobs of any kind
        self.packs_written = 0

    def __enter__(self) -> BlobWriter:
        self._seal_pool = ThreadPoolExecutor(self._workers, thread_name_prefix="seal")
        self._upload_pool = ThreadPoolExecutor(1, thread_name_prefix="upload")
        self._progress.start("upload")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(self, kind: BlobKind, data: bytes) -> tuple[BlobId, bool]:
        """Store `data` unless the repository already has it; returns (id, was_new)."""
        if self._seal_pool is None or self._closed:
            raise RuntimeError("BlobWriter.add outside its `with` block")
        blob_id = self._host.blob_id(data)
        self._progress.advance(bytes_done=len(data))
        if not self._host._claim_new(blob_id):
            return blob_id, False
        self._claimed.add(blob_id)
        future = self._seal_pool.submit(seal_blob, self._sealer, kind, blob_id, bytes(data))
        self._sealing.append((kind, blob_id, len(data), future))
        self._drain_sealed(block_over=2 * self._workers)
        return blob_id, True

    def commit(self) -> None:
        """Flush open packs, wait for uploads, write the index. Idempotent."""
        if self._closed:
            return
        try:
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
        # Collect finished seals in order; block on the oldest while too many are in flight.
        while self._sealing and (len(self._sealing) > block_over or self._sealing[0][3].done()):
            kind, blob_id, raw_length, future = self._sealing.popleft()
            self._append(kind, blob_id, raw_length, future.result())

    def _append(self, kind: BlobKind, blob_id: BlobId, raw_length: int, record: bytes) -> None:
        pack = self._open[kind]
        pack.entries.append(PackEntry(blob_id, kind, pack.size, len(record), raw_length))
        pack.records.append(record)
        pack.size += len(record)
        self.bytes_added += len(record)
        self.blobs_new += 1
        if kind is BlobKind.DATA:
            self.chunks_new += 1
        if pack.size >= self._pack_size:
            self._finish_pack(kind)

    def _finish_pack(self, kind: BlobKind) -> None:
        pack = self._open[kind]
        if not pack.entries:
            return
        self._open[kind] = _OpenPack()
        assert self._upload_pool is not None
        self._uploads.append(self._upload_pool.submit(self._upload, pack))
        self._drain_uploads(block_over=_UPLOADS_QUEUED)

    def _upload(self, pack: _OpenPack) -> tuple[str, list[PackEntry]]:
        body = b"".join(pack.records) + seal_pack_header(self._sealer, pack.entries)
        name = content_name(body)
        self._host.storage.put(ObjectKind.DATA, name, body)
        return name, pack.entries

    def _drain_uploads(self, *, block_over: int) -> None:
        while self._uploads and (len(self._uploads) > block_over or self._uploads[0].done()):
            name, entries = self._uploads.popleft().result()
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
