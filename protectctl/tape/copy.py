"""Copy recovery points from a disk repository onto a pool's cartridges (D2D2T).

Owns the write path: pick the pool's partly used cartridge (else a scratch one, relabelled
under the current key), append each point as a segment (header, data records, trailer,
filemark), and span to the next cartridge at end of media (end-of-volume record, then a
continuation header naming the part). The catalog is saved after every point and every
cartridge change, so a crash loses at most the point being written (its partial segment
stays on tape without a trailer and is ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point
from protectctl.engine.repository import Repository
from protectctl.engine.tree import NodeType, decode_tree
from protectctl.errors import TapeError
from protectctl.progress import Progress
from protectctl.tape.catalog import Cartridge, CartridgeState, Catalog, Copy, Location, LocationKind, Part
from protectctl.tape.format import (
    RECORD_TARGET_BYTES,
    RecordType,
    SegmentHeader,
    TapeBlob,
    Trailer,
    VolumeCipher,
    batch_blobs,
    encode_blobs,
    encode_end_of_volume,
    encode_header,
    encode_trailer,
)
from protectctl.tape.keys import KeyStore
from protectctl.tape.library import EndOfMediaError, TapeDrive, TapeLibrary
from protectctl.tape.volume import Volume, open_volume, read_label, write_label

KIND_DATA = 0
KIND_TREE = 1


@dataclass(frozen=True, slots=True)
class PoolTarget:
    library_name: str
    pool: str
    key_name: str  # the library's EncryptionKey
    retention_s: int


def point_blobs(repo: Repository, point: Point) -> Iterator[TapeBlob]:
    """Every blob a point needs, each once, in restore order (a tree, then what it names)."""
    if point.tree is None:
        return
    seen: set[BlobId] = set()
    stack: list[BlobId] = [point.tree]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        raw = repo.load_blob(tree_id)
        yield TapeBlob(KIND_TREE, tree_id, raw)
        subtrees = []
        for node in decode_tree(raw).nodes:
            if node.type is NodeType.DIR and node.subtree is not None:
                subtrees.append(node.subtree)
            for chunk in node.chunks:
                if chunk not in seen:
                    seen.add(chunk)
                    yield TapeBlob(KIND_DATA, chunk, repo.load_blob(chunk))
        stack.extend(reversed(subtrees))


class PoolWriter:
    """Appends points to the cartridges of one pool; one drive at a time."""

    def __init__(
        self,
        library: TapeLibrary,
        target: PoolTarget,
        catalog: Catalog,
        keys: KeyStore,
        save: Callable[[], None],
        now: datetime,
        progress: Progress,
    ) -> None:
        self.library = library
        self.target = target
        self.catalog = catalog
        self.keys = keys
        self.save = save
        self.now = now
        self.progress = progress
        self._volume: Volume | None = None
        self._drive_no: int | None = None
        self._cart: Cartridge | None = None
        self._records_in_segment = 0

    # -- cartridges --------------------------------------------------------------------------------

    def _candidates(self) -> list[Cartridge]:
        mine = [
            c
            for c in self.catalog.cartridges.values()
            if c.pool == self.target.pool and c.library == self.target.library_name and c.location.in_library
        ]
        filling = sorted((c for c in mine if c.state is CartridgeState.FILLING), key=lambda c: c.labelled_at)
        scratch = sorted((c for c in mine if c.state is CartridgeState.SCRATCH), key=lambda c: c.barcode)
        return filling + scratch

    def _mount(self) -> Volume:
        if self._volume is not None:
            return self._volume
        candidates = self._candidates()
        if not candidates:
            raise TapeError(
                f"no cartridge with room in pool {self.target.pool} of library {self.target.library_name}",
                hint=f"label more: `protectctl tape label --count N --pool {self.target.pool}`, "
                "or `protectctl tape recycle` expired ones",
            )
        cart = candidates[0]
        drive = self.library.load(cart.barcode)
        self._drive_no = _drive_of(self.library, cart.barcode)
        if cart.state is CartridgeState.SCRATCH:
            cipher = self._relabel(drive, cart)
        else:
            cipher = open_volume(drive, self.keys.kek)
            if cipher.label.vid != cart.vid:
                raise TapeError(
                    f"cartridge {cart.barcode} holds volume {cipher.label.vid}, the catalog "
                    f"expects {cart.vid}",
                    hint="run `protectctl tape inventory --rebuild`",
                )
        drive.seek_end_of_data()
        self._volume, self._cart = Volume(drive, cipher), cart
        return self._volume

    def _relabel(self, drive: TapeDrive, cart: Cartridge) -> VolumeCipher:
        """A scratch cartridge gets a fresh volume under the current key; refuses one holding data."""
        label = read_label(drive)
        drive.seek_end_of_data()
        if drive.position()[0] > 1 or drive.position()[1] > 0:
            raise TapeError(
                f"cartridge {cart.barcode} is marked scratch but holds data; not overwriting it",
                hint="run `protectctl tape inventory --rebuild`",
            )
        key = self.keys.ensure(self.target.key_name, now=self.now)
        cipher = write_label(
            drive, label.pool, key.id, key.name, self.keys.kek(key.id), self.target.library_name, self.now
        )
        cart.key_id, cart.vid, cart.labelled_at = key.id, cipher.label.vid, self.now
        cart.files, cart.bytes_used = 0, drive.used_bytes
        return cipher

    def _dismount(self, state: CartridgeState) -> None:
        if self._cart is not None and self._volume is not None:
            self._cart.state = state
            self._cart.bytes_used = self._volume.drive.used_bytes
        if self._drive_no is not None:
            self.library.unload(self._drive_no)
        self._volume, self._cart, self._drive_no = None, None, None
        self.save()

    def close(self) -> None:
        if self._volume is not None:
            self._dismount(CartridgeState.FILLING)

    # -- writing ----------------------------------------------------------------------------------

    def _start_segment(self, header: SegmentHeader, copy: Copy) -> None:
        volume = self._mount()
        assert self._cart is not None
        file_no = volume.drive.position()[0]
        volume.write(RecordType.HEADER, encode_header(header))
        self._records_in_segment = 0
        copy.parts.append(Part(volume.barcode, file_no, header.part))
        self._cart.state = CartridgeState.FILLING

    def _end_volume(self, copy: Copy, part: int) -> None:
        volume = self._volume
        assert volume is not None and self._cart is not None
        volume.write(RecordType.END_OF_VOLUME, encode_end_of_volume(copy.point_id, part), use_reserve=True)
        volume.drive.write_filemark()
        self._cart.files += 1
        self._dismount(CartridgeState.FULL)

    def _write(
        self, kind: RecordType, plaintext: bytes, header: SegmentHeader, copy: Copy
    ) -> tuple[SegmentHeader, int]:
        """Write a record of the point, spanning to the next cartridge at end of media."""
        volume = self._volume
        assert volume is not None
        try:
            size = volume.write(kind, plaintext)
            self._records_in_segment += 1
            return header, size
        except EndOfMediaError:
            pass
        previous = volume.barcode
        self._end_volume(copy, header.part)
        header = SegmentHeader(
            header.point,
            header.part + 1,
            header.repository_id,
            header.id_key,
            header.retention_s,
            header.copied_at,
            previous,
        )
        self._start_segment(header, copy)
        try:
            size = self._volume_or_fail().write(kind, plaintext)
        except EndOfMediaError as err:
            raise TapeError(
                f"a record of {len(plaintext)} bytes does not fit on an empty cartridge of pool "
                f"{self.target.pool}",
                hint="use media with more capacity",
            ) from err
        self._records_in_segment += 1
        return header, size

    def _volume_or_fail(self) -> Volume:
        assert self._volume is not None
        return self._volume

    def _begin(self, header: SegmentHeader, copy: Copy) -> None:
        """The first header; a cartridge too full even for it is closed and the next one used."""
        try:
            self._start_segment(header, copy)
            return
        except EndOfMediaError:
            pass
        volume = self._volume_or_fail()
        volume.write(RecordType.END_OF_VOLUME, encode_end_of_volume(copy.point_id, 0), use_reserve=True)
        volume.drive.write_filemark()
        assert self._cart is not None
        self._cart.files += 1
        self._dismount(CartridgeState.FULL)
        try:
            self._start_segment(header, copy)
        except EndOfMediaError as err:
            raise TapeError("a point header does not fit on an empty cartridge") from err

    def copy_point(self, repo: Repository, point: Point) -> Copy:
        """Write `point` (all its blobs, re-encrypted) and record it in the catalog."""
        header = SegmentHeader(point, 1, repo.id, repo.id_key(), self.target.retention_s, self.now)
        copy = Copy(
            point.id,
            point.source,
            point.time,
            point.kind,
            self.target.pool,
            self.target.library_name,
            self.target.retention_s,
            self.now,
        )
        self._begin(header, copy)
        self.progress.start(f"tape {point.source}", total_bytes=point.stats.bytes_total)
        # large records, but at most 1/16 of a cartridge so small media still fill up evenly
        record_bytes = min(
            RECORD_TARGET_BYTES, max(64 << 10, self._volume_or_fail().drive.capacity_bytes // 16)
        )
        for batch in batch_blobs(point_blobs(repo, point), record_bytes):
            header, _ = self._write(RecordType.DATA, encode_blobs(batch), header, copy)
            copy.blobs += len(batch)
            plain = sum(len(b.data) for b in batch)
            copy.bytes_plain += plain
            self.progress.advance(bytes_done=sum(len(b.data) for b in batch if b.kind == KIND_DATA))
        trailer = Trailer(point.id, header.part, copy.blobs, copy.bytes_plain)
        header, _ = self._write(RecordType.TRAILER, encode_trailer(trailer), header, copy)
        volume = self._volume_or_fail()
        volume.drive.write_filemark()
        assert self._cart is not None
        self._cart.files += 1
        self._cart.bytes_used = volume.drive.used_bytes
        copy.complete = True
        self.catalog.copies[point.id] = copy
        self.progress.finish()
        self.save()
        return copy


def _drive_of(library: TapeLibrary, barcode: str) -> int:
    for element in library.elements():
        if element.kind == "drive" and element.barcode == barcode:
            return element.index
    raise TapeError(f"cartridge {barcode} was loaded but is in no drive")


def location_in(library: TapeLibrary, barcode: str) -> Location | None:
    for element in library.elements():
        if element.barcode == barcode:
            kind = LocationKind.SLOT if element.kind == "slot" else LocationKind.DRIVE
            return Location(kind, str(element.index))
    return None
