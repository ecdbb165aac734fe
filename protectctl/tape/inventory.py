"""Read cartridges back: what each tape file holds, which copies are whole, what is left over.

`scan_volume` reads every record of a cartridge (each is authenticated on the way, so a scan
is also a verification) and describes each tape file as segments: a point header, its data
records, the record that closes it (trailer or end of volume) and whether a filemark follows.
A damaged record costs its own file only: the scan goes on at the next filemark.

The rest is pure: `whole_copies` finds the copies the segments form (parts 1..n of one
writing run, continued by end-of-volume records, ended by a trailer whose totals match),
`confirm` checks a catalog copy against the scans, `merge_scans` rebuilds the catalog
without dropping a copy that is still whole, and `leftovers` names every segment that no
copy counts on (partial segments), so `tape inventory` and `run verify` can report them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from protectctl.errors import TapeError
from protectctl.tape.catalog import (
    Cartridge,
    CartridgeState,
    Catalog,
    Copy,
    Location,
    Part,
    PartialKind,
    PartialSegment,
)
from protectctl.tape.format import (
    RecordType,
    SegmentHeader,
    Trailer,
    decode_blobs,
    decode_bodies,
    decode_header,
    decode_index,
    decode_trailer,
)
from protectctl.tape.library import EndOfDataError, MediaError
from protectctl.tape.volume import Volume


@dataclass(slots=True)
class Segment:
    """One point segment as read back from a tape file."""

    file: int
    first_record: int  # 0 unless an abandoned attempt precedes it in the same file
    header: SegmentHeader
    blobs: int = 0
    closing: RecordType | None = None  # TRAILER or END_OF_VOLUME once closed
    trailer: Trailer | None = None
    terminated: bool = False  # a filemark follows
    fault: PartialKind | None = None
    detail: str = ""

    @property
    def usable(self) -> bool:
        """Closed by a trailer or end-of-volume record, then a filemark, and undamaged."""
        return self.closing is not None and self.terminated and self.fault is None

    @property
    def key(self) -> tuple[str, datetime]:
        """The writing run it belongs to: a run copies a point once, all parts with one copied_at."""
        return self.header.point.id, self.header.copied_at


@dataclass(slots=True)
class ScanResult:
    cartridge: Cartridge
    segments: list[Segment] = field(default_factory=list)
    faults: list[PartialSegment] = field(default_factory=list)  # damage outside any segment

    def usable_at(self, file_no: int) -> Segment | None:
        found = [s for s in self.segments if s.file == file_no and s.usable]
        return found[-1] if found else None


# -- reading a cartridge ----------------------------------------------------------------------


def scan_volume(volume: Volume, library: str, location: Location) -> ScanResult:
    """Everything a cartridge says about itself, file by file, damage included."""
    label = volume.cipher.label
    cart = Cartridge(
        barcode=label.barcode,
        library=label.library or library,
        pool=label.pool,
        state=CartridgeState.SCRATCH,
        key_id=label.key_id,
        vid=label.vid,
        labelled_at=label.labelled_at,
        capacity_bytes=volume.drive.capacity_bytes,
        location=location,
    )
    result = ScanResult(cart)
    full = False
    file_no = 1
    while True:
        try:
            volume.drive.seek_file(file_no)
        except MediaError:
            break
        closed, saw_end_of_volume, empty = _scan_file(volume, file_no, result)
        if empty:
            break  # end of data right after the previous filemark
        full = full or (closed and saw_end_of_volume)
        if not closed:
            break
        cart.files = file_no
        file_no += 1
    cart.bytes_used = volume.drive.used_bytes
    if full:
        cart.state = CartridgeState.FULL
    elif cart.files or result.segments or result.faults:
        cart.state = CartridgeState.FILLING
    return result


class _FileScan:
    """The segments of one tape file, record by record."""

    def __init__(self, volume: Volume, file_no: int, result: ScanResult) -> None:
        self.volume = volume
        self.file_no = file_no
        self.result = result
        self.where = f"cartridge {volume.barcode} file {file_no}"
        self.current: Segment | None = None
        self.records = 0
        self.end_of_volume = False

    def take(self, kind: RecordType, plain: bytes) -> None:
        """One authenticated record; TapeError when it cannot be decoded."""
        seg = self.current
        if kind is RecordType.HEADER:
            if seg is not None:
                self._abandon(seg)
            self.current = Segment(self.file_no, self.records, decode_header(plain, self.where))
        elif seg is None:
            if kind is RecordType.END_OF_VOLUME:  # a cartridge closed before a header fitted
                self.end_of_volume = True
            else:
                self.result.faults.append(
                    PartialSegment(
                        self.file_no,
                        PartialKind.DAMAGED,
                        "",
                        0,
                        f"record {self.records} is a {kind.name} record outside any point segment",
                    )
                )
        elif seg.closing is not None:
            seg.fault, seg.detail = PartialKind.DAMAGED, f"a {kind.name} record follows its {seg.closing.name}"
        elif kind is RecordType.DATA:
            seg.blobs += len(decode_blobs(plain, self.where))
        elif kind is RecordType.BODIES:
            seg.blobs += len(decode_bodies(plain, self.where))
        elif kind is RecordType.INDEX:
            decode_index(plain, self.where)  # malformed: the segment is damaged
        elif kind is RecordType.TRAILER:
            seg.closing, seg.trailer = kind, decode_trailer(plain, self.where)
        else:
            seg.closing = kind
            self.end_of_volume = True
        self.records += 1

    def _abandon(self, seg: Segment) -> None:
        if seg.fault is None:
            seg.fault = PartialKind.ABANDONED
            seg.detail = f"a new point header follows at record {self.records}"
        self.result.segments.append(seg)

    def finish(self, *, terminated: bool, damage: str = "") -> None:
        seg = self.current
        if seg is None:
            if damage:
                self.result.faults.append(PartialSegment(self.file_no, PartialKind.DAMAGED, "", 0, damage))
            return
        seg.terminated = terminated
        if damage:
            seg.fault, seg.detail = PartialKind.DAMAGED, damage
        elif not terminated and seg.fault is None:
            seg.fault = PartialKind.UNTERMINATED
        elif seg.closing is None and seg.fault is None:
            seg.fault, seg.detail = PartialKind.DAMAGED, "a filemark follows before its trailer"
        self.result.segments.append(seg)


def _scan_file(volume: Volume, file_no: int, result: ScanResult) -> tuple[bool, bool, bool]:
    """(closed by a filemark, held an end-of-volume record, empty: end of data at once)."""
    scan = _FileScan(volume, file_no, result)
    while True:
        try:
            record = volume.read()
            if record is None:
                scan.finish(terminated=True)
                return True, scan.end_of_volume, False
            scan.take(record[0], record[1])
        except EndOfDataError:
            scan.finish(terminated=False)
            return False, scan.end_of_volume, scan.records == 0 and scan.current is None
        except TapeError as err:
            scan.finish(terminated=False, damage=err.message)
            closed = _skip_to_filemark(volume)
            if scan.current is not None:
                scan.current.terminated = closed
            return closed, scan.end_of_volume, False


def _skip_to_filemark(volume: Volume) -> bool:
    """Past the rest of a damaged file without opening its records; False at end of data."""
    while True:
        try:
            if volume.drive.read_record() is None:
                return True
        except EndOfDataError:
            return False


# -- what the segments make: pure ---------------------------------------------------------------


def _chain_problem(parts: Sequence[tuple[str, Segment]]) -> str | None:
    """Why a writing run's segments (sorted by part) are not a whole copy; None when they are."""
    numbers = [seg.header.part for _b, seg in parts]
    if numbers != list(range(1, len(parts) + 1)):
        return f"parts {numbers} on tape, expected 1..{max(numbers)}"
    for i, (barcode, seg) in enumerate(parts):
        last = i == len(parts) - 1
        if not seg.usable:
            return f"part {seg.header.part} on {barcode} file {seg.file} is not closed"
        if seg.closing is not (RecordType.TRAILER if last else RecordType.END_OF_VOLUME):
            return f"part {seg.header.part} on {barcode} file {seg.file} ends with {seg.closing}"
        if i and seg.header.previous_barcode != parts[i - 1][0]:
            return f"part {seg.header.part} names {seg.header.previous_barcode} as the previous cartridge"
    trailer = parts[-1][1].trailer
    assert trailer is not None
    blobs = sum(seg.blobs for _b, seg in parts)
    if trailer.point_id != parts[0][1].header.point.id or trailer.parts != len(parts) or trailer.blobs != blobs:
        return (
            f"the trailer counts {trailer.parts} part(s) and {trailer.blobs} blobs, the tape holds "
            f"{len(parts)} and {blobs}"
        )
    return None


def _copy_of(parts: Sequence[tuple[str, Segment]], pool: str, library: str) -> Copy:
    head = parts[0][1].header
    trailer = parts[-1][1].trailer
    assert trailer is not None
    p = head.point
    copy = Copy(p.id, p.source, p.time, p.kind, pool, library, head.retention_s, head.copied_at)
    copy.parts = [Part(barcode, seg.file, seg.header.part) for barcode, seg in parts]
    copy.complete, copy.blobs, copy.bytes_plain = True, trailer.blobs, trailer.bytes_plain
    copy.index = list(trailer.index)
    return copy


def whole_copies(scans: Iterable[ScanResult]) -> dict[str, Copy]:
    """Point id → the newest whole copy the scanned segments form (chains across cartridges)."""
    runs: dict[tuple[str, datetime], list[tuple[str, Segment]]] = {}
    pools: dict[str, tuple[str, str]] = {}
    for scan in scans:
        pools[scan.cartridge.barcode] = (scan.cartridge.pool, scan.cartridge.library)
        for seg in scan.segments:
            if seg.usable:
                runs.setdefault(seg.key, []).append((scan.cartridge.barcode, seg))
    out: dict[str, Copy] = {}
    for (point_id, _copied_at), parts in sorted(runs.items(), key=lambda kv: kv[0]):
        parts.sort(key=lambda bs: bs[1].header.part)
        if _chain_problem(parts) is None:
            out[point_id] = _copy_of(parts, *pools[parts[0][0]])  # a later run's copy wins
    return out


def confirm(copy: Copy, scans: Mapping[str, ScanResult]) -> str | None:
    """None when every part of `copy` on a scanned cartridge is on tape as recorded; else why not.

    Parts on cartridges that were not scanned (off-site, unreadable) are taken on trust."""
    parts = sorted(copy.parts, key=lambda p: p.part)
    if not copy.complete:
        return "the copy was never completed"
    if [p.part for p in parts] != list(range(1, len(parts) + 1)):
        return f"the catalog lists parts {[p.part for p in parts]}"
    for i, part in enumerate(parts):
        scan = scans.get(part.barcode)
        if scan is None:
            continue
        seg = scan.usable_at(part.file)
        where = f"{part.barcode} file {part.file}"
        if seg is None:
            found = [s for s in scan.segments if s.file == part.file]
            why = found[-1].fault.value if found and found[-1].fault else "no closed segment"
            return f"{where}: {why}" + (f" ({found[-1].detail})" if found and found[-1].detail else "")
        head = seg.header
        if (head.point.id, head.part, head.copied_at) != (copy.point_id, part.part, copy.copied_at):
            return (
                f"{where} holds point {head.point.id[:12]} part {head.part} copied at "
                f"{head.copied_at:%Y-%m-%d %H:%M:%S}, not this copy's part {part.part}"
            )
        last = i == len(parts) - 1
        if seg.closing is not (RecordType.TRAILER if last else RecordType.END_OF_VOLUME):
            return f"{where} ends with {seg.closing}, expected {'a trailer' if last else 'end of volume'}"
        if last and seg.trailer is not None and seg.trailer.parts != len(parts):
            return f"{where}: the trailer counts {seg.trailer.parts} part(s), the catalog {len(parts)}"
    return None


def leftovers(scan: ScanResult, used: set[tuple[str, int]]) -> list[PartialSegment]:
    """The segments of a scanned cartridge no copy counts on, and damage outside segments."""
    out = list(scan.faults)
    for seg in scan.segments:
        if seg.usable and (scan.cartridge.barcode, seg.file) in used:
            continue
        kind = seg.fault or PartialKind.UNUSED
        detail = seg.detail or ("" if seg.fault else f"copied {seg.header.copied_at:%Y-%m-%d %H:%M:%S}")
        out.append(PartialSegment(seg.file, kind, seg.header.point.id, seg.header.part, detail))
    return sorted(out, key=lambda p: p.file)


def used_files(copies: Iterable[Copy]) -> set[tuple[str, int]]:
    return {(p.barcode, p.file) for c in copies for p in c.parts}


def merge_scans(scans: Sequence[ScanResult], catalog: Catalog) -> tuple[Catalog, list[str]]:
    """A catalog rebuilt from scans, and what changed for the worse (copies dropped).

    A catalog copy stays when the scans confirm it (parts on unscanned cartridges are kept on
    trust); whole copies the scans find are added for points the catalog lacks or lost; every
    scanned cartridge lists the segments no copy counts on."""
    by_barcode = {s.cartridge.barcode: s for s in scans}
    out = Catalog()
    for scan in scans:
        old = catalog.cartridges.get(scan.cartridge.barcode)
        if old is not None and old.vid == scan.cartridge.vid:
            scan.cartridge.history = list(old.history)
        out.cartridges[scan.cartridge.barcode] = scan.cartridge
    for barcode, cart in catalog.cartridges.items():
        out.cartridges.setdefault(barcode, cart)
    broken = {}
    for copy in catalog.copies.values():
        why = confirm(copy, by_barcode)
        if why is None:
            out.copies[copy.point_id] = copy
        elif copy.complete:
            broken[copy.point_id] = f"copy of {copy.source} point {copy.point_id[:12]} is not whole on tape ({why})"
    for point_id, copy in whole_copies(scans).items():
        if point_id not in out.copies:
            out.copies[point_id] = copy
    problems = [
        why + ("; the catalog now uses the whole copy the tape holds" if point_id in out.copies else "; dropped")
        for point_id, why in broken.items()
    ]
    used = used_files(out.copies.values())
    for scan in scans:
        scan.cartridge.partial = leftovers(scan, used)
    return out, problems
