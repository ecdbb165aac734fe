"""Read one copied point back from its cartridges, for restore (no repository needed).

A tape is read once, sequentially, part after part: every record is authenticated as it is
read (so damage stops the restore before anything is written to the target) and its
ciphertext is spooled to a temporary file, with an in-memory table of where each blob is.
The restorer then asks for trees and blobs in any order (`TapePointReader` satisfies the
restore's reader Protocol); each is re-opened from the spool and its keyed id verified
with the repository id key carried in the point header. Plaintext never touches the spool.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import blake3

from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.points import Point
from protectctl.engine.tree import Tree, decode_tree
from protectctl.errors import TapeCorruptionError, TapeError
from protectctl.progress import NullProgress, Progress
from protectctl.tape.catalog import Part
from protectctl.tape.format import (
    RecordType,
    SegmentHeader,
    TapeBlob,
    VolumeCipher,
    decode_blobs,
    decode_header,
    decode_trailer,
)
from protectctl.tape.library import EndOfDataError
from protectctl.tape.volume import Volume

_CACHED_RECORDS = 8

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
        self._records: list[_Spooled] = []
        self._where: dict[BlobId, tuple[int, int]] = {}  # blob → (record index, index in record)
        self._cache: OrderedDict[int, list[TapeBlob]] = OrderedDict()
        self._lock = threading.Lock()
        self.header: SegmentHeader | None = None
        self.bytes_read = 0
        self._copied_at: datetime | None = None

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

    def _find_header(self, volume: Volume, point_id: str, part: Part) -> SegmentHeader:
        """The part's header: the first record of its file, or a later one after an abandoned attempt."""
        where = f"cartridge {part.barcode} file {part.file}"
        volume.drive.seek_file(part.file)
        seen: SegmentHeader | None = None
        while True:
            file_no, record_no = volume.drive.position()
            try:
                raw = volume.drive.read_record()
            except EndOfDataError:
                raw = None
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
                return seen

    def _read_part(self, volume: Volume, point_id: str, part: Part, progress: Progress) -> bool:
        where = f"cartridge {part.barcode} file {part.file}"
        header = self._find_header(volume, point_id, part)
        if self.header is None:
            self.header = header
        blobs = 0
        while True:
            try:
                record = volume.read()
            except EndOfDataError:
                return False
            if record is None:
                return False
            kind, plain, raw = record
            if kind is RecordType.DATA:
                blobs += self._spool_record(volume, plain, raw)
                progress.advance(bytes_done=len(raw))
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

    def _spool_record(self, volume: Volume, plain: bytes, raw: bytes) -> int:
        file_no, record_no = volume.drive.position()
        blobs = decode_blobs(plain, f"cartridge {volume.barcode} file {file_no}")
        index = len(self._records)
        offset = self._spool.seek(0, os.SEEK_END)
        self._spool.write(raw)
        self._records.append(_Spooled(volume.cipher, file_no, record_no - 1, offset, len(raw)))
        for i, blob in enumerate(blobs):
            self._where[blob.blob_id] = (index, i)
        self.bytes_read += len(raw)
        return len(blobs)

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

    def _record(self, index: int) -> list[TapeBlob]:
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
                return cached
            spooled = self._records[index]
            self._spool.seek(spooled.offset)
            raw = self._spool.read(spooled.length)
        _kind, plain = spooled.cipher.open(raw, spooled.file_no, spooled.record_no)
        blobs = decode_blobs(plain, f"cartridge {spooled.cipher.label.barcode} file {spooled.file_no}")
        with self._lock:
            self._cache[index] = blobs
            while len(self._cache) > _CACHED_RECORDS:
                self._cache.popitem(last=False)
        return blobs

    def load_blob(self, blob_id: BlobId) -> bytes:
        located = self._where.get(blob_id)
        if located is None:
            raise TapeCorruptionError(f"blob {short_id(blob_id)} is not in the copy on tape")
        blob = self._record(located[0])[located[1]]
        hasher = self.content_hasher()
        hasher.update(blob.data)
        if hasher.digest() != blob_id:
            raise TapeCorruptionError(f"blob {short_id(blob_id)} on tape does not match its id")
        return blob.data

    def load_tree(self, blob_id: BlobId) -> Tree:
        return decode_tree(self.load_blob(blob_id))

    def close(self) -> None:
        self._spool.close()
        self._tmp.cleanup()

    def __enter__(self) -> TapePointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
