"""The conformance suite every TapeLibrary implementation must pass.

`run_suite(make)` takes a factory returning a fresh, empty library with at least 3 slots,
1 drive and a capacity of 64 KiB per cartridge; each check is also a pytest test through
`tests/unit/tape/test_virtual_library.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protectctl.tape.library import EndOfDataError, EndOfMediaError, MediaError, TapeLibrary

Factory = Callable[[], TapeLibrary]
CAPACITY = 64 * 1024


def check_slots_and_barcodes(make: Factory) -> None:
    lib = make()
    assert lib.add_cartridge("AAA001L9") >= 1
    assert lib.add_cartridge("AAA002L9") >= 1
    held = {e.barcode for e in lib.elements() if e.kind == "slot"}
    assert {"AAA001L9", "AAA002L9"} <= held
    with pytest.raises(MediaError):
        lib.add_cartridge("AAA001L9")  # barcodes are unique


def check_load_unload(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    assert drive.barcode == "AAA001L9"
    in_drive = [e for e in lib.elements() if e.kind == "drive" and e.barcode == "AAA001L9"]
    assert len(in_drive) == 1
    lib.unload(in_drive[0].index)
    assert any(e.kind == "slot" and e.barcode == "AAA001L9" for e in lib.elements())
    with pytest.raises(MediaError):
        lib.load("NOPE01L9")


def check_records_and_filemarks(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    drive.write_record(b"label")
    drive.write_filemark()
    drive.write_record(b"one")
    drive.write_record(b"two" * 100)
    drive.write_filemark()
    drive.write_record(b"three")
    assert drive.position() == (2, 1)
    drive.rewind()
    assert drive.read_record() == b"label"
    assert drive.read_record() is None
    assert drive.position() == (1, 0)
    assert drive.read_record() == b"one"
    assert drive.read_record() == b"two" * 100
    assert drive.read_record() is None
    assert drive.read_record() == b"three"
    with pytest.raises(EndOfDataError):
        drive.read_record()
    drive.seek_file(1)
    assert drive.read_record() == b"one"


def check_append_and_overwrite(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    for i in range(3):
        drive.write_record(f"r{i}".encode())
        drive.write_filemark()
    drive.seek_end_of_data()
    assert drive.position() == (3, 0)
    drive.write_record(b"appended")
    drive.seek_file(1)
    drive.write_record(b"new")  # writing mid-tape discards what followed
    drive.seek_end_of_data()
    assert drive.position() == (1, 1)
    drive.seek_file(1)
    assert drive.read_record() == b"new"
    with pytest.raises(EndOfDataError):
        drive.read_record()


def check_capacity_and_reserve(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    assert drive.capacity_bytes == CAPACITY
    written = 0
    with pytest.raises(EndOfMediaError):
        while True:
            drive.write_record(b"x" * 4096)
            written += 4096
    assert 0 < written <= CAPACITY
    assert drive.used_bytes == written
    drive.write_record(b"end of volume", use_reserve=True)  # early warning leaves room to close
    with pytest.raises(EndOfMediaError):
        drive.write_record(b"x" * CAPACITY, use_reserve=True)


def check_persistence_across_loads(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    drive.write_record(b"kept")
    drive.write_filemark()
    index = next(e.index for e in lib.elements() if e.kind == "drive" and e.barcode == "AAA001L9")
    lib.unload(index)
    again = lib.load("AAA001L9")
    assert again.read_record() == b"kept"
    assert again.used_bytes == 4
    again.erase()
    with pytest.raises(EndOfDataError):
        again.read_record()


def check_export_import(make: Factory) -> None:
    lib = make()
    lib.add_cartridge("AAA001L9")
    lib.export_cartridge("AAA001L9")
    assert "AAA001L9" in lib.exported()
    with pytest.raises(MediaError):
        lib.load("AAA001L9")  # off-site media cannot be loaded
    lib.import_cartridge("AAA001L9")
    assert lib.load("AAA001L9").barcode == "AAA001L9"


CHECKS = [
    check_slots_and_barcodes,
    check_load_unload,
    check_records_and_filemarks,
    check_append_and_overwrite,
    check_capacity_and_reserve,
    check_persistence_across_loads,
    check_export_import,
]
