"""Large files restored in parallel ranges (restore/ranges.py): byte-exact around holes, still
sparse, checked against the whole-file hash of each scheme; a damaged chunk fails the file."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import blake3
import pytest

from protectctl.engine.buffers import BlobScratch
from protectctl.engine.ids import BlobId
from protectctl.engine.tree import HashScheme, Node, NodeType, Tree, blocks_hash, extents_hash
from protectctl.restore import ranges
from protectctl.restore.fs import FsRestorer
from protectctl.restore.selection import Selected

KEY = b"k" * 32
KiB, MiB = 1 << 10, 1 << 20


def _hasher() -> blake3.blake3:
    return blake3.blake3(key=KEY)


def _id(data: bytes) -> BlobId:
    return BlobId(blake3.blake3(data, key=KEY).digest())


class _Repo:
    """Chunks in memory, with the repository's optional capabilities restore uses."""

    def __init__(self) -> None:
        self.blobs: dict[BlobId, bytes] = {}
        self.damaged: set[BlobId] = set()

    def put(self, data: bytes) -> BlobId:
        blob_id = _id(data)
        self.blobs[blob_id] = data
        return blob_id

    def load_tree(self, blob_id: BlobId) -> Tree:
        raise AssertionError("no trees here")

    def load_blob(self, blob_id: BlobId) -> bytes:
        return self.blobs[blob_id]

    def blob_size(self, blob_id: BlobId) -> int:
        return len(self.blobs[blob_id])

    def load_blob_into(self, blob_id: BlobId, scratch: BlobScratch, *, verify_id: bool = True) -> memoryview:
        data = self.blobs[blob_id]
        if blob_id in self.damaged:
            data = bytes([data[0] ^ 1]) + data[1:]
        if verify_id and _id(data) != blob_id:
            from protectctl.errors import CorruptionError

            raise CorruptionError("content does not match its id")
        view = scratch.out.view(len(data))
        view[:] = data
        return view

    def content_hasher(self) -> blake3.blake3:
        return _hasher()


def _file(repo: _Repo, name: str, size: int, holes: list[tuple[int, int]], scheme: HashScheme) -> tuple[Node, bytes]:
    """A node whose data (the bytes outside `holes`) is cut in chunks of 96-160 KiB."""
    rng = random.Random(name)
    content = bytearray(rng.randbytes(size))
    for start, length in holes:
        content[start : start + length] = bytes(length)
    data = b"".join(bytes(content[a : a + n]) for a, n, hole in ranges.segments(size, holes) if not hole)
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.randrange(96 * KiB, 160 * KiB)
        chunks.append(repo.put(data[pos : pos + step]))
        pos += step
    if scheme is HashScheme.CONTENT:
        digest = blake3.blake3(bytes(content), key=KEY).digest()
    elif scheme is HashScheme.EXTENTS:
        digest = extents_hash(_hasher(), size, holes, blake3.blake3(data, key=KEY).digest())
    else:
        pieces = [(len(repo.blobs[c]), bytes(c)) for c in chunks]
        digest = blocks_hash(_hasher(), size, holes, pieces)
    node = Node(
        name=name.encode(), type=NodeType.FILE, mode=0o640, uid=0, gid=0, user=None, group=None,
        mtime_ns=1_700_000_000_000_000_000, atime_ns=1_700_000_000_000_000_000, ctime_ns=0, size=size,
        chunks=tuple(chunks), holes=tuple(holes), content_hash=digest, hash_scheme=scheme,
    )  # fmt: skip
    return node, bytes(content)


def _restore(repo: _Repo, nodes: list[Node], target: Path) -> FsRestorer:
    target.mkdir()
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        restorer = FsRestorer(repo, repo.content_hasher, overwrite=False)
        restorer.run(fd, [Selected((), n) for n in nodes])
    finally:
        os.close(fd)
    return restorer


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Ranges of 512 KiB (so a few MiB make several), and a record of each range written."""
    monkeypatch.setattr(ranges, "RANGE_BYTES", 512 * KiB)
    monkeypatch.setattr(ranges, "INFLIGHT_BYTES", 2 * MiB)
    monkeypatch.setattr(ranges, "SPLIT_BELOW_JOBS", 1000)  # split every file, however busy the pool
    written: list[int] = []
    original = FsRestorer._write_range

    def spy(self: FsRestorer, job: object, part: ranges.Range) -> list[bytes | int]:
        written.append(part.index)
        return original(self, job, part)  # type: ignore[arg-type]

    monkeypatch.setattr(FsRestorer, "_write_range", spy)
    return written


def test_multi_range_files_with_holes_restore_exactly_and_stay_sparse(tmp_path: Path, small_ranges: list[int]) -> None:
    repo = _Repo()
    size = 6 * MiB
    holes = [(0, 300 * KiB), (1 * MiB, 1 * MiB + 4 * KiB), (3 * MiB + 8 * KiB, 1 * MiB), (5 * MiB, 1 * MiB)]
    files = [
        _file(repo, "extents.img", size, holes, HashScheme.EXTENTS),
        _file(repo, "content.img", size, holes, HashScheme.CONTENT),
        _file(repo, "blocks.img", size, holes, HashScheme.BLOCKS),
        _file(repo, "dense.bin", 3 * MiB + 123, [], HashScheme.CONTENT),
    ]
    restorer = _restore(repo, [n for n, _ in files], tmp_path / "out")
    report = restorer.report
    assert report.errors == [] and report.files == 4 and report.verified == 4
    assert len(small_ranges) >= 4 * 4  # every file went in several ranges
    hole_bytes = sum(length for _, length in holes)
    for node, content in files:
        path = tmp_path / "out" / node.name.decode()
        assert path.read_bytes() == content, node.name
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == node.mtime_ns
        if node.holes:  # not a byte more allocated than the data (a block of slack per extent)
            assert st.st_blocks * 512 <= size - hole_bytes + 16 * 4 * KiB, node.name
    assert restorer._budget.used == 0 and not restorer._big


@pytest.mark.parametrize("scheme", [HashScheme.EXTENTS, HashScheme.BLOCKS])
def test_a_damaged_chunk_fails_its_file_only(tmp_path: Path, small_ranges: list[int], scheme: HashScheme) -> None:
    repo = _Repo()
    bad, _ = _file(repo, "bad.img", 4 * MiB, [(MiB, MiB)], scheme)
    good, content = _file(repo, "good.img", 4 * MiB, [(MiB, MiB)], scheme)
    repo.damaged.add(bad.chunks[len(bad.chunks) // 2])
    restorer = _restore(repo, [bad, good], tmp_path / "out")
    assert len(restorer.report.errors) == 1 and restorer.report.errors[0].startswith("bad.img:")
    assert "partial file was removed" in restorer.report.errors[0]
    assert not (tmp_path / "out" / "bad.img").exists()
    assert (tmp_path / "out" / "good.img").read_bytes() == content
    assert restorer._budget.used == 0 and not restorer._big


def test_plan_covers_the_file_in_order() -> None:
    sizes = [300 * KiB] * 20
    holes = [(0, 10), (2 * MiB, 5 * MiB), (9 * MiB, 1 * MiB)]
    size = sum(sizes) + sum(h[1] for h in holes) + MiB
    holes.append((size - MiB, MiB))  # a hole at the end too
    plan = ranges.plan_ranges(size, holes, sizes, MiB)
    assert plan is not None and len(plan) >= 4
    pieces = [p for r in plan for p in r.pieces]
    assert pieces[0][0] == 0 and plan[0].start == 0 and plan[-1].end == size
    assert all(a[0] + a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous
    assert pieces[-1][0] + pieces[-1][1] == size
    assert all(a.end == b.start for a, b in zip(plan, plan[1:], strict=False))
    assert [r.first for r in plan] == sorted({r.first for r in plan})
    assert sum(len(r.sizes) for r in plan) == len(sizes)
    for r in plan:
        assert sum(n for _, n, hole in r.pieces if not hole) == r.nbytes
    assert ranges.plan_ranges(size, holes, sizes[:-1], MiB) is None  # chunks do not add up
    assert ranges.plan_ranges(MiB, [], [MiB], MiB) is None  # one range: not split
