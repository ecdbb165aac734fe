"""check: damage is found, and reported with the points it hurts."""

from __future__ import annotations

import pytest
import zstandard

from protectctl.engine import index as index_module
from protectctl.engine.crypto import aad, content_name
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from tests.unit.engine.conftest import backup, random_files


def _pack_of_first_chunk(repo: Repository, point_id: str) -> str:
    point = repo.load_point(point_id)
    assert point.tree is not None
    (sub,) = repo.load_tree(point.tree).nodes
    assert sub.subtree is not None
    chunk = repo.load_tree(sub.subtree).nodes[0].chunks[0]
    located = repo._lookup(chunk)
    assert located is not None
    return located.pack


def _flip_byte(repo: Repository, pack: str, offset: int) -> None:
    data = bytearray(repo.storage.get(ObjectKind.DATA, pack))
    data[offset] ^= 0x01
    repo.storage.put(ObjectKind.DATA, pack, bytes(data))


def test_clean_repository_checks_clean(repo: Repository) -> None:
    backup(repo, random_files(3, 50_000))
    for read_data in (False, True):
        report = repo.check(read_data=read_data)
        assert report.ok, report.errors
        assert report.points_checked == 1


def test_flipped_byte_is_found_and_names_the_affected_point(repo: Repository) -> None:
    hurt = backup(repo, {"a": b"\x01" * 10 + bytes(range(256)) * 200})
    safe = backup(repo, random_files(1, 30_000))
    pack = _pack_of_first_chunk(repo, hurt.id)
    _flip_byte(repo, pack, 20)
    assert repo.check().ok  # structure alone cannot see inside packs
    report = repo.check(read_data=True)
    assert not report.ok
    assert report.damaged_packs == {pack: (hurt.id,)}
    assert report.affected_points == (hurt.id,)
    assert safe.id not in report.affected_points
    (named,) = report.affected
    assert (named.id, named.source, named.time) == (hurt.id, hurt.source, hurt.time)
    assert named.describe().startswith(f"{hurt.id} ({hurt.source} at ")
    assert any(pack in e for e in report.errors)


def test_missing_pack_is_found_without_reading_data(repo: Repository) -> None:
    point = backup(repo, random_files(2, 40_000))
    pack = _pack_of_first_chunk(repo, point.id)
    repo.storage.delete(ObjectKind.DATA, pack)
    report = repo.check()
    assert not report.ok
    assert report.affected_points == (point.id,)
    assert pack in report.damaged_packs


def test_damaged_pack_header_is_found(repo: Repository) -> None:
    point = backup(repo, random_files(1, 40_000))
    pack = _pack_of_first_chunk(repo, point.id)
    size = len(repo.storage.get(ObjectKind.DATA, pack))
    _flip_byte(repo, pack, size - 10)
    report = repo.check(read_data=True)
    assert report.affected_points == (point.id,)


def test_unindexed_pack_is_a_warning_not_an_error(repo: Repository) -> None:
    backup(repo, random_files(1, 10_000))
    for info in list(repo.storage.list(ObjectKind.INDEX)):
        data = repo.storage.get(ObjectKind.INDEX, info.name)
        repo.storage.delete(ObjectKind.INDEX, info.name)
    report = repo.check()
    assert not report.ok  # the point's blobs are now in no index
    repo.storage.put(ObjectKind.INDEX, info.name, data)
    assert repo.check().ok


def test_a_sorted_directory_out_of_order_is_an_error_and_check_still_reads_the_tables(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "SORTED_MIN_ENTRIES", 1)  # every index object gets a directory
    backup(repo, random_files(3, 20_000))
    (info,) = repo.storage.list(ObjectKind.INDEX)
    payload = zstandard.ZstdDecompressor().decompress(
        repo.sealer.open(repo.storage.get(ObjectKind.INDEX, info.name), aad("index"), "t")
    )
    assert payload[4] & 2
    reversed_tail = b"".join(payload[i : i + 4] for i in range(len(payload) - 4, len(payload) - 12, -4))
    bad = payload[:-8] + reversed_tail  # the last two offsets swapped: out of id order
    stored = repo.sealer.seal(zstandard.ZstdCompressor().compress(bad), aad("index"))
    repo.storage.put(ObjectKind.INDEX, content_name(stored), stored)
    repo.storage.delete(ObjectKind.INDEX, info.name)
    report = repo.check()
    assert [e for e in report.errors if "sorted directory is not in blob id order" in e]
    assert report.points_checked == 1 and not report.damaged_points  # every blob still found
