"""A restore never writes outside its target, whatever the stored tree or the target holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point, PointStats, new_point_id
from protectctl.engine.repository import BlobKind, Repository
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import ProtectctlError, RestoreError
from protectctl.restore.fs import FsRestorer
from protectctl.restore.selection import Selected
from tests.integration.test_filesystem_backup import PASS, T0, Clock, make_job


def _file_node(repo: Repository, writer: object, name: str, data: bytes) -> Node:
    blob, _ = writer.add(BlobKind.DATA, data)  # type: ignore[attr-defined]
    hasher = repo.content_hasher()
    hasher.update(data)
    return Node(
        name.encode(),
        NodeType.FILE,
        0o644,
        0,
        0,
        None,
        None,
        0,
        0,
        0,
        len(data),
        chunks=(blob,),
        content_hash=hasher.digest(),
    )


class CraftedTrees:
    """Serves hand-made trees (names the engine's decoder would refuse) and real blobs."""

    def __init__(self, repo: Repository, trees: dict[BlobId, Tree]) -> None:
        self.repo = repo
        self.trees = trees

    def load_tree(self, blob_id: BlobId) -> Tree:
        return self.trees[blob_id]

    def load_blob(self, blob_id: BlobId) -> bytes:
        return self.repo.load_blob(blob_id)


def _outside_untouched(tmp: Path, before: set[str]) -> None:
    assert {p.name for p in tmp.iterdir()} == before


@pytest.mark.parametrize("evil", ["../escape", "/tmp/abs-escape", "a/b", "..", ".", ""])
def test_restorer_refuses_unsafe_names(tmp_path: Path, evil: str) -> None:
    job = make_job(tmp_path, tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    with Repository.open(job.storage, PASS) as repo, repo.writer() as writer:
        node = _file_node(repo, writer, evil, b"pwned")
        inner = BlobId(b"\x01" * 32)
        nested = Node(b"d", NodeType.DIR, 0o755, 0, 0, None, None, 0, 0, 0, 0, subtree=inner)
    with Repository.open(job.storage, PASS) as repo:
        reader = CraftedTrees(repo, {inner: Tree((node,))})
        before = {p.name for p in tmp_path.iterdir()}
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            report = FsRestorer(reader, repo.content_hasher, overwrite=True).run(
                fd, [Selected((), node), Selected((), nested)]
            )
        finally:
            os.close(fd)
    assert len(report.errors) == 2 and all("refusing" in e for e in report.errors)
    _outside_untouched(tmp_path, before)
    assert not Path("/tmp/abs-escape").exists()
    assert [p.name for p in target.rglob("*")] == ["d"]


def test_stored_escape_name_cannot_be_restored(tmp_path: Path) -> None:
    """A tree blob naming ../escape, stored for real in the repository, is refused."""
    job = make_job(tmp_path, tmp_path)
    with Repository.open(job.storage, PASS) as repo:
        with repo.writer() as writer:
            node = _file_node(repo, writer, "placeholder", b"pwned")
            document = {
                "v": 1,
                "nodes": [
                    {
                        "name": "../escape",
                        "type": "file",
                        "mode": 420,
                        "uid": 0,
                        "gid": 0,
                        "mtime_ns": 0,
                        "atime_ns": 0,
                        "ctime_ns": 0,
                        "size": 5,
                        "chunks": [node.chunks[0].hex()],
                    }
                ],
            }
            tree, _ = writer.add(BlobKind.TREE, json.dumps(document).encode())
        repo.save_point(Point(new_point_id(), job.source, T0, "full", None, tree, PointStats(), True))
    target = tmp_path / "deep" / "target"
    with pytest.raises(ProtectctlError):
        restore(job, "latest", target=target)
    assert not (tmp_path / "deep" / "escape").exists()
    assert not (tmp_path / "escape").exists()


def test_symlink_in_target_is_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x").write_text("inside")
    (src / "f").write_text("new content")
    job = make_job(tmp_path, src)
    run_backup(job, "sync", now=Clock())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "sub")  # a directory in the tree is a symlink in the target
    os.symlink(outside / "victim", target / "f")  # a file in the tree is a symlink in the target
    restore(job, "latest", target=target, overwrite=True)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "precious"
    assert not (target / "sub").is_symlink() and (target / "sub" / "x").read_text() == "inside"
    assert not (target / "f").is_symlink() and (target / "f").read_text() == "new content"


def test_symlink_in_tree_is_restored_never_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, src / "escape")  # stored as a link, restored as a link
    (src / "escapefile").write_text("data")
    job = make_job(tmp_path, src)
    run_backup(job, "sync", now=Clock())
    target = tmp_path / "target"
    restore(job, "latest", target=target)
    assert os.readlink(target / "escape") == str(outside)
    assert list(outside.iterdir()) == []
    # A subpath through the stored symlink is not a directory of the point.
    with pytest.raises(RestoreError, match="not in this recovery point"):
        restore(job, "latest", target=tmp_path / "t2", subpaths=["escape/x"])
    # Overwriting again does not write through the link the first restore created.
    restore(job, "latest", target=target, overwrite=True)
    assert list(outside.iterdir()) == []


def test_hard_link_to_symlink_target_stays_inside(tmp_path: Path) -> None:
    """Crafted: a file claims to be a hard link of an inode first seen outside the selection."""
    job = make_job(tmp_path, tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("precious")
    with Repository.open(job.storage, PASS) as repo:
        with repo.writer() as writer:
            first = _file_node(repo, writer, "first", b"linked")
        from dataclasses import replace

        a = replace(first, nlink=2, inode=7, dev=1)
        b = replace(first, name=b"second", nlink=2, inode=7, dev=1)
        link = Node(b"link", NodeType.SYMLINK, 0o777, 0, 0, None, None, 0, 0, 0, 0, link_target=bytes(outside))
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            report = FsRestorer(CraftedTrees(repo, {}), repo.content_hasher, overwrite=True).run(
                fd, [Selected((), link), Selected((), a), Selected((), b)]
            )
        finally:
            os.close(fd)
    assert not report.errors and report.links == 1
    assert outside.read_text() == "precious"
    assert (target / "first").stat().st_ino == (target / "second").stat().st_ino


def test_a_failed_restore_leaves_no_partial_file_and_names_each_one(tmp_path: Path) -> None:
    """Damaged data fails the files it holds; each is named and removed, the rest restore."""
    from protectctl.engine.storage.base import ObjectKind

    src = tmp_path / "src"
    src.mkdir()
    contents = {f"f{i}.bin": os.urandom(200_000) for i in range(6)}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    job = make_job(tmp_path, src)
    run_backup(job, "full")
    storage = job.storage
    largest = max(storage.list(ObjectKind.DATA), key=lambda info: info.size).name  # data, not trees
    data = bytearray(storage.get(ObjectKind.DATA, largest))
    data[100] ^= 0x01  # inside the pack's first record
    storage.put(ObjectKind.DATA, largest, bytes(data))
    target = tmp_path / "target"
    with pytest.raises(RestoreError) as caught:
        restore(job, "latest", target=target)
    message = caught.value.message
    failed = [name for name in contents if f"{name}:" in message]
    assert failed and "the partial file was removed" in message
    for name, data in contents.items():
        path = target / name
        if name in failed:
            assert not path.exists()
        else:
            assert path.read_bytes() == data
