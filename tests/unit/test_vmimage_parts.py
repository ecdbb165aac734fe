"""The pure parts of the vmImage provider: chunk geometry, extent maps, the tracked state, NBD reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from protectctl.providers.vmimage.chunkmap import (
    ID_SIZE,
    ZERO_ID,
    Tracked,
    all_zero,
    chunk_count,
    chunk_size_for,
    is_zero,
    layout,
    load_tracked,
    read_ranges,
    save_tracked,
    touched,
)
from protectctl.providers.vmimage.qemu import Bitmap
from protectctl.providers.vmimage.restore import target_format

K = 1024


def test_chunks_are_cluster_aligned_and_at_least_64k() -> None:
    assert chunk_size_for(64 * K) == 64 * K
    assert chunk_size_for(2 * K * K) == 2 * K * K
    assert chunk_size_for(512) == 64 * K
    assert chunk_size_for(48 * K) == 96 * K  # a multiple of the cluster
    assert chunk_size_for(0) == 64 * K  # raw
    assert chunk_count(10 * 64 * K + 1, 64 * K) == 11


def test_dirty_extents_touch_every_overlapped_chunk_once() -> None:
    c = 64 * K
    extents = [(0, c, 0), (c, 1, 1), (3 * c - 1, 2, 1), (5 * c, 3 * c, 1), (9 * c, c, 0)]
    assert touched(extents, c, 10) == {1, 2, 3, 5, 6, 7}
    assert touched([(0, 100 * c, 1)], c, 10) == set(range(10))  # clipped to the image


def test_zero_chunks_are_only_those_wholly_inside_zero_extents() -> None:
    c = 64 * K
    size = 4 * c + 512  # a short tail chunk
    extents = [(0, c + 10, 3), (c + 10, 2 * c - 10, 0), (3 * c, c + 512, 2)]
    assert all_zero(extents, c, size) == {0, 3, 4}


def test_reads_merge_neighbours_up_to_a_limit_and_stop_at_the_end() -> None:
    c = 64 * K
    assert list(read_ranges([0, 1, 2, 5, 9], c, 9 * c + 7, limit=2 * c)) == [
        (0, 2 * c),
        (2 * c, c),
        (5 * c, c),
        (9 * c, 7),
    ]
    assert list(read_ranges([], c, c)) == []


def test_layout_turns_zero_chunks_into_merged_holes() -> None:
    c = 64 * K
    a, b = b"a" * ID_SIZE, b"b" * ID_SIZE
    ids = ZERO_ID + ZERO_ID + a + ZERO_ID + b + ZERO_ID
    chunks, holes = layout(ids, c, 5 * c + 100)
    assert chunks == (a, b)
    assert holes == ((0, 2 * c), (3 * c, c), (5 * c, 100))


def test_is_zero() -> None:
    assert is_zero(bytearray(64 * K)) and is_zero(bytes(5 << 20))
    assert not is_zero(bytearray(64 * K - 1) + b"\1")
    assert not is_zero(bytes(5 << 20)[:-1] + b"\1")


def test_tracked_state_round_trips_and_damage_is_a_reason(tmp_path: Path) -> None:
    where = tmp_path / "s" / "web.map"
    assert load_tracked(where) is None
    state = Tracked("p1", "protectctl-x-1", "qcow2", 3 * 64 * K, 64 * K, b"x" * (3 * ID_SIZE))
    save_tracked(where, state)
    assert load_tracked(where) == state
    where.write_bytes(where.read_bytes()[:-1])
    reason = load_tracked(where)
    assert isinstance(reason, str) and "damaged" in reason
    where.write_bytes(b"not json\n")
    assert "damaged" in str(load_tracked(where))


@pytest.mark.parametrize(("flags", "ok"), [(("auto",), True), (("in-use", "auto"), False), ((), False)])
def test_a_bitmap_is_trusted_only_enabled_and_not_left_in_use(flags: tuple[str, ...], ok: bool) -> None:
    assert Bitmap("b", flags, 65536).consistent is ok


def test_restore_format_follows_the_target_suffix() -> None:
    assert target_format(Path("/x/a.qcow2"), "raw") == "qcow2"
    assert target_format(Path("/x/a.img"), "qcow2") == "raw"
    assert target_format(Path("/x/a.raw"), "qcow2") == "raw"
    assert target_format(Path("/x/a"), "qcow2") == "qcow2"


def test_a_domain_validates_without_a_problem() -> None:
    from protectctl.providers.vmimage import VmImageProvider
    from protectctl.providers.vmimage.spec import VmImageMember

    provider = VmImageProvider()
    plain = VmImageMember.model_validate({"path": "/var/lib/libvirt/images/web1.qcow2"})
    assert provider.check_member(plain, source="vms/web1", hosts=None) == []
    with_domain = VmImageMember.model_validate({"path": "/x.qcow2", "domain": "web1"})
    assert provider.check_member(with_domain, source="vms/web1", hosts=None) == []
