"""The restore's count walk streams (reads each tree's JSON, keeps nothing) and gives the same
totals as a walk over decoded nodes; the tree cache stays within its byte budget."""

from __future__ import annotations

import hashlib

import pytest

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import Node, NodeType, Tree, decode_tree, encode_tree
from protectctl.errors import CorruptionError
from protectctl.restore.run import CachedTrees
from protectctl.restore.selection import Selected, count, select


class _Reader:
    def __init__(self) -> None:
        self.blobs: dict[BlobId, bytes] = {}
        self.tree_loads = 0

    def put(self, tree: Tree) -> BlobId:
        raw = encode_tree(tree)
        blob_id = BlobId(hashlib.sha256(raw).digest())
        self.blobs[blob_id] = raw
        return blob_id

    def load_blob(self, blob_id: BlobId) -> bytes:
        return self.blobs[blob_id]

    def load_tree(self, blob_id: BlobId) -> Tree:
        self.tree_loads += 1
        return decode_tree(self.blobs[blob_id])

    def content_hasher(self) -> object:
        raise NotImplementedError


def _node(name: str, kind: NodeType = NodeType.FILE, **kw: object) -> Node:
    base: dict[str, object] = dict(
        name=name.encode(), type=kind, mode=0o644, uid=1, gid=1, user=None, group=None,
        mtime_ns=1, atime_ns=1, ctime_ns=1, size=0,
    )  # fmt: skip
    base.update(kw)
    return Node(**base)  # type: ignore[arg-type]


def _point(reader: _Reader) -> BlobId:
    leaf = reader.put(
        Tree(
            (
                _node("a", size=10, inode=5, nlink=2, dev=1),
                _node("b", size=10, inode=5, nlink=2, dev=1),  # the same file: its bytes once
                _node("sparse", size=1000, holes=((100, 800),)),
                _node("s", NodeType.SYMLINK, link_target=b"a"),
            )
        )
    )
    mid = reader.put(Tree((_node("leaf", NodeType.DIR, subtree=leaf), _node("c", size=7))))
    return reader.put(Tree((_node("mid", NodeType.DIR, subtree=mid), _node("top", size=3))))


def test_streamed_count_matches_and_keeps_no_tree() -> None:
    reader = _Reader()
    root = _point(reader)
    cached = CachedTrees(reader)  # type: ignore[arg-type]
    selection = select(cached, root, ())
    loads = reader.tree_loads
    totals = count(cached, selection)
    assert reader.tree_loads == loads  # no decode: read from the JSON
    assert (totals.files, totals.dirs, totals.bytes_total, totals.bytes_needed) == (5, 2, 1030, 220)
    sub = count(cached, select(cached, root, ("mid/leaf",)))
    assert (sub.files, sub.dirs, sub.bytes_total, sub.bytes_needed) == (3, 1, 1020, 210)


def test_a_malformed_tree_is_reported_by_the_full_decoder() -> None:
    reader = _Reader()
    bad = BlobId(b"\x01" * 32)
    reader.blobs[bad] = b'{"nodes":[{"type":"file","size":"x"}],"v":1}'
    with pytest.raises(CorruptionError):
        count(reader, [Selected((), _node("d", NodeType.DIR, subtree=bad))])


def test_tree_cache_is_bounded_by_bytes() -> None:
    reader = _Reader()
    ids = [reader.put(Tree(tuple(_node(f"f{i}-{j}", size=1) for j in range(10)))) for i in range(20)]
    cached = CachedTrees(reader, budget=30_000)  # type: ignore[arg-type]
    for blob_id in ids:
        cached.load_tree(blob_id)
    assert 0 < cached.cached_bytes() <= 30_000
    loads = reader.tree_loads
    cached.load_tree(ids[-1])  # the most recent stays
    assert reader.tree_loads == loads
    cached.load_tree(ids[0])  # the oldest went
    assert reader.tree_loads == loads + 1
    cached.forget_tree(ids[0])
    assert cached.cached_bytes() <= 30_000
