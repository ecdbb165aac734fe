"""Copy recovery points from a disk repository onto a pool's cartridges (D2D2T).

Owns the write path: pick the pool's partly used cartridge (else a scratch one, relabelled
under the current key), append each point as a segment (header, data records, trailer,
filemark), and span to the next cartridge at end of media (end-of-volume record, then a
continuation header naming the part).

Crash safety: appends start after the last filemark (a partial last file, left by a run that
died, is replaced); before each segment the catalog marks it as being written; a closed
segment is read back (its header, its closing record, the filemark) before it counts, and a
copy is recorded only once its last segment read back. A crash therefore loses at most the
point being written, and its remains are named in the catalog until the next append.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from protectctl import crashpoint
from protectctl.engine.crypto import NONCE_SIZE, TAG_SIZE
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.pack import PackEntry, blob_aad, decode_body
from protectctl.engine.points import Point
from protectctl.engine.repository import Repository
from protectctl.engine.tree import Node, NodeType, decode_tree
from protectctl.errors import TapeError
from protectctl.progress import Progress
from protectctl.tape.catalog import (
    Cartridge,
    CartridgeState,
    Catalog,
    Copy,
    Location,
    LocationKind,
    Part,
    PartialKind,
    PartialSegment,
)
from protectctl.tape.format import (
    FORMAT_VERSION,
    RECORD_TARGET_BYTES,
    IndexRun,
    RecordType,
    SegmentHeader,
    TapeBlob,
    Trailer,
    VolumeCipher,
    batch_blobs,
    bodies_layout,
    decode_header,
    encode_blobs,
    encode_end_of_volume,
    encode_header,
    encode_index,
    encode_trailer,
    index_entries_per_record,
)
from protectctl.tape.keys import KeyStore
from protectctl.tape.library import EndOfDataError, EndOfMediaError, TapeDrive, TapeLibrary
from protectctl.tape.pipeline import StageClock, default_workers, ordered_map, read_ahead, timed
from protectctl.tape.volume import Volume, open_volume, read_label, write_label

KIND_DATA = 0
KIND_TREE = 1


@dataclass(frozen=True, slots=True)
class PoolTarget:
    library_name: str
    pool: str
    key_name: str  # the library's EncryptionKey
    retention_s: int


@dataclass(frozen=True, slots=True)
class _Ref:
    """A blob to copy: located and sized from the index before it is read (trees come with their
    body: the walk reads them)."""

    kind: int
    blob_id: BlobId
    raw_length: int
    body_length: int
    body: bytes | None = None
    pack: str = ""
    entry: PackEntry | None = None


def point_refs(repo: Repository, point: Point) -> Iterator[_Ref]:
    """Every blob a point needs, each once, in the order a restore writes them: a tree, then
    its entries in order, a file's chunks where the file is and a directory's subtree (and all
    it holds) where the directory is. A full restore then asks for the blobs of a cartridge
    in the order they were written, and each record is decrypted once."""
    if point.tree is None:
        return
    seen: set[BlobId] = {point.tree}

    def tree(tree_id: BlobId) -> tuple[_Ref, Iterator[Node]]:
        entry, body = repo.load_blob_body(tree_id)
        raw = decode_body(body, entry.raw_length, f"tree {tree_id.hex()[:12]}")
        return _Ref(KIND_TREE, tree_id, entry.raw_length, len(body), body), iter(decode_tree(raw).nodes)

    ref, nodes = tree(point.tree)
    yield ref
    stack = [nodes]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        for chunk in node.chunks:
            if chunk not in seen:
                seen.add(chunk)
                located = repo.blob_location(chunk)
                entry = located.entry
                yield _Ref(
                    KIND_DATA,
                    chunk,
                    entry.raw_length,
                    entry.length - NONCE_SIZE - TAG_SIZE,
                    pack=located.pack,
                    entry=entry,
                )
        if node.type is NodeType.DIR and node.subtree is not None and node.subtree not in seen:
            seen.add(node.subtree)
            ref, nodes = tree(node.subtree)
            yield ref
            stack.append(nodes)


def point_blobs(repo: Repository, point: Point) -> Iterator[TapeBlob]:
    """`point_refs` decoded and id-checked, for format 1."""
    for ref in point_refs(repo, point):
        yield TapeBlob(ref.kind, ref.blob_id, repo.load_blob(ref.blob_id))


def _batches(refs: Iterator[_Ref], target_bytes: int) -> Iterator[list[_Ref]]:
    batch: list[_Ref] = []
    size = 0
    for ref in refs:
        if batch and size + ref.body_length > target_bytes:
            yield batch
            batch, size = [], 0
        batch.append(ref)
        size += ref.body_length
    if batch:
        yield batch


# Blobs of one pack closer than this are read together (the gap read and dropped): one read
# per run of a pack instead of one per blob.
_COALESCE_GAP = 256 << 10
_scratch = threading.local()


def _read_buffer(size: int) -> memoryview:
    """This thread's reusable read buffer, at least `size` bytes (no allocation per read)."""
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(max(size, 1 << 20))
    return memoryview(buf)[:size]


def _runs(refs: list[tuple[_Ref, int]]) -> Iterator[list[tuple[_Ref, int]]]:
    """(blob, where its body goes) grouped into reads: per pack, by offset, adjacent or close."""
    by_pack: dict[str, list[tuple[_Ref, int]]] = {}
    for item in refs:
        by_pack.setdefault(item[0].pack, []).append(item)
    for items in by_pack.values():
        items.sort(key=lambda item: item[0].entry.offset if item[0].entry else 0)
        run = [items[0]]
        for item in items[1:]:
            last = run[-1][0].entry
            entry = item[0].entry
            assert last is not None and entry is not None
            if entry.offset - (last.offset + last.length) <= _COALESCE_GAP and entry.offset >= last.offset:
                run.append(item)
            else:
                yield run
                run = [item]
        yield run


@dataclass(frozen=True, slots=True)
class _Built:
    """A `B` record ready to write: its plaintext, and (when the writer's position was known)
    the record sealed for that position."""

    batch: list[_Ref]
    plain: bytearray
    sealed: tuple[Volume, tuple[int, int], bytearray] | None


def _build(repo: Repository, batch: list[_Ref]) -> bytearray:
    """A `B` record's plaintext: each body read from its pack (adjacent blobs in one read) and
    decrypted (authenticated against its id and kind) straight into its place in the record."""
    plain, at = bodies_layout([(r.kind, r.blob_id, r.raw_length, r.body_length) for r in batch])
    view = memoryview(plain)
    to_read = []
    for ref, pos in zip(batch, at, strict=True):
        if ref.body is not None:
            view[pos : pos + ref.body_length] = ref.body
        else:
            to_read.append((ref, pos))
    if not to_read:
        return plain
    for run in _runs(to_read):
        first, last = run[0][0].entry, run[-1][0].entry
        assert first is not None and last is not None
        stored = _read_buffer(last.offset + last.length - first.offset)
        repo.read_pack_into(run[0][0].pack, first.offset, stored)
        for ref, pos in run:
            entry = ref.entry
            assert entry is not None
            start = entry.offset - first.offset
            repo.sealer.open_into(
                stored[start : start + entry.length],
                blob_aad(entry.kind, entry.blob_id),
                view[pos : pos + ref.body_length],
                f"pack {ref.pack} (blob {short_id(entry.blob_id)})",
            )
    return plain


def _phase(kind: RecordType) -> str:
    """The crash point of a record write (format 2 body records keep format 1's `tape.data`)."""
    return "tape.data" if kind is RecordType.BODIES else f"tape.{kind.name.lower()}"


class PoolWriter:
    """Appends points to the cartridges of one pool; one drive at a time."""

    format_version = FORMAT_VERSION  # 1 only to make old-format cartridges (compatibility tests)

    def __init__(
        self,
        library: TapeLibrary,
        target: PoolTarget,
        catalog: Catalog,
        keys: KeyStore,
        save: Callable[[], None],
        now: datetime,
        progress: Progress,
        *,
        format_version: int | None = None,
        workers: int | None = None,
    ) -> None:
        if format_version is not None:
            self.format_version = format_version
        self.workers = default_workers() if workers is None else workers
        self.library = library
        self.target = target
        self.catalog = catalog
        self.keys = keys
        self.save = save
        self.now = now
        self.progress = progress
        self.repaired: list[str] = []  # partial segments of interrupted runs this run replaced
        self._volume: Volume | None = None
        self._drive_no: int | None = None
        self._cart: Cartridge | None = None
        self.clock = StageClock()  # CPU seconds per stage of the copies (the bench prints them)

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
        try:
            volume = self._prepare(drive, cart)
        except BaseException:
            self.library.unload(self._drive_no)
            self._drive_no = None
            raise
        self._volume, self._cart = volume, cart
        crashpoint.reached("tape.mounted")
        return volume

    def _prepare(self, drive: TapeDrive, cart: Cartridge) -> Volume:
        """The loaded cartridge's volume, relabelled if scratch, positioned to append."""
        if cart.state is CartridgeState.SCRATCH:
            cipher = self._relabel(drive, cart)
        else:
            cipher = open_volume(drive, self.keys.kek)
            if cipher.label.vid != cart.vid:
                raise TapeError(
                    f"cartridge {cart.barcode} holds volume {cipher.label.vid}, the catalog expects {cart.vid}",
                    hint="run `protectctl tape inventory --rebuild`",
                )
        volume = Volume(drive, cipher)
        self._position_for_append(volume, cart)
        return volume

    def _relabel(self, drive: TapeDrive, cart: Cartridge) -> VolumeCipher:
        """A scratch cartridge gets a fresh volume under the current key, recorded as filling before
        anything else is written. Refuses one holding a closed tape file after its label (data the
        catalog does not know); a partial file of a run that died before this rule is erased."""
        drive.rewind()
        try:
            drive.read_record()
            pool = read_label(drive).pool  # not ours or unreadable: refused here
        except EndOfDataError:  # blank: a relabelling was cut off between its erase and its label
            pool = cart.pool
        drive.seek_end_of_data()
        if drive.position()[0] > 1:
            raise TapeError(
                f"cartridge {cart.barcode} is marked scratch but holds data; not overwriting it",
                hint="run `protectctl tape inventory --rebuild`",
            )
        key = self.keys.ensure(self.target.key_name, now=self.now)
        cipher = write_label(drive, pool, key.id, key.name, self.keys.kek(key.id), self.target.library_name, self.now)
        crashpoint.reached("tape.relabelled")
        cart.key_id, cart.vid, cart.labelled_at = key.id, cipher.label.vid, self.now
        cart.state, cart.files, cart.bytes_used, cart.partial = CartridgeState.FILLING, 0, drive.used_bytes, []
        self.save()  # the new volume id before its first segment: a crash from here on leaves a filling cartridge
        return cipher

    def _position_for_append(self, volume: Volume, cart: Cartridge) -> None:
        """Position after the last filemark, as a drive does after a power cut; a partial last
        file (no filemark: its run died) is replaced by what this run writes."""
        drive = volume.drive
        drive.seek_end_of_data()
        file_no, record_no = drive.position()
        if file_no == 0:
            raise TapeError(
                f"cartridge {cart.barcode}: its label has no filemark", hint="run `protectctl tape inventory --rebuild`"
            )
        if file_no - 1 < cart.files:
            raise TapeError(
                f"cartridge {cart.barcode} ends after tape file {file_no - 1}, but the catalog records "
                f"{cart.files} file(s) on it; not appending",
                hint="run `protectctl tape inventory --rebuild` to read what it holds",
            )
        if record_no > 0:
            self.repaired.append(
                f"{cart.barcode} file {file_no}: replaced the partial segment{_first_header(volume, file_no)} "
                "left by an interrupted run"
            )
            drive.seek_file(file_no)  # the next write discards the partial file
        kept = []
        for mark in cart.partial:
            if mark.file >= file_no:
                continue  # replaced (or never reached the tape)
            if mark.kind is PartialKind.WRITING:  # its run closed the file but died before recording it
                mark = PartialSegment(
                    mark.file,
                    PartialKind.UNUSED,
                    mark.point_id,
                    mark.part,
                    "closed by a run that stopped before recording it",
                )
            kept.append(mark)
        cart.partial = kept

    def _dismount(self, state: CartridgeState) -> None:
        if self._cart is not None and self._volume is not None:
            self._cart.state = state
            self._cart.bytes_used = self._volume.drive.used_bytes
        self.save()
        if self._drive_no is not None:
            self.library.unload(self._drive_no)
        self._volume, self._cart, self._drive_no = None, None, None

    def close(self) -> None:
        if self._volume is not None:
            self._dismount(CartridgeState.FILLING)

    # -- writing ----------------------------------------------------------------------------------

    def _start_segment(self, header: SegmentHeader, copy: Copy) -> None:
        volume = self._mount()
        assert self._cart is not None
        file_no = volume.drive.position()[0]
        self._cart.partial = [p for p in self._cart.partial if p.file < file_no]
        self._cart.partial.append(
            PartialSegment(
                file_no, PartialKind.WRITING, header.point.id, header.part, f"run started {self.now:%Y-%m-%d %H:%M:%S}Z"
            )
        )
        self.save()  # tape list names the segment in progress, and what is left if this run dies
        volume.write(RecordType.HEADER, encode_header(header))
        crashpoint.reached("tape.header")
        copy.parts.append(Part(volume.barcode, file_no, header.part))

    def _close_file(self, file_no: int) -> None:
        """A closed and verified tape file: no longer partial, counted on the cartridge."""
        assert self._cart is not None
        self._cart.partial = [p for p in self._cart.partial if p.file != file_no]
        self._cart.files = file_no

    def _close_volume(self, point_id: str, header: SegmentHeader | None) -> None:
        """End of media: an end-of-volume record in the reserve, a filemark, read back; the cartridge is full."""
        volume = self._volume_or_fail()
        file_no, record_no = volume.drive.position()
        plain = encode_end_of_volume(point_id, header.part if header else 0)
        volume.write(RecordType.END_OF_VOLUME, plain, use_reserve=True)
        crashpoint.reached("tape.end-of-volume")
        volume.drive.write_filemark()
        crashpoint.reached("tape.volume-closed")
        if header is not None:
            self._verify_segment(file_no, header, record_no, RecordType.END_OF_VOLUME, plain)
        self._close_file(file_no)
        self._dismount(CartridgeState.FULL)

    def _verify_segment(
        self, file_no: int, header: SegmentHeader, closing_at: int, closing: RecordType, plain: bytes
    ) -> None:
        """Read back a closed segment's header, its closing record and the filemark after it (two
        locates, not a re-read of the data); TapeError when the tape does not say what was written."""
        volume = self._volume_or_fail()
        where = f"cartridge {volume.barcode} file {file_no}"
        try:
            volume.drive.locate(file_no, 0)
            first = volume.read()
            got = decode_header(first[1], where) if first and first[0] is RecordType.HEADER else None
            if got is None or (got.point.id, got.part, got.copied_at) != (
                header.point.id,
                header.part,
                header.copied_at,
            ):
                raise TapeError(f"{where} does not start with this segment's header")
            volume.drive.locate(file_no, closing_at)
            last = volume.read()
            if last is None or last[0] is not closing or last[1] != plain:
                raise TapeError(f"{where}: record {closing_at} is not the {closing.name} just written")
            if volume.read() is not None:
                raise TapeError(f"{where}: no filemark after its {closing.name}")
        except TapeError as err:
            raise TapeError(
                f"the copy of point {header.point.id[:12]} did not read back: {err.message}; it is not recorded",
                hint="run `protectctl tape inventory --rebuild`, then `protectctl run tape` again",
            ) from err

    def _write(
        self,
        kind: RecordType,
        plaintext: bytes | bytearray,
        header: SegmentHeader,
        copy: Copy,
        sealed: tuple[Volume, tuple[int, int], bytearray] | None = None,
    ) -> tuple[SegmentHeader, int]:
        """Write a record of the point, spanning to the next cartridge at end of media. `sealed`:
        the record already sealed for a volume and position, used if the drive is there."""
        volume = self._volume
        assert volume is not None
        try:
            if sealed is not None and sealed[0] is volume and volume.drive.position() == sealed[1]:
                volume.drive.write_record(sealed[2])
                size = len(sealed[2])
            else:
                size = volume.write(kind, plaintext)
            crashpoint.reached(_phase(kind))
            return header, size
        except EndOfMediaError:
            pass
        previous = volume.barcode
        self._close_volume(copy.point_id, header)
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
                f"a record of {len(plaintext)} bytes does not fit on an empty cartridge of pool {self.target.pool}",
                hint="use media with more capacity",
            ) from err
        crashpoint.reached(_phase(kind))
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
        self._close_volume(copy.point_id, None)
        try:
            self._start_segment(header, copy)
        except EndOfMediaError as err:
            raise TapeError("a point header does not fit on an empty cartridge") from err

    def copy_point(self, repo: Repository, point: Point) -> Copy:
        """Write `point` (all its blobs, re-encrypted); record it once its trailer reads back."""
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
        record_bytes = min(RECORD_TARGET_BYTES, max(64 << 10, self._volume_or_fail().drive.capacity_bytes // 16))
        if self.format_version == 1:
            header = self._write_v1(repo, point, header, copy, record_bytes)
            index: tuple[IndexRun, ...] = ()
        else:
            header, index = self._write_bodies(repo, point, header, copy, record_bytes)
        trailer = Trailer(point.id, header.part, copy.blobs, copy.bytes_plain, index)
        copy.index = list(index)
        plain_trailer = encode_trailer(trailer)
        header, _ = self._write(RecordType.TRAILER, plain_trailer, header, copy)
        volume = self._volume_or_fail()
        file_no, after_trailer = volume.drive.position()
        volume.drive.write_filemark()
        crashpoint.reached("tape.filemark")
        self._verify_segment(file_no, header, after_trailer - 1, RecordType.TRAILER, plain_trailer)
        self._close_file(file_no)
        assert self._cart is not None
        self._cart.bytes_used = volume.drive.used_bytes
        copy.complete = True
        self.catalog.copies[point.id] = copy
        self.progress.finish()
        self.save()
        crashpoint.reached("tape.recorded")
        return copy

    def _write_v1(
        self, repo: Repository, point: Point, header: SegmentHeader, copy: Copy, record_bytes: int
    ) -> SegmentHeader:
        """Format 1: blobs decoded from the repository, zstd again per record (slow; kept for tests
        that make old cartridges)."""
        for batch in batch_blobs(point_blobs(repo, point), record_bytes):
            header, _ = self._write(RecordType.DATA, encode_blobs(batch), header, copy)
            copy.blobs += len(batch)
            copy.bytes_plain += sum(len(b.data) for b in batch)
            self.progress.advance(bytes_done=sum(len(b.data) for b in batch if b.kind == KIND_DATA))
        return header

    def _write_bodies(
        self, repo: Repository, point: Point, header: SegmentHeader, copy: Copy, record_bytes: int
    ) -> tuple[SegmentHeader, tuple[IndexRun, ...]]:
        """Format 2: the repository's blob bodies (decrypted, never decompressed nor recompressed)
        re-encrypted under the cartridge key; then the index of where each blob went.

        Three stages overlap: the walk of the point's trees (on a thread of its own), the
        workers (read each pack run once, decrypt every body into its place in the record,
        seal the record for the position it will have on tape), and this thread, which only
        writes. A record whose position changed (the copy spanned to the next cartridge) is
        sealed again here for its real position."""
        where: list[tuple[BlobId, int, int]] = []
        clock = self.clock
        # (volume, position of the next record, its sequence number): set after each write, read
        # by the workers to seal ahead; a reference swap, so a worker sees one whole tuple
        volume = self._volume_or_fail()
        self._next_at: tuple[Volume, tuple[int, int], int] = (volume, volume.drive.position(), 0)

        def build(item: tuple[int, list[_Ref]]) -> _Built:
            seq, batch = item
            with clock.stage("read+decrypt bodies"):
                plain = _build(repo, batch)
            target, (file_no, record_no), base = self._next_at
            with clock.stage("seal records"):
                at = (file_no, record_no + seq - base)
                sealed = target.cipher.seal(RecordType.BODIES, at[0], at[1], plain)
            return _Built(batch, plain, (target, at, sealed))

        walk = timed(_batches(point_refs(repo, point), record_bytes), clock, "walk trees")
        with contextlib.ExitStack() as stack:
            # closed in this order on any exit: the workers stop taking batches, then the walk's
            # thread stops (not left waiting on its queue while a traceback keeps it referenced)
            source: Iterator[list[_Ref]] = walk
            if self.workers > 0:
                source = stack.enter_context(contextlib.closing(read_ahead(walk)))
            built = ordered_map(build, enumerate(source), workers=self.workers)
            records = stack.enter_context(contextlib.closing(built))
            for seq, record in enumerate(records):
                batch = record.batch
                with clock.stage("write records"):
                    header, _ = self._write(RecordType.BODIES, record.plain, header, copy, record.sealed)
                volume = self._volume_or_fail()
                file_no, next_record = volume.drive.position()
                self._next_at = (volume, (file_no, next_record), seq + 1)
                where.extend((b.blob_id, header.part, next_record - 1) for b in batch)
                copy.blobs += len(batch)
                copy.bytes_plain += sum(b.raw_length for b in batch)
                self.progress.advance(bytes_done=sum(b.raw_length for b in batch if b.kind == KIND_DATA))
        runs: list[IndexRun] = []
        per_record = index_entries_per_record(record_bytes)
        for start in range(0, len(where), per_record):
            header, _ = self._write(RecordType.INDEX, encode_index(where[start : start + per_record]), header, copy)
            record_no = self._volume_or_fail().drive.position()[1] - 1
            last = runs[-1] if runs else None
            if last is not None and last.part == header.part and last.record + last.count == record_no:
                runs[-1] = IndexRun(last.part, last.record, last.count + 1)
            else:
                runs.append(IndexRun(header.part, record_no, 1))
        return header, tuple(runs)


def _first_header(volume: Volume, file_no: int) -> str:
    """` of point P part N` when the first record of a tape file is a readable header, else ``."""
    try:
        volume.drive.seek_file(file_no)
        first = volume.read()
        if first is not None and first[0] is RecordType.HEADER:
            head = decode_header(first[1], f"cartridge {volume.barcode} file {file_no}")
            return f" of point {head.point.id[:12]} part {head.part}"
    except TapeError:
        pass
    return ""


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
