"""Rebuild catalog entries from the cartridges alone (`tape inventory --rebuild`).

Reads each cartridge's label and every record header: point headers give the copies and
their parts, a trailer marks a copy complete, an end-of-volume record marks the cartridge
full. Data records are authenticated on the way (a scan is also a verification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from protectctl.errors import ProtectctlError
from protectctl.tape.catalog import Cartridge, CartridgeState, Catalog, Copy, Location, Part
from protectctl.tape.format import RecordType, SegmentHeader, Trailer, decode_header, decode_trailer
from protectctl.tape.library import EndOfDataError
from protectctl.tape.volume import Volume


@dataclass(slots=True)
class ScanResult:
    cartridge: Cartridge
    segments: list[tuple[int, SegmentHeader, Trailer | None]] = field(default_factory=list)


def scan_volume(volume: Volume, library: str, location: Location) -> ScanResult:
    """Everything a cartridge says about itself; CorruptionError on damage."""
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
    drive = volume.drive
    drive.seek_file(1)
    file_no = 1
    header: SegmentHeader | None = None
    trailer: Trailer | None = None
    while True:
        try:
            record = volume.read()
        except EndOfDataError:
            break
        if record is None:  # filemark: the file is closed
            cart.files = file_no
            if header is not None:
                result.segments.append((file_no, header, trailer))
            file_no, header, trailer = file_no + 1, None, None
            continue
        kind, plain, _raw = record
        if kind is RecordType.HEADER:
            header = decode_header(plain, f"cartridge {label.barcode} file {file_no}")
        elif kind is RecordType.TRAILER:
            trailer = decode_trailer(plain, f"cartridge {label.barcode} file {file_no}")
        elif kind is RecordType.END_OF_VOLUME:
            cart.state = CartridgeState.FULL
    if header is not None:  # a segment cut off without a filemark (interrupted write)
        result.segments.append((file_no, header, trailer))
    cart.bytes_used = drive.used_bytes
    if cart.state is not CartridgeState.FULL and result.segments:
        cart.state = CartridgeState.FILLING
    return result


def merge_scans(
    scans: list[ScanResult], catalog: Catalog, *, keep_copies_on: Callable[[str], bool]
) -> Catalog:
    """A new catalog from scans; copies on cartridges that were not scanned are kept from `catalog`."""
    out = Catalog()
    for scan in scans:
        old = catalog.cartridges.get(scan.cartridge.barcode)
        if old is not None and old.vid == scan.cartridge.vid:
            scan.cartridge.history = list(old.history)
        out.cartridges[scan.cartridge.barcode] = scan.cartridge
    for barcode, cart in catalog.cartridges.items():
        if barcode not in out.cartridges and keep_copies_on(barcode):
            out.cartridges[barcode] = cart
    for copy in catalog.copies.values():
        if all(
            p.barcode in out.cartridges and p.barcode not in {s.cartridge.barcode for s in scans}
            for p in copy.parts
        ):
            out.copies[copy.point_id] = copy
    for scan in scans:
        for file_no, header, trailer in scan.segments:
            found = out.copies.get(header.point.id)
            if found is None:
                p = header.point
                found = Copy(
                    p.id,
                    p.source,
                    p.time,
                    p.kind,
                    scan.cartridge.pool,
                    scan.cartridge.library,
                    header.retention_s,
                    header.copied_at,
                )
                out.copies[p.id] = found
            copy = found
            copy.parts.append(Part(scan.cartridge.barcode, file_no, header.part))
            if trailer is not None:
                copy.complete = True
                copy.blobs, copy.bytes_plain = trailer.blobs, trailer.bytes_plain
    for copy in out.copies.values():
        copy.parts.sort(key=lambda p: p.part)
        parts = [p.part for p in copy.parts]
        if parts != list(range(1, len(parts) + 1)):
            copy.complete = False
    return out


class InventoryProblem(ProtectctlError):
    """A cartridge could not be scanned; others were."""
