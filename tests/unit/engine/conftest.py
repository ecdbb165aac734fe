"""Fixtures: real repositories in tmp_path, with parameters scaled down for speed.

Small chunks (avg ~20 KiB) and small packs (64 KiB) give many chunks and packs from a few
hundred KiB of data, and scrypt n=2**10 keeps init/open at ~1 ms.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protectctl.engine.chunker import ChunkerParams
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.local import LocalStorage
from protectctl.engine.tree import Node, NodeType, Tree

PASSPHRASE = b"correct horse battery staple"
SMALL_CHUNKS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)
SMALL_PACK = 64 << 10


def make_repo(path: Path) -> Repository:
    return Repository.init(LocalStorage(path), PASSPHRASE, kdf_n=2**10, chunker=SMALL_CHUNKS, pack_size=SMALL_PACK)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = make_repo(tmp_path / "repo")
    yield repository
    repository.close()


def file_node(name: str, chunks: Sequence[BlobId], size: int) -> Node:
    return Node(
        name=name.encode(),
        type=NodeType.FILE,
        mode=0o100644,
        uid=1000,
        gid=1000,
        user="alice",
        group="alice",
        mtime_ns=1,
        atime_ns=2,
        ctime_ns=3,
        size=size,
        chunks=tuple(chunks),
    )


def dir_node(name: str, subtree: BlobId) -> Node:
    return Node(
        name=name.encode(),
        type=NodeType.DIR,
        mode=0o40755,
        uid=0,
        gid=0,
        user=None,
        group=None,
        mtime_ns=1,
        atime_ns=1,
        ctime_ns=1,
        size=0,
        subtree=subtree,
    )


def backup(repo: Repository, files: dict[str, bytes], *, source: str = "docs/home", when: int = 0) -> Point:
    """Store `files` as <root>/sub/<name> and publish a point; the archiver's job in miniature."""
    with repo.writer() as writer:
        nodes = []
        for name, data in sorted(files.items()):
            chunks = [writer.add(BlobKind.DATA, c)[0] for c in repo.chunker().iter_buffer(data)]
            nodes.append(file_node(name, chunks, len(data)))
        sub = repo.save_tree(writer, Tree(tuple(nodes)))
        root = repo.save_tree(writer, Tree((dir_node("sub", sub),)))
    point = Point(
        id=new_point_id(),
        source=source,
        time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=when),
        kind="full",
        parent=None,
        tree=root,
        stats=PointStats(bytes_added=writer.bytes_added, chunks_new=writer.chunks_new),
        complete=True,
        host="test",
    )
    repo.save_point(point)
    return point


def restore(repo: Repository, point: Point) -> dict[str, bytes]:
    assert point.tree is not None
    root = repo.load_tree(point.tree)
    (sub,) = root.nodes
    assert sub.subtree is not None
    return {
        node.name.decode(): b"".join(repo.load_blob(c) for c in node.chunks)
        for node in repo.load_tree(sub.subtree).nodes
    }


def random_files(count: int, size: int) -> dict[str, bytes]:
    return {f"f{i}": os.urandom(size) for i in range(count)}
