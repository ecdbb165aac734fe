"""VirtualLibrary passes the tape library suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from protectctl.tape.library import EndOfDataError, TapeLibrary, VirtualLibrary
from tests.unit.tape.library_suite import CAPACITY, CHECKS, CRASH_CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_virtual_library_suite(check: Callable[..., None], tmp_path: Path) -> None:
    counter = iter(range(1000))
    check(lambda: VirtualLibrary(tmp_path / f"lib{next(counter)}", slots=4, drives=1, capacity_bytes=CAPACITY))


def _reopen(lib: TapeLibrary) -> TapeLibrary:
    """What the next process sees: a new VirtualLibrary on the same directory."""
    assert isinstance(lib, VirtualLibrary)
    return VirtualLibrary(lib.path, slots=lib.slot_count, drives=lib.drive_count, capacity_bytes=lib.capacity_bytes)


@pytest.mark.parametrize("check", CRASH_CHECKS, ids=lambda c: c.__name__)
def test_virtual_library_crash_suite(check: Callable[..., None], tmp_path: Path) -> None:
    counter = iter(range(1000))
    check(
        lambda: VirtualLibrary(tmp_path / f"lib{next(counter)}", slots=4, drives=1, capacity_bytes=CAPACITY),
        _reopen,
    )


def test_a_record_cut_off_by_a_crash_is_not_data(tmp_path: Path) -> None:
    """A frame torn by SIGKILL mid-write (virtual media only): end of data lies before it."""
    lib = VirtualLibrary(tmp_path, slots=2, drives=1, capacity_bytes=CAPACITY)
    lib.add_cartridge("A1")
    drive = lib.load("A1")
    drive.write_record(b"label")
    drive.write_filemark()
    drive.write_record(b"whole")
    tape_file = tmp_path / "cartridges" / "A1" / "f000001"
    with open(tape_file, "ab") as out:
        out.write(b"R" + (1000).to_bytes(4, "big") + b"only part of it")
    again = _reopen(lib).load("A1")
    assert again.used_bytes == len(b"label") + len(b"whole")
    again.seek_end_of_data()
    assert again.position() == (1, 1)
    again.seek_file(1)
    assert again.read_record() == b"whole"
    with pytest.raises(EndOfDataError):
        again.read_record()
    again.seek_end_of_data()
    again.write_record(b"next")  # the torn bytes go
    again.write_filemark()
    again.seek_file(1)
    assert [again.read_record(), again.read_record(), again.read_record()] == [b"whole", b"next", None]


def test_full_library_refuses_cartridges(tmp_path: Path) -> None:
    from protectctl.tape.library import MediaError

    lib = VirtualLibrary(tmp_path, slots=1, drives=1, capacity_bytes=CAPACITY)
    lib.add_cartridge("A1")
    with pytest.raises(MediaError, match="no free slot"):
        lib.add_cartridge("A2")
