"""gc: keeps everything surviving points need, deletes the rest, and never races writers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from protectctl.engine.ids import BlobId
from protectctl.engine.locks import LeaseLock
from protectctl.engine.marks import BlobSet
from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.tree import Tree
from protectctl.errors import LockedError
from tests.unit.engine.conftest import PASSPHRASE, backup, dir_node, file_node, random_files, restore


def _packs(repo: Repository) -> set[str]:
    return {info.name for info in repo.storage.list(ObjectKind.DATA)}


def test_gc_keeps_what_survivors_need_and_deletes_the_rest(repo: Repository) -> None:
    shared = random_files(2, 60_000)
    old = backup(repo, shared | {"only-old": b"o" * 5 + bytes(range(256)) * 600}, when=1)
    packs_with_old = _packs(repo)
    keep_files = shared | {"new": random_files(1, 80_000)["f0"]}
    keep = backup(repo, keep_files, when=2)
    repo.forget_points([old.id])
    report = repo.gc()
    assert report.packs_deleted > 0 and report.bytes_deleted > 0
    assert report.packs_condemned == 0
    assert not packs_with_old <= _packs(repo)  # some of the old point's packs are gone
    check = repo.check(read_data=True)
    assert check.ok, check.errors
    assert check.warnings == ()
    fresh = Repository.open(repo.storage, PASSPHRASE)
    assert restore(fresh, keep) == keep_files
    fresh.forget_points([keep.id])
    fresh.gc()
    assert _packs(fresh) == set()
    assert fresh.check(read_data=True).ok


def test_gc_with_nothing_to_do_changes_nothing(repo: Repository) -> None:
    backup(repo, random_files(2, 30_000))
    repo.gc()  # merges index objects
    before = ({i.name for i in repo.storage.list(ObjectKind.INDEX)}, _packs(repo))
    report = repo.gc()
    assert (report.packs_deleted, report.index_files_replaced) == (0, 0)
    assert ({i.name for i in repo.storage.list(ObjectKind.INDEX)}, _packs(repo)) == before


def test_dry_run_deletes_nothing(repo: Repository) -> None:
    point = backup(repo, random_files(2, 30_000))
    repo.forget_points([point.id])
    before = _packs(repo)
    report = repo.gc(dry_run=True)
    assert report.dry_run and report.packs_deleted == len(before)
    assert _packs(repo) == before


def test_gc_under_an_exclusive_lock(repo: Repository) -> None:
    point = backup(repo, random_files(1, 30_000))
    repo.forget_points([point.id])
    with repo.lock(exclusive=True, command="prune"):
        assert repo.gc().packs_deleted > 0


def test_two_gcs_do_not_run_at_once(repo: Repository) -> None:
    other = LeaseLock(repo.storage, repo.sealer, exclusive=False, command="gc", lease_s=60)
    other.acquire()
    try:
        with pytest.raises(LockedError, match="another gc"):
            repo.gc()
    finally:
        other.release()


def test_gc_beside_a_live_writer_keeps_its_data_and_what_it_deduped(repo: Repository) -> None:
    old_files = random_files(2, 60_000)
    old = backup(repo, old_files, when=1)
    repo.forget_points([old.id])  # its data is garbage... until the writer dedups against it
    new_data = random_files(1, 90_000)["f0"]
    added = threading.Event()
    go = threading.Event()
    result: dict[str, object] = {}

    def writer_thread() -> None:
        other = Repository.open(repo.storage, PASSPHRASE)
        with other.writer() as writer:
            nodes = []
            for name, data in sorted((old_files | {"new": new_data}).items()):
                chunks = [writer.add(BlobKind.DATA, c)[0] for c in other.chunker().iter_buffer(data)]
                nodes.append(file_node(name, chunks, len(data)))
            writer._drain_sealed(block_over=0)
            writer._drain_uploads(block_over=0)  # make sure some of its packs are on storage
            added.set()
            assert go.wait(30)
            sub = other.save_tree(writer, Tree(tuple(nodes)))
            root = other.save_tree(writer, Tree((dir_node("sub", sub),)))
        point = Point(new_point_id(), "docs/home", old.time, "sync", None, root, PointStats(), True)
        other.save_point(point)
        result["point"] = point

    thread = threading.Thread(target=writer_thread)
    thread.start()
    assert added.wait(30)
    during = repo.gc()
    assert during.packs_deleted == 0
    assert during.deferred_because is not None
    go.set()
    thread.join(30)
    point = result["point"]
    assert isinstance(point, Point)
    assert repo.check(read_data=True).ok
    assert restore(repo, point) == old_files | {"new": new_data}
    after = repo.gc()
    assert after.packs_resurrected > 0
    check = repo.check(read_data=True)
    assert check.ok and check.warnings == (), (check.errors, check.warnings)
    assert restore(Repository.open(repo.storage, PASSPHRASE), point) == old_files | {"new": new_data}


def test_crash_garbage_is_removed(repo: Repository) -> None:
    with pytest.raises(RuntimeError), repo.writer() as writer:
        for chunk in random_files(6, 20_000).values():
            writer.add(BlobKind.DATA, chunk)
        writer._drain_sealed(block_over=0)
        writer._drain_uploads(block_over=0)
        raise RuntimeError("killed")
    assert _packs(repo)
    assert repo.check().warnings  # unindexed packs
    repo.gc()
    assert _packs(repo) == set()


def test_the_mark_set_answers_many_ids_at_once_as_one_by_one(tmp_path: Path) -> None:
    ids = [BlobId(n.to_bytes(32, "big")) for n in range(1200)]
    with BlobSet(tmp_path) as marks:
        marks.add_many(ids[::3])
        asked = ids + ids[:5]  # more than one query's worth, and repeats
        assert marks.present(asked) == {i for i in asked if marks.contains(i)} == set(ids[::3])
        assert marks.present([]) == set()
