"""VirtualLibrary passes the tape library suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from protectctl.tape.library import VirtualLibrary
from tests.unit.tape.library_suite import CAPACITY, CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_virtual_library_suite(check: Callable[..., None], tmp_path: Path) -> None:
    counter = iter(range(1000))
    check(
        lambda: VirtualLibrary(tmp_path / f"lib{next(counter)}", slots=4, drives=1, capacity_bytes=CAPACITY)
    )


def test_full_library_refuses_cartridges(tmp_path: Path) -> None:
    from protectctl.tape.library import MediaError

    lib = VirtualLibrary(tmp_path, slots=1, drives=1, capacity_bytes=CAPACITY)
    lib.add_cartridge("A1")
    with pytest.raises(MediaError, match="no free slot"):
        lib.add_cartridge("A2")
