"""Repository round trips: init/open, keys, write/read, dedup, points."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import CorruptionError, RepositoryError, WrongKeyError
from tests.unit.engine.conftest import PASSPHRASE, backup, make_repo, random_files, restore


def test_init_then_open(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert not Repository.exists(storage)
    created = make_repo(tmp_path)
    assert Repository.exists(storage)
    opened = Repository.open(storage, PASSPHRASE)
    assert opened.id == created.id
    assert opened.chunker_params == created.chunker_params
    assert opened.blob_id(b"x") == created.blob_id(b"x")


def test_init_refuses_an_existing_repository(tmp_path: Path) -> None:
    make_repo(tmp_path)
    with pytest.raises(RepositoryError, match="already holds"):
        make_repo(tmp_path)


def test_wrong_passphrase(tmp_path: Path) -> None:
    make_repo(tmp_path)
    with pytest.raises(WrongKeyError):
        Repository.open(LocalStorage(tmp_path), b"wrong")


def test_open_without_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="holds no repository"):
        Repository.open(LocalStorage(tmp_path), PASSPHRASE)


def test_ids_are_keyed_per_repository(tmp_path: Path) -> None:
    a, b = make_repo(tmp_path / "a"), make_repo(tmp_path / "b")
    assert a.blob_id(b"same") != b.blob_id(b"same")


def test_config_holds_no_secrets(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    import json

    config = json.loads(repo.storage.get(ObjectKind.CONFIG, "config"))
    public = {"format", "version", "id", "chunker", "pack_size", "compression", "encryption", "id_hash"}
    assert set(config) == public
    assert set(config["chunker"]) == {"algorithm", "min", "avg", "max"}


def test_backup_and_restore_round_trip(repo: Repository) -> None:
    files = random_files(5, 150_000) | {"text": b"hello world\n" * 40_000, "empty": b""}
    point = backup(repo, files)
    assert restore(Repository.open(repo.storage, PASSPHRASE), point) == files


def test_nothing_is_stored_twice(repo: Repository) -> None:
    files = random_files(3, 100_000)
    first = backup(repo, files)
    second = backup(repo, files)
    assert first.stats.chunks_new > 0
    assert second.stats.chunks_new == 0
    assert restore(repo, second) == files


def test_add_reports_was_new(repo: Repository) -> None:
    with repo.writer() as writer:
        blob, new = writer.add(BlobKind.DATA, b"payload")
        again, new_again = writer.add(BlobKind.DATA, b"payload")
    assert (blob, new, new_again) == (again, True, False)
    assert repo.has_blob(blob)
    assert repo.load_blob(blob) == b"payload"


def test_abandoned_writer_writes_no_index(repo: Repository) -> None:
    with pytest.raises(RuntimeError), repo.writer() as writer:
        for _ in range(20):
            writer.add(BlobKind.DATA, os.urandom(20_000))  # several packs get uploaded
        raise RuntimeError("source vanished")
    assert list(repo.storage.list(ObjectKind.INDEX)) == []
    blob = repo.blob_id(b"later")
    assert not repo.has_blob(blob)
    with repo.writer() as writer:
        writer.add(BlobKind.DATA, b"later")
    assert repo.check().ok


def test_points_round_trip_and_sort_by_time(repo: Repository) -> None:
    late = backup(repo, {"a": b"1"}, when=10)
    early = backup(repo, {"a": b"1"}, when=1, source="docs/other")
    assert [p.id for p in repo.list_points()] == [early.id, late.id]
    assert [p.id for p in repo.list_points("docs/home")] == [late.id]
    assert repo.load_point(late.id) == late
    repo.forget_points([late.id])
    assert [p.id for p in repo.list_points()] == [early.id]
    with pytest.raises(RepositoryError, match="no such point"):
        repo.forget_points(["00" * 16])


def test_point_extra_and_tags_survive(repo: Repository) -> None:
    point = Point(
        id=new_point_id(),
        source="db/main",
        time=datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC),
        kind="sync",
        parent="ab" * 16,
        tree=None,
        stats=PointStats(files=3, duration_s=1.5),
        complete=False,
        errors=("one file vanished",),
        host="h1",
        tags={"k": "v"},
        extra={"wal": {"from": "0/1000000", "to": "0/2000000"}, "n": [1, 2]},
    )
    repo.save_point(point)
    assert repo.load_point(point.id) == point


def test_save_point_refuses_an_uncommitted_tree(repo: Repository) -> None:
    with repo.writer() as writer:
        from protectctl.engine.tree import Tree

        tree = repo.save_tree(writer, Tree(()))
        point = Point(new_point_id(), "a/b", datetime.now(UTC), "full", None, tree, PointStats(), True)
        with pytest.raises(RepositoryError, match="not committed"):
            repo.save_point(point)
    repo.save_point(point)


def test_a_point_renamed_on_storage_fails_authentication(repo: Repository) -> None:
    point = backup(repo, {"a": b"1"})
    other = new_point_id()
    repo.storage.put(ObjectKind.POINTS, other, repo.storage.get(ObjectKind.POINTS, point.id))
    with pytest.raises(CorruptionError, match="authentication"):
        repo.load_point(other)


def test_a_blob_read_under_another_id_is_refused(repo: Repository) -> None:
    with repo.writer() as writer:
        a, _ = writer.add(BlobKind.DATA, b"A" * 1000)
        b, _ = writer.add(BlobKind.DATA, b"B" * 1000)
    index = repo._loaded_index()
    swapped = dataclasses.replace(index.live[a].entry, blob_id=b)
    with pytest.raises(CorruptionError, match="authentication"):
        repo.read_entry(index.live[a].pack, swapped)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=70_000), min_size=1, max_size=12), workers=st.integers(1, 3))
def test_any_blobs_round_trip(repo: Repository, blobs: list[bytes], workers: int) -> None:
    with repo.writer(workers=workers) as writer:
        ids = [writer.add(BlobKind.DATA, blob)[0] for blob in blobs]
    fresh = Repository.open(repo.storage, PASSPHRASE)
    assert [fresh.load_blob(i) for i in ids] == blobs


@settings(max_examples=15, deadline=None)
@given(data=st.binary(max_size=300_000))
def test_chunks_reassemble(data: bytes) -> None:
    from protectctl.engine.chunker import Chunker
    from tests.unit.engine.conftest import SMALL_CHUNKS

    chunks = list(Chunker(SMALL_CHUNKS, seed=42).iter_buffer(data))
    assert b"".join(chunks) == data
    assert all(len(c) <= SMALL_CHUNKS.max_size for c in chunks)


@settings(max_examples=15, deadline=None)
@given(data=st.binary(max_size=300_000), read=st.integers(min_value=1, max_value=70_000))
def test_chunks_of_a_reader_equal_chunks_of_the_buffer(data: bytes, read: int) -> None:
    """iter_reader (reused buffer, short reads) cuts exactly where iter_buffer does."""
    import io

    from protectctl.engine.chunker import Chunker
    from tests.unit.engine.conftest import SMALL_CHUNKS

    chunker = Chunker(SMALL_CHUNKS, seed=42)
    stream = io.BytesIO(data)

    def readinto(view: memoryview) -> int:
        piece = stream.read(min(read, len(view)))
        view[: len(piece)] = piece
        return len(piece)

    expected = [bytes(c) for c in chunker.iter_buffer(data)]
    buf = bytearray(2 * SMALL_CHUNKS.max_size)
    assert [bytes(c) for c in chunker.iter_reader(readinto, buf)] == expected


def test_incompressible_chunks_are_stored_and_read_back(repo: Repository) -> None:
    from protectctl.engine.buffers import BlobScratch

    noise, text = os.urandom(600_000), b"all work and no play " * 30_000
    with repo.writer() as writer:
        ids = [writer.add(BlobKind.DATA, memoryview(d))[0] for d in (noise, text)]
    scratch = BlobScratch()
    for blob_id, data in zip(ids, (noise, text), strict=True):
        assert repo.load_blob(blob_id) == data
        assert bytes(repo.load_blob_into(blob_id, scratch)) == data
        assert repo.load_blob_unchecked(blob_id) == data
