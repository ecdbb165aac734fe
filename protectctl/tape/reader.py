"""Read one copied point back from its cartridges, for restore (no repository needed).

A tape is read once, sequentially, part after part: every record is authenticated as it is
read (so damage stops the restore before anything is written to the target) and its
ciphertext is spooled to a temporary file, with an in-memory table of where each blob is.
The restorer then asks for trees and blobs in any order (`TapePointReader` satisfies the
restore's reader Protocol); each is re-opened from the spool and its keyed id verified
with the repository id key carried in the point header. Plaintext never touches the spool.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import blake3

from protectctl.engine.buffers import BlobScratch
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.pack import decode_body_into
from protectctl.engine.points import Point
from protectctl.engine.tree import Tree, decode_tree
from protectctl.errors import CorruptionError, TapeCorruptionError, TapeError
from protectctl.progress import NullProgress, Progress
from protectctl.tape.catalog import Part
from protectctl.tape.format import (
    IndexRun,
    RecordType,
    SegmentHeader,
    TapeBlob,
    TapeBody,
    VolumeCipher,
    decode_blobs,
    decode_bodies,
    decode_header,
    decode_index,
    decode_trailer,
)
from protectctl.tape.library import EndOfDataError
from protectctl.tape.pipeline import StageClock, default_workers, ordered_map, timed
from protectctl.tape.volume import Volume

_CACHED_RECORDS = 8
# Spooled records kept opened for the restore: a record leaves as soon as each of its blobs was
# served once, so this bound is reached only when restore threads work on that many records at
# once (small-file batches and large files in flight span several records).
_OPENED_RECORDS = 16
# Trees met while the tape is read are kept (their bodies, still compressed) up to this much, so
# the restore's walks of the trees (select, count, write) decrypt no record for them.
_TREE_STASH_BYTES = 64 << 20
_KIND_TREE = 1

# Opens a cartridge for reading: barcode → (volume positioned anywhere, release callback).
MountFn = Callable[[str], tuple[Volume, Callable[[], None]]]


@dataclass(frozen=True, slots=True)
class _Spooled:
    cipher: VolumeCipher
    file_no: int
    record_no: int
    offset: int
    length: int


class TapePointReader:
    """A point's trees and blobs, read from tape into a ciphertext spool."""

    def __init__(self, spool_dir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="protectctl-tape-", dir=spool_dir)
        self._spool_path = Path(self._tmp.name) / "spool"
        self._spool = open(self._spool_path, "w+b")  # noqa: SIM115 - lives as long as the reader
        self._spool_end = 0  # where the next spooled record goes (workers write them with pwrite)
        self._records: list[_Spooled] = []
        self._where: dict[BlobId, tuple[int, int, int]] = {}  # blob → (record index, index in record, length)
        self._trees: dict[BlobId, TapeBlob | TapeBody] = {}  # tree bodies kept from the read pass
        self._unserved: list[bytearray] = []  # per spooled record: 1 for each blob not served yet
        self._left: list[int] = []  # per spooled record: how many blobs not served yet
        self._tree_bytes = 0
        self._cache: OrderedDict[int, list[TapeBlob] | list[TapeBody]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Event] = {}  # records being opened by one thread
        self.header: SegmentHeader | None = None
        self.bytes_read = 0
        self._copied_at: datetime | None = None
        self._last_header: SegmentHeader | None = None
        self.workers = default_workers()
        self.clock = StageClock()  # CPU seconds per stage of the read (the bench prints them)
        # partial reads (`read_index`): blob → (part, record), the parts, what is mounted
        self._at: dict[BlobId, tuple[int, int]] | None = None
        self._parts: dict[int, Part] = {}
        self._mount_fn: MountFn | None = None
        self._mounted: tuple[int, Volume, Callable[[], None]] | None = None
        self._drive_lock = threading.Lock()
        self._partial_cache: OrderedDict[tuple[int, int], list[TapeBody]] = OrderedDict()
        self.records_read = 0  # data records read from tape (partial reads: only those needed)
        self.records_opened = 0  # spooled records decrypted again for the restore (trees need none)

    # -- reading the tape ------------------------------------------------------------------------

    def read_parts(
        self,
        point_id: str,
        parts: Sequence[Part],
        mount: MountFn,
        progress: Progress | None = None,
        *,
        copied_at: datetime | None = None,
    ) -> None:
        """Read every part in order; TapeError on a gap, damage or an incomplete copy.

        With `copied_at`, each part is the segment of that writing run: an abandoned attempt
        earlier in the same tape file (left by an interrupted run, before appends started
        after the last filemark) is passed over."""
        self._copied_at = copied_at
        progress = progress or NullProgress()
        progress.start("tape read")
        done = False
        for expected, part in enumerate(sorted(parts, key=lambda p: p.part), start=1):
            if part.part != expected:
                raise TapeError(f"point {point_id}: part {expected} is missing from the tape catalog")
            volume, release = mount(part.barcode)
            try:
                done = self._read_part(volume, point_id, part, progress)
            finally:
                release()
        progress.finish()
        if not done:
            raise TapeError(
                f"point {point_id}: its copy on tape is incomplete (no trailer after part {len(parts)})",
                hint="run `protectctl tape inventory --rebuild`; the copy may have "
                "been interrupted, restore another point",
            )

    def read_index(
        self,
        point_id: str,
        parts: Sequence[Part],
        index: Sequence[IndexRun],
        mount: MountFn,
        *,
        copied_at: datetime | None = None,
    ) -> None:
        """Prepare to read only what is asked (a `--path` restore of a format-2 copy): the point's
        header and its index records, located directly; blobs are then read record by record, on
        demand (`load_blob`), each record authenticated as it is read."""
        self._copied_at = copied_at
        self._parts = {p.part: p for p in parts}
        if sorted(self._parts) != list(range(1, len(parts) + 1)) or not index:
            raise TapeError(f"point {point_id}: the catalog does not locate its parts and index on tape")
        self._mount_fn = mount
        at: dict[BlobId, tuple[int, int]] = {}
        with self._drive_lock:
            self.header = self._find_header(self._volume_of(1), point_id, self._parts[1])
            for run in index:
                part = self._parts.get(run.part)
                if part is None:
                    raise TapeError(f"point {point_id}: its index names part {run.part}, which the catalog lacks")
                volume = self._volume_of(run.part)
                where = f"cartridge {part.barcode} file {part.file}"
                volume.drive.locate(part.file, run.record)
                for _ in range(run.count):
                    record = volume.read()
                    if record is None or record[0] is not RecordType.INDEX:
                        raise TapeCorruptionError(f"{where}: record {run.record} is not the index the catalog names")
                    at.update((blob_id, (p, r)) for blob_id, p, r in decode_index(record[1], where))
        self._at = at

    def _volume_of(self, part_no: int) -> Volume:
        """The cartridge of part `part_no`, mounted (another one released first); under `_drive_lock`."""
        if self._mounted is not None and self._mounted[0] == part_no:
            return self._mounted[1]
        self._release()
        assert self._mount_fn is not None
        volume, release = self._mount_fn(self._parts[part_no].barcode)
        self._mounted = (part_no, volume, release)
        return volume

    def _release(self) -> None:
        if self._mounted is not None:
            mounted, self._mounted = self._mounted, None
            mounted[2]()

    def _located_record(self, part_no: int, record_no: int) -> list[TapeBody]:
        """One `B` record of the copy, read from its cartridge (a few are kept for the next blobs)."""
        key = (part_no, record_no)
        with self._drive_lock:
            cached = self._partial_cache.get(key)
            if cached is not None:
                self._partial_cache.move_to_end(key)
                return cached
            part = self._parts[part_no]
            where = f"cartridge {part.barcode} file {part.file}"
            volume = self._volume_of(part_no)
            volume.drive.locate(part.file, record_no)
            record = volume.read()
            self.records_read += 1
            if record is None or record[0] is not RecordType.BODIES:
                raise TapeCorruptionError(f"{where}: record {record_no} is not the data record the index names")
            self.bytes_read += len(record[2])
            bodies = decode_bodies(record[1], where)
            self._partial_cache[key] = bodies
            while len(self._partial_cache) > _CACHED_RECORDS:
                self._partial_cache.popitem(last=False)
            return bodies

    def _find_header(self, volume: Volume, point_id: str, part: Part) -> SegmentHeader:
        """The part's header: the first record of its file, or a later one after an abandoned attempt."""
        where = f"cartridge {part.barcode} file {part.file}"
        volume.drive.seek_file(part.file)
        seen: SegmentHeader | None = None
        while True:
            file_no, record_no, raw = _next_raw(volume)
            if raw is None:
                if seen is None:
                    raise TapeCorruptionError(f"{where}: does not start with a point header")
                raise TapeCorruptionError(
                    f"{where}: holds point {seen.point.id} part {seen.part}, expected {point_id} part {part.part}"
                )
            if raw[:1] != RecordType.HEADER.value:
                if seen is None:
                    raise TapeCorruptionError(f"{where}: does not start with a point header")
                continue
            _kind, plain = volume.cipher.open(raw, file_no, record_no)
            seen = decode_header(plain, where)
            same_run = self._copied_at is None or seen.copied_at == self._copied_at
            if seen.point.id == point_id and seen.part == part.part and same_run:
                self._last_header = seen
                return seen

    def _read_part(self, volume: Volume, point_id: str, part: Part, progress: Progress) -> bool:
        """The part's records after its header, authenticated and decoded by a pipeline of threads
        while the drive reads on, spooled in order; whether the point's trailer was reached."""
        where = f"cartridge {part.barcode} file {part.file}"
        self._find_header(volume, point_id, part)
        if self.header is None:
            self.header = self._last_header
        clock = self.clock
        spool_fd = self._spool.fileno()

        def placed(
            raws: Iterator[tuple[int, int, bytes] | None],
        ) -> Iterator[tuple[tuple[int, int, bytes] | None, int]]:
            """Each record with where its ciphertext goes in the spool (data records, by their type
            byte, which the worker then authenticates), in tape order: this thread only reads."""
            for raw in raws:
                offset = -1
                if raw is not None and raw[2][:1] in _SPOOLED:
                    offset, self._spool_end = self._spool_end, self._spool_end + len(raw[2])
                yield raw, offset

        def open_record(item: tuple[tuple[int, int, bytes] | None, int]) -> tuple[_Opened, int] | None:
            raw, offset = item
            with clock.stage("authenticate records"):
                opened = _open_record(volume.cipher, raw, where)
            if opened is None:
                return None
            if offset >= 0 and opened[0] in (RecordType.DATA, RecordType.BODIES):
                with clock.stage("spool records"):
                    _pwrite_all(spool_fd, opened[2][2], offset)
            return opened, offset

        raws = timed(_raw_records(volume), clock, "read records")
        opened = ordered_map(open_record, placed(raws), workers=self.workers)
        with contextlib.closing(opened):
            for record in opened:
                if record is None:
                    return False  # a filemark or the end of data before the closing record
                (kind, plain, raw, blobs, trees), offset = record
                if kind in (RecordType.DATA, RecordType.BODIES):
                    self._spool_record(volume.cipher, raw, offset, blobs, trees)
                    progress.advance(bytes_done=len(raw[2]))
                elif kind is RecordType.INDEX:
                    continue  # the spool knows where every blob is; the index serves partial reads
                elif kind is RecordType.TRAILER:
                    trailer = decode_trailer(plain, where)
                    if trailer.point_id != point_id or trailer.blobs != len(self._where):
                        raise TapeCorruptionError(
                            f"{where}: the trailer counts {trailer.blobs} blobs, the tape held {len(self._where)}"
                        )
                    return True
                elif kind is RecordType.END_OF_VOLUME:
                    return False
                else:
                    raise TapeCorruptionError(f"{where}: unexpected {kind.name} record inside a point")
        return False

    def _spool_record(
        self,
        cipher: VolumeCipher,
        raw: tuple[int, int, bytes],
        offset: int,
        blobs: list[TapeBlob] | list[TapeBody],
        trees: Sequence[TapeBlob | TapeBody],
    ) -> None:
        """Record where a record's ciphertext (written by a worker) lies in the spool and its blobs."""
        file_no, record_no, data = raw
        index = len(self._records)
        self._records.append(_Spooled(cipher, file_no, record_no, offset, len(data)))
        self._unserved.append(bytearray(b"\x01") * len(blobs))
        self._left.append(len(blobs))
        listed: Sequence[TapeBlob | TapeBody] = blobs
        for i, blob in enumerate(listed):
            self._where[blob.blob_id] = (index, i, _raw_length(blob))
        for tree in trees:
            size = len(tree.body) if isinstance(tree, TapeBody) else len(tree.data)
            if self._tree_bytes + size <= _TREE_STASH_BYTES:
                self._trees[tree.blob_id] = tree
                self._tree_bytes += size
        if index < _CACHED_RECORDS:  # a restore starts with the first records: keep them opened
            with self._lock:
                self._cache[index] = blobs
        self.bytes_read += len(data)

    # -- what the restorer asks -------------------------------------------------------------------

    @property
    def point(self) -> Point:
        if self.header is None:
            raise TapeError("no point has been read")
        return self.header.point

    def content_hasher(self) -> blake3.blake3:
        if self.header is None:
            raise TapeError("no point has been read")
        return blake3.blake3(key=self.header.id_key)

    def _record(self, index: int) -> list[TapeBlob] | list[TapeBody]:
        """A spooled record, opened once however many restore threads want its blobs at the same
        time (the others wait for that one decryption instead of repeating it)."""
        with self._lock:
            while True:
                cached = self._cache.get(index)
                if cached is not None:
                    self._cache.move_to_end(index)
                    return cached
                loading = self._loading.get(index)
                if loading is None:
                    break
                self._lock.release()
                try:
                    loading.wait()
                finally:
                    self._lock.acquire()
                if index not in self._cache:  # it failed there: try (and fail) here too
                    break
            self._loading[index] = done = threading.Event()
            self.records_opened += 1
            spooled = self._records[index]
        try:
            raw = os.pread(self._spool.fileno(), spooled.length, spooled.offset)
            kind, plain = spooled.cipher.open(raw, spooled.file_no, spooled.record_no)
            where = f"cartridge {spooled.cipher.label.barcode} file {spooled.file_no}"
            blobs = decode_bodies(plain, where) if kind is RecordType.BODIES else decode_blobs(plain, where)
            with self._lock:
                self._cache[index] = blobs
                while len(self._cache) > _OPENED_RECORDS:
                    self._cache.popitem(last=False)
            return blobs
        finally:
            with self._lock:
                self._loading.pop(index, None)
            done.set()

    def load_blob(self, blob_id: BlobId) -> bytes:
        """A blob's plaintext, its keyed hash checked against its id."""
        data = self.load_blob_unchecked(blob_id)
        self._check_id(blob_id, data)
        return data

    def _check_id(self, blob_id: BlobId, data: bytes | memoryview) -> None:
        hasher = self.content_hasher()
        hasher.update(data)
        if hasher.digest() != blob_id:
            raise TapeCorruptionError(f"blob {short_id(blob_id)} on tape does not match its id")

    def _blob(self, blob_id: BlobId) -> TapeBlob | TapeBody:
        """The blob as its record holds it (the record read and authenticated if it must be)."""
        if self._at is not None:
            at = self._at.get(blob_id)
            if at is None:
                raise TapeCorruptionError(f"blob {short_id(blob_id)} is not in the index of the copy on tape")
            found = next((b for b in self._located_record(*at) if b.blob_id == blob_id), None)
            if found is None:
                raise TapeCorruptionError(f"blob {short_id(blob_id)} is not in the record its index names")
            return found
        located = self._where.get(blob_id)
        if located is None:
            raise TapeCorruptionError(f"blob {short_id(blob_id)} is not in the copy on tape")
        index, i, _length = located
        blob = self._record(index)[i]
        with self._lock:
            unserved = self._unserved[index]
            if unserved[i]:
                unserved[i] = 0
                self._left[index] -= 1
                if not self._left[index]:  # each blob served once: drop it (a later need reopens it)
                    self._cache.pop(index, None)
        return blob

    def load_blob_unchecked(self, blob_id: BlobId) -> bytes:
        """`load_blob` without the id check, for a restore that checks each file's whole hash
        (its records are authenticated all the same)."""
        blob = self._blob(blob_id)
        return blob.plaintext("tape") if isinstance(blob, TapeBody) else blob.data

    def load_blob_into(self, blob_id: BlobId, scratch: BlobScratch, *, verify_id: bool = True) -> memoryview:
        """`load_blob` (`verify_id=False`: `load_blob_unchecked`) decoded into one thread's scratch
        buffers (a stored blob: a view of its record), as the repository offers it: no allocation
        per blob. The view is valid until `scratch` is used again."""
        blob = self._blob(blob_id)
        if isinstance(blob, TapeBody):
            try:
                data = decode_body_into(memoryview(blob.body), blob.raw_length, scratch, "tape")
            except CorruptionError as err:
                raise TapeCorruptionError(f"{err.message} (blob {short_id(blob_id)})") from err
        else:
            data = memoryview(blob.data)
        if verify_id:
            self._check_id(blob_id, data)
        return data

    def blob_size(self, blob_id: BlobId) -> int:
        """A blob's plaintext length, from the record tables read (a large file can then be
        restored in ranges, as from the repository)."""
        located = self._where.get(blob_id) if self._at is None else None
        return located[2] if located is not None else _raw_length(self._blob(blob_id))

    def load_tree(self, blob_id: BlobId) -> Tree:
        stashed = self._trees.get(blob_id)
        if stashed is None:
            return decode_tree(self.load_blob(blob_id))
        data = stashed.plaintext("tape") if isinstance(stashed, TapeBody) else stashed.data
        self._check_id(blob_id, data)
        return decode_tree(data)

    def holds(self, blob_id: BlobId) -> bool:
        """Whether the copy read (or its index, for a partial read) has the blob."""
        return blob_id in self._at if self._at is not None else blob_id in self._where

    def unmount(self) -> None:
        """Give back the cartridge a partial read holds in a drive; the next read mounts it again
        (browsing reads several copies, one cartridge at a time)."""
        with self._drive_lock:
            self._release()

    def close(self) -> None:
        with self._drive_lock:
            self._release()
        self._spool.close()
        self._tmp.cleanup()

    def __enter__(self) -> TapePointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Opened = tuple[
    RecordType, bytes, tuple[int, int, bytes], "list[TapeBlob] | list[TapeBody]", "list[TapeBlob | TapeBody]"
]


_SPOOLED = (RecordType.DATA.value, RecordType.BODIES.value)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _raw_length(blob: TapeBlob | TapeBody) -> int:
    return blob.raw_length if isinstance(blob, TapeBody) else len(blob.data)


def _raw_records(volume: Volume) -> Iterator[tuple[int, int, bytes] | None]:
    """(file, record, raw) from the drive's position on, in the caller's thread; None ends it
    (a filemark or the end of data)."""
    while True:
        file_no, record_no, raw = _next_raw(volume)
        if raw is None:
            yield None
            return
        yield file_no, record_no, raw


def _next_raw(volume: Volume) -> tuple[int, int, bytes | None]:
    """The position and raw bytes of the next record (None at a filemark or the end of data)."""
    file_no, record_no = volume.drive.position()
    try:
        return file_no, record_no, volume.drive.read_record()
    except EndOfDataError:
        return file_no, record_no, None


def _open_record(cipher: VolumeCipher, item: tuple[int, int, bytes] | None, where: str) -> _Opened | None:
    """Authenticate a record and decode its blob table (a pipeline stage, on a worker thread)."""
    if item is None:
        return None
    file_no, record_no, raw = item
    kind, plain = cipher.open(raw, file_no, record_no)
    blobs: list[TapeBlob] | list[TapeBody] = []
    trees: list[TapeBlob | TapeBody] = []
    if kind is RecordType.BODIES:
        blobs = decode_bodies(plain, where)
        # copied out of the record, so a kept tree does not keep its whole record in memory
        trees = [TapeBody(b.kind, b.blob_id, b.raw_length, bytes(b.body)) for b in blobs if b.kind == _KIND_TREE]
    elif kind is RecordType.DATA:
        blobs = decode_blobs(plain, where)
        trees = [b for b in blobs if b.kind == _KIND_TREE]
    return kind, plain, item, blobs, trees
