"""engine/storage/cache.py: manifests and index objects read once, then from the local copy;
copies of deleted objects dropped at the next listing; a bad copy never served."""

from __future__ import annotations

from pathlib import Path

from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.cache import CachedStorage, cache_dir_for
from protectctl.engine.storage.local import LocalStorage
from tests.unit.engine.conftest import PASSPHRASE, backup, make_repo


class _Counting(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[tuple[ObjectKind, str]] = []

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append((kind, name))
        return super().get(kind, name, offset, length)


def _point_and_index_reads(store: _Counting) -> int:
    return sum(1 for kind, _ in store.gets if kind in (ObjectKind.POINTS, ObjectKind.INDEX))


def test_a_second_job_reads_no_manifest_or_index_and_deleted_ones_leave_the_cache(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo").close()
    store = _Counting(tmp_path / "repo")
    cache_dir = cache_dir_for(tmp_path / "state", store)
    with Repository.open(CachedStorage(store, cache_dir), PASSPHRASE) as repo:
        first = backup(repo, {"a": b"x" * 5000}, source="docs/a")
        backup(repo, {"b": b"y" * 5000}, source="docs/b", when=1)
    assert _point_and_index_reads(store) == 0  # what a job writes it keeps: never read back

    store.gets.clear()
    cached = CachedStorage(store, cache_dir)
    with Repository.open(cached, PASSPHRASE) as repo:
        assert [p.source for p in repo.list_points()] == ["docs/a", "docs/b"]
        repo.forget_points([first.id])
    assert _point_and_index_reads(store) == 0 and cached.hits >= 2
    assert not (cache_dir / "points" / first.id).exists()

    store.gets.clear()  # a point another host deleted: gone from the cache once listed
    with Repository.open(store, PASSPHRASE) as plain:
        (other,) = plain.list_points()
    store.delete(ObjectKind.POINTS, other.id)
    assert (cache_dir / "points" / other.id).exists()
    with Repository.open(CachedStorage(store, cache_dir), PASSPHRASE) as repo:
        assert repo.list_points() == []
    assert not (cache_dir / "points" / other.id).exists()


def test_a_damaged_copy_is_read_again_from_the_store(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo").close()
    store = _Counting(tmp_path / "repo")
    cache_dir = tmp_path / "cache"
    with Repository.open(CachedStorage(store, cache_dir), PASSPHRASE) as repo:
        point = backup(repo, {"a": b"x" * 5000})
    (index_name,) = [i.name for i in store.list(ObjectKind.INDEX)]
    for kind, name in ((ObjectKind.POINTS, point.id), (ObjectKind.INDEX, index_name)):
        copy = cache_dir / kind.value / name
        copy.write_bytes(copy.read_bytes()[:-1] + b"!")

    store.gets.clear()
    with Repository.open(CachedStorage(store, cache_dir), PASSPHRASE) as repo:
        assert [p.id for p in repo.list_points()] == [point.id]
        assert repo.load_blob(repo.list_points()[0].tree) is not None  # type: ignore[arg-type]
    reads = sorted(g for g in store.gets if g[0] in (ObjectKind.POINTS, ObjectKind.INDEX))
    assert reads == sorted([(ObjectKind.POINTS, point.id), (ObjectKind.INDEX, index_name)])  # once each
    # and the copies are good again
    assert (cache_dir / "points" / point.id).read_bytes() == store.get(ObjectKind.POINTS, point.id)
    assert (cache_dir / "index" / index_name).read_bytes() == store.get(ObjectKind.INDEX, index_name)


def test_ranged_reads_and_other_kinds_pass_through(tmp_path: Path) -> None:
    store = _Counting(tmp_path / "repo")
    cached = CachedStorage(store, tmp_path / "cache")
    name = "ab" * 16
    cached.put(ObjectKind.POINTS, name, b"manifest")
    assert cached.get(ObjectKind.POINTS, name, 2, 3) == b"nif"
    cached.put(ObjectKind.CONFIG, "config", b"c")
    assert cached.get(ObjectKind.CONFIG, "config") == b"c"
    assert store.gets == [(ObjectKind.POINTS, name), (ObjectKind.CONFIG, "config")]
    assert not (tmp_path / "cache" / "config").exists()
    assert ((tmp_path / "cache" / "points" / name).stat().st_mode & 0o777) == 0o600
