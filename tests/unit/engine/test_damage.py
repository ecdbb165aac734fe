"""Damage is contained: one bad manifest, index object or key file does not block the rest,
the index is rebuilt from the packs' own headers, and no repair deletes what a point needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protectctl.engine.repository import Point, Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import CorruptionError, RepositoryError, WrongKeyError
from tests.unit.engine.conftest import PASSPHRASE, backup, make_repo, random_files, restore


def _names(repo: Repository, kind: ObjectKind) -> set[str]:
    return {info.name for info in repo.storage.list(kind)}


def _flip(repo: Repository, kind: ObjectKind, name: str, offset: int = 20) -> None:
    data = bytearray(repo.storage.get(kind, name))
    data[offset % len(data)] ^= 0x01
    repo.storage.put(kind, name, bytes(data))


def _three_points(repo: Repository) -> tuple[list[Point], list[dict[str, bytes]]]:
    """Three points, each in its own session (own index object), sharing one file."""
    shared = {"shared": random_files(1, 40_000)["f0"]}
    contents = [shared | random_files(2, 30_000) for _ in range(3)]
    return [backup(repo, files, when=i) for i, files in enumerate(contents)], contents


def _oldest_index(repo: Repository) -> str:
    base = Path(repo.storage.describe().removeprefix("local:")) / "index"
    return min(base.iterdir(), key=lambda f: f.stat().st_mtime_ns).name


def _reopened(repo: Repository) -> Repository:
    return Repository.open(repo.storage, PASSPHRASE)


# -- point manifests ------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped byte", "empty file"])
def test_a_damaged_manifest_is_skipped_reported_and_blocks_nothing(repo: Repository, damage: str) -> None:
    points, contents = _three_points(repo)
    oldest = points[0]
    if damage == "empty file":
        repo.storage.put(ObjectKind.POINTS, oldest.id, b"")
    else:
        _flip(repo, ObjectKind.POINTS, oldest.id)
    fresh = _reopened(repo)
    assert [p.id for p in fresh.list_points()] == [p.id for p in points[1:]]
    scan = fresh.scan_points("docs/home")
    assert [d.id for d in scan.damaged] == [oldest.id]
    assert f"points/{oldest.id}" in scan.damaged[0].problem
    for point, files in zip(points[1:], contents[1:], strict=True):
        assert restore(fresh, point) == files
    report = fresh.check()
    assert oldest.id in report.affected_points and report.damaged_points == (oldest.id,)
    assert f"{oldest.id} (manifest damaged)" in [a.describe() for a in report.affected]
    assert any(f"points/{oldest.id}" in e for e in report.errors)


def test_gc_deletes_nothing_while_a_manifest_is_damaged_then_forgetting_it_frees_space(repo: Repository) -> None:
    points, contents = _three_points(repo)
    _flip(repo, ObjectKind.POINTS, points[0].id)
    fresh = _reopened(repo)
    fresh.forget_points([points[1].id])  # unreferenced data: normally deleted now
    packs = _names(fresh, ObjectKind.DATA)
    report = fresh.gc()
    assert report.damaged and report.packs_deleted == 0
    assert report.deferred_because is not None and f"points/{points[0].id}" in report.deferred_because
    assert _names(fresh, ObjectKind.DATA) == packs
    assert [d.id for d in fresh.forget_damaged_points(dry_run=True)] == [points[0].id]
    assert points[0].id in _names(fresh, ObjectKind.POINTS)  # a dry run forgets nothing
    assert [d.id for d in fresh.forget_damaged_points()] == [points[0].id]
    report = fresh.gc()
    assert not report.damaged and report.packs_deleted > 0
    assert restore(fresh, points[2]) == contents[2]
    assert fresh.check(read_data=True).ok


def test_forgetting_damaged_manifests_keeps_one_repaired_meanwhile(repo: Repository) -> None:
    points, _ = _three_points(repo)
    good = repo.storage.get(ObjectKind.POINTS, points[0].id)
    _flip(repo, ObjectKind.POINTS, points[0].id)
    scan = repo.scan_points()
    repo.storage.put(ObjectKind.POINTS, points[0].id, good)  # restored from a copy
    assert scan.damaged and repo.forget_damaged_points() == []
    assert points[0].id in _names(repo, ObjectKind.POINTS)


# -- index objects --------------------------------------------------------------------------


def test_a_damaged_index_object_is_read_around_and_gc_deletes_nothing(repo: Repository) -> None:
    points, contents = _three_points(repo)
    bad = _oldest_index(repo)
    _flip(repo, ObjectKind.INDEX, bad)
    index_before = _names(repo, ObjectKind.INDEX)
    fresh = _reopened(repo)
    for point, files in zip(points, contents, strict=True):
        assert restore(fresh, point) == files  # through the packs' own headers, in memory
    assert _names(fresh, ObjectKind.INDEX) == index_before  # reading wrote nothing
    assert bad in fresh.index_damage()
    fresh.forget_points([points[1].id])
    packs = _names(fresh, ObjectKind.DATA)
    report = fresh.gc()
    assert report.damaged and report.packs_deleted == 0 and f"index/{bad}" in (report.deferred_because or "")
    assert _names(fresh, ObjectKind.DATA) == packs


def test_check_names_every_point_a_damaged_index_object_affects(repo: Repository) -> None:
    points, _ = _three_points(repo)  # all three need the shared file, indexed by the first session
    _flip(repo, ObjectKind.INDEX, _oldest_index(repo))
    report = _reopened(repo).check()
    assert not report.ok
    assert set(report.affected_points) == {p.id for p in points}
    assert any("repair index" in e for e in report.errors)
    assert not any("in no index and no pack" in e for e in report.errors)  # the packs are there


def test_repair_index_rebuilds_from_pack_headers_and_removes_the_damaged_object(repo: Repository) -> None:
    points, contents = _three_points(repo)
    bad = _oldest_index(repo)
    _flip(repo, ObjectKind.INDEX, bad)
    packs = _names(repo, ObjectKind.DATA)
    fresh = _reopened(repo)
    result = fresh.repair_index()
    assert result.packs_reindexed > 0 and result.index_removed == (bad,) and not result.unreadable_packs
    assert bad not in _names(fresh, ObjectKind.INDEX)
    assert _names(fresh, ObjectKind.DATA) == packs  # a repair never deletes a pack
    check = _reopened(repo).check(read_data=True)
    assert check.ok, check.errors
    again = _reopened(repo)
    assert again.gc().packs_deleted == 0  # every pack is still needed
    for point, files in zip(points, contents, strict=True):
        assert restore(_reopened(repo), point) == files


def test_with_every_index_object_gone_restores_work_and_the_index_is_rebuilt(repo: Repository) -> None:
    points, contents = _three_points(repo)
    for name in _names(repo, ObjectKind.INDEX):
        repo.storage.delete(ObjectKind.INDEX, name)
    other = _reopened(repo)
    with other.lock(exclusive=False, command="sync other/source"):  # someone else is busy
        fresh = _reopened(repo)
        assert fresh.repair_index_if_safe(fresh.list_points()) is None  # not while others run
        assert restore(fresh, points[2]) == contents[2]
        assert _names(repo, ObjectKind.INDEX) == set()
    fresh = _reopened(repo)
    result = fresh.repair_index_if_safe(fresh.list_points())
    assert result is not None and result.packs_reindexed == len(_names(repo, ObjectKind.DATA))
    assert result.index_removed == ()  # the automatic repair deletes nothing
    assert _reopened(repo).repair_index_if_safe(points) is None  # nothing left to do
    check = _reopened(repo).check(read_data=True)
    assert check.ok, check.errors
    for point, files in zip(points, contents, strict=True):
        assert restore(_reopened(repo), point) == files


def test_gc_with_the_index_gone_keeps_every_pack_a_point_needs(repo: Repository) -> None:
    points, contents = _three_points(repo)
    for name in _names(repo, ObjectKind.INDEX):
        repo.storage.delete(ObjectKind.INDEX, name)
    fresh = _reopened(repo)
    fresh.forget_points([points[0].id])
    fresh.gc()
    check = _reopened(repo).check(read_data=True)
    assert check.ok, check.errors
    for point, files in zip(points[1:], contents[1:], strict=True):
        assert restore(_reopened(repo), point) == files


def test_gc_never_deletes_an_unindexed_pack_whose_header_is_damaged(repo: Repository) -> None:
    point = backup(repo, random_files(2, 30_000))
    for name in _names(repo, ObjectKind.INDEX):
        repo.storage.delete(ObjectKind.INDEX, name)
    victim = sorted(_names(repo, ObjectKind.DATA))[0]
    size = len(repo.storage.get(ObjectKind.DATA, victim))
    _flip(repo, ObjectKind.DATA, victim, size - 10)  # inside the sealed header
    repo.forget_points([point.id])
    report = _reopened(repo).gc()
    assert victim in _names(repo, ObjectKind.DATA)
    assert report.unreadable_packs == 1
    assert any(victim in w for w in _reopened(repo).check().warnings)


# -- keys and config --------------------------------------------------------------------------


def _key_file(tmp_path: Path) -> Path:
    (key,) = (tmp_path / "keys").iterdir()
    return key


def test_a_damaged_key_file_is_not_reported_as_a_wrong_passphrase(tmp_path: Path) -> None:
    make_repo(tmp_path)
    key = _key_file(tmp_path)
    document = json.loads(key.read_text())
    sealed = document["sealed"]
    document["sealed"] = sealed[:10] + ("A" if sealed[10] != "A" else "B") + sealed[11:]
    key.write_text(json.dumps(document))
    with pytest.raises(CorruptionError, match="damaged") as caught:
        Repository.open(LocalStorage(tmp_path), PASSPHRASE)
    assert not isinstance(caught.value, WrongKeyError)
    assert key.name in caught.value.message


def test_a_key_file_that_is_not_json_is_reported_as_damaged(tmp_path: Path) -> None:
    make_repo(tmp_path)
    key = _key_file(tmp_path)
    key.write_bytes(key.read_bytes()[:-7])
    with pytest.raises(CorruptionError, match="damaged"):
        Repository.open(LocalStorage(tmp_path), PASSPHRASE)


def test_a_wrong_passphrase_is_still_a_wrong_passphrase(tmp_path: Path) -> None:
    make_repo(tmp_path)
    with pytest.raises(WrongKeyError):
        Repository.open(LocalStorage(tmp_path), b"not the passphrase")


@pytest.mark.parametrize(
    ("key", "value"),
    [("encryption", "aes-256-gbm"), ("compression", "lz4"), ("id_hash", "sha256")],
)
def test_a_config_naming_an_unsupported_algorithm_is_refused(tmp_path: Path, key: str, value: str) -> None:
    make_repo(tmp_path)
    config = tmp_path / "config" / "config"
    document = json.loads(config.read_text())
    document[key] = value
    config.write_text(json.dumps(document))
    with pytest.raises(RepositoryError, match=value):
        Repository.open(LocalStorage(tmp_path), PASSPHRASE)


# -- gc's reasons ------------------------------------------------------------------------------


def test_gc_beside_a_restore_does_not_blame_writers(repo: Repository) -> None:
    point = backup(repo, random_files(2, 30_000))
    repo.forget_points([point.id])
    reader = _reopened(repo)
    with reader.lock(exclusive=False, command="restore docs/home"):
        report = repo.gc()
    assert report.deferred_because is not None
    assert "restore docs/home" in report.deferred_because
    assert "writer" not in report.deferred_because
