"""The pure parts of browsing: paths and patterns, byte ranges of stored files, trees read in brief,
diff and versions over trees in memory, by-time names, the mount's chunk cache."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from protectctl.browse import ops
from protectctl.browse.mount import ChunkCache, point_names
from protectctl.browse.paths import BrowsePathError, Pattern, point_relative, split_path
from protectctl.browse.view import FileContent, PointTrees
from protectctl.engine.ids import BlobId
from protectctl.engine.names import name_text
from protectctl.engine.points import Point, PointStats
from protectctl.engine.tree import Node, NodeType, Tree, decode_tree, encode_tree


class Memory:
    """Trees and blobs by id, in memory; counts what is loaded."""

    def __init__(self) -> None:
        self.blobs: dict[BlobId, bytes] = {}
        self.loaded: list[BlobId] = []

    def put(self, data: bytes) -> BlobId:
        blob = BlobId(len(self.blobs).to_bytes(32, "big"))
        self.blobs[blob] = data
        return blob

    def tree(self, *nodes: Node) -> BlobId:
        return self.put(encode_tree(Tree(tuple(nodes))))

    def load_blob(self, blob_id: BlobId) -> bytes:
        self.loaded.append(blob_id)
        return self.blobs[blob_id]

    def load_tree(self, blob_id: BlobId) -> Tree:
        return decode_tree(self.load_blob(blob_id))

    def blob_size(self, blob_id: BlobId) -> int:
        return len(self.blobs[blob_id])


def _file(
    name: bytes,
    content: bytes = b"",
    *,
    mode: int = 0o644,
    mtime: int = 0,
    chunks: tuple[BlobId, ...] = (),
    holes: tuple[tuple[int, int], ...] = (),
    size: int | None = None,
) -> Node:
    return Node(
        name,
        NodeType.FILE,
        mode,
        0,
        0,
        None,
        None,
        mtime,
        0,
        0,
        len(content) if size is None else size,
        chunks=chunks,
        holes=holes,
        content_hash=content or None,
    )


def _dir(name: bytes, subtree: BlobId) -> Node:
    return Node(name, NodeType.DIR, 0o755, 0, 0, None, None, 0, 0, 0, 0, subtree=subtree)


T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _point(i: int, tree: BlobId) -> Point:
    return Point(f"{i:08x}" * 4, "g/m", T0 + timedelta(hours=i), "sync", None, tree, PointStats(), True)


def test_paths_relative_or_absolute_as_protected() -> None:
    assert point_relative("/srv/docs/a/b", "/srv/docs") == "a/b"
    assert point_relative("/srv/docs", "/srv/docs/") == ""
    assert point_relative("/srv/docsx/a", "/srv/docs") == "srv/docsx/a"  # not under the root: relative
    assert point_relative("/etc/hostname", "/") == "etc/hostname"
    assert point_relative("a/b", "/srv") == "a/b"
    assert split_path("/srv/docs/x/./y/", "/srv/docs") == (b"x", b"y")
    assert split_path("caf\udcc3", None) == (b"caf\xc3",)  # argv bytes that are not UTF-8
    with pytest.raises(BrowsePathError, match="leaves the recovery point"):
        split_path("a/../../etc", None)


def test_patterns_match_names_or_whole_paths() -> None:
    by_name = Pattern.parse("*.conf")
    assert by_name.matches("a.conf", "etc/x/a.conf") and not by_name.matches("a.confx", "a.confx")
    by_path = Pattern.parse("etc/*/hosts")
    assert by_path.matches("hosts", "etc/net/hosts") and not by_path.matches("hosts", "hosts")
    absolute = Pattern.parse("/srv/docs/etc/*", "/srv/docs")
    assert absolute.matches("x", "etc/x")
    with pytest.raises(BrowsePathError):
        Pattern.parse("")


def test_file_content_reads_any_range_around_chunks_and_holes() -> None:
    rng = random.Random(15)
    memory = Memory()
    # 3 data extents around 2 holes, data cut in uneven chunks
    layout = [(0, 1000, False), (1000, 5000, True), (6000, 3000, False), (9000, 2000, True), (11000, 123, False)]
    logical = bytearray()
    data = bytearray()
    for _, length, hole in layout:
        piece = bytes(length) if hole else rng.randbytes(length)
        logical += piece
        if not hole:
            data += piece
    cuts = [0, 700, 1900, 2500, 4123]
    chunks = tuple(memory.put(bytes(data[a:b])) for a, b in zip(cuts, cuts[1:], strict=False))
    holes = tuple((start, length) for start, length, hole in layout if hole)
    node = _file(b"f", size=len(logical), chunks=chunks, holes=holes)
    content = FileContent(memory, node)
    for _ in range(300):
        offset = rng.randrange(0, len(logical) + 10)
        size = rng.randrange(0, 4000)
        assert content.read(offset, size) == bytes(logical[offset : offset + size])
    assert b"".join(content.chunks_in_order()) == bytes(logical)
    memory.loaded.clear()
    assert content.read(1000, 5000) == bytes(5000)  # all hole: nothing fetched
    assert memory.loaded == []
    assert content.chunk_after(0) == chunks[1] and content.chunk_after(len(logical) - 1) is None


def test_briefs_read_what_the_full_decoder_reads() -> None:
    memory = Memory()
    names = [b"plain", b'quo"te', b"back\\slash", "unicod\u00e9".encode(), b"bytes\xff\xfe", b"sub"]
    nodes = [_file(n) for n in names[:-1]] + [_dir(b"sub", memory.tree(_file(b"x")))]
    trees = PointTrees(memory)
    for tree in (memory.tree(*nodes), memory.tree(*nodes[:1], nodes[-1])):
        full = [
            (name_text(n.name), n.type.value, n.subtree.hex().encode() if n.subtree else None)
            for n in memory.load_tree(tree).nodes
        ]
        assert trees.briefs(tree) == full


def test_diff_and_versions_over_trees() -> None:
    memory = Memory()
    shared = memory.tree(*(_file(f"s{i}".encode(), b"same") for i in range(3)))
    one = memory.tree(_dir(b"shared", shared), _file(b"a", b"v1"), _file(b"gone", b"g"), _file(b"m", b"x"))
    new_dir = memory.tree(_file(b"inner", b"i"))
    two = memory.tree(_dir(b"new", new_dir), _dir(b"shared", shared), _file(b"a", b"v2"), _file(b"m", b"x", mode=0o600))
    three = memory.tree(
        _dir(b"new", new_dir), _dir(b"shared", shared), _file(b"a", b"v2", mtime=5), _file(b"m", b"x", mode=0o600)
    )
    points = [_point(0, one), _point(1, two), _point(2, three), _point(3, one)]
    trees = PointTrees(memory)
    memory.loaded.clear()
    changes = ops.diff(trees, "g/m", points[0], points[1], None)
    assert changes.added == [(b"new",), (b"new", b"inner")] and changes.removed == [(b"gone",)]
    assert changes.modified == [((b"a",), ("content",)), ((b"m",), ("mode",))]
    assert shared not in memory.loaded  # identical subtrees are skipped by id
    assert ops.diff(trees, "g/m", points[1], points[2], None).modified == [((b"a",), ("mtime",))]
    history = ops.versions(trees, "g/m", points, (b"a",), None)
    assert [(v.first.id, v.last.id, v.points) for v in history.versions] == [
        (points[0].id, points[0].id, 1),
        (points[1].id, points[2].id, 2),
        (points[3].id, points[3].id, 1),
    ]
    gone = ops.versions(trees, "g/m", points, (b"gone",), None)
    assert [v.first.id for v in gone.versions] == [points[0].id, points[3].id]  # back after an absence
    with pytest.raises(ops.NotInPointError):
        ops.versions(trees, "g/m", points, (b"never",), None)


def test_find_searches_shared_subtrees_once() -> None:
    memory = Memory()
    shared = memory.tree(*(_file(f"f{i}.conf".encode()) for i in range(5)))
    points = [_point(i, memory.tree(_dir(b"etc", shared), _file(f"only{i}.conf".encode()))) for i in range(4)]
    trees = PointTrees(memory)
    memory.loaded.clear()
    found = ops.find(ops.Finder(trees, Pattern.parse("*.conf")), points)
    assert memory.loaded.count(shared) == 1
    by_path = {m.path: m for m in found}
    assert len(by_path[b"etc/f3.conf"].points) == 4 and [p.id for p in by_path[b"only2.conf"].points] == [points[2].id]


def test_by_time_names_and_the_bounded_chunk_cache() -> None:
    tree = BlobId(bytes(32))
    a, c = _point(0, tree), _point(1, tree)
    b = Point("f" * 32, a.source, a.time, a.kind, None, tree, a.stats, True)
    later = Point("e" * 32, a.source, a.time + timedelta(microseconds=5), a.kind, None, tree, a.stats, True)
    names = point_names([a, b, later, c])
    assert list(names) == [
        f"2026-12-01T00:00:00.000000Z-{a.id[:8]}",
        "2026-12-01T00:00:00.000000Z-ffffffff",
        "2026-12-01T00:00:00.000005Z",
        "2026-12-01T01:00:00Z",
    ]
    loads: list[BlobId] = []
    blobs = {BlobId(bytes([i]) * 32): bytes(100) for i in range(10)}
    cache = ChunkCache(lambda blob: loads.append(blob) or blobs[blob], limit_bytes=350)
    for blob in blobs:
        cache.get(blob)
        cache.get(blob)
    assert len(loads) == 10 and cache.size_bytes <= 350
