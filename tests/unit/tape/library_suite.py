"""The conformance suite every TapeLibrary implementation must pass.

Each check in CHECKS takes a factory returning a fresh, empty library with at least 3 slots,
1 drive and a capacity of 64 KiB per cartridge. Each check in CRASH_CHECKS also takes
`reopen(lib)`: a new handle on the same library and media as after a power cut or a killed
process (nothing unloaded, flushed or closed). All run as pytest tests through
`tests/unit/tape/test_virtual_library.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from protectctl.tape.library import EndOfDataError, EndOfMediaError, MediaError, TapeDrive, TapeLibrary

Factory = Callable[[], TapeLibrary]
Reopen = Callable[[TapeLibrary], TapeLibrary]
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


def _written(lib: TapeLibrary, *files: Sequence[bytes], closed: bool = True) -> TapeDrive:
    """Cartridge AAA001L9 loaded, with one tape file per item of `files` (the last without its
    filemark unless `closed`)."""
    lib.add_cartridge("AAA001L9")
    drive = lib.load("AAA001L9")
    for i, records in enumerate(files):
        for record in records:
            drive.write_record(record)
        if closed or i < len(files) - 1:
            drive.write_filemark()
    return drive


def check_locate(make: Factory) -> None:
    drive = _written(make(), [b"label"], [b"a", b"b", b"c"])
    drive.locate(1, 2)
    assert drive.position() == (1, 2)
    assert drive.read_record() == b"c"
    drive.locate(1, 3)  # the place of the filemark
    assert drive.read_record() is None
    assert drive.position() == (2, 0)
    drive.locate(1, 0)
    assert drive.read_record() == b"a"
    with pytest.raises(MediaError):
        drive.locate(1, 4)
    with pytest.raises(MediaError):
        drive.seek_file(5)  # beyond end of data


def _in_drive(lib: TapeLibrary, barcode: str) -> int:
    return next(e.index for e in lib.elements() if e.kind == "drive" and e.barcode == barcode)


def check_unterminated_file_after_a_crash(make: Factory, reopen: Reopen) -> None:
    """A writer killed mid-file: end of data is inside that file, which reads to EndOfDataError
    (not a filemark); writing from its first record replaces it; closed files stay."""
    lib = make()
    _written(lib, [b"label"], [b"kept"], [b"partial-1", b"partial-2"], closed=False)
    lib = reopen(lib)  # the writer died: no filemark, no unload
    drive = lib.load("AAA001L9")
    drive.seek_end_of_data()
    assert drive.position() == (2, 2)  # inside the unterminated file
    drive.seek_file(2)
    assert drive.read_record() == b"partial-1"
    assert drive.read_record() == b"partial-2"
    with pytest.raises(EndOfDataError):
        drive.read_record()
    drive.seek_file(2)  # append after the last complete filemark
    drive.write_record(b"fresh")
    drive.write_filemark()
    drive.seek_end_of_data()
    assert drive.position() == (3, 0)
    drive.seek_file(1)
    assert [drive.read_record(), drive.read_record()] == [b"kept", None]
    assert [drive.read_record(), drive.read_record()] == [b"fresh", None]
    with pytest.raises(EndOfDataError):
        drive.read_record()
    assert drive.used_bytes == len(b"label") + len(b"kept") + len(b"fresh")


def check_filemarks_survive_a_crash(make: Factory, reopen: Reopen) -> None:
    """Everything before a filemark is on the media once write_filemark returns."""
    lib = make()
    _written(lib, [b"label"], [b"one"])
    lib = reopen(lib)
    drive = lib.load("AAA001L9")  # still in its drive: loading it again is allowed
    drive.seek_end_of_data()
    assert drive.position() == (2, 0)
    lib.unload(_in_drive(lib, "AAA001L9"))
    assert any(e.kind == "slot" and e.barcode == "AAA001L9" for e in lib.elements())


CRASH_CHECKS = [check_unterminated_file_after_a_crash, check_filemarks_survive_a_crash]

CHECKS = [
    check_slots_and_barcodes,
    check_load_unload,
    check_records_and_filemarks,
    check_append_and_overwrite,
    check_capacity_and_reserve,
    check_persistence_across_loads,
    check_export_import,
    check_locate,
]
