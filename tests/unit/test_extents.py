"""The pure logic of block tracking: extent comparison, block layouts, the BLOCKS hash and format."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import blake3

from protectctl.agent.extents import (
    FIEMAP_EXTENT_DELALLOC,
    FIEMAP_EXTENT_ENCODED,
    FIEMAP_EXTENT_LAST,
    FIEMAP_EXTENT_SHARED,
    FIEMAP_EXTENT_UNWRITTEN,
    Extent,
    blocks_of,
    changed_ranges,
)
from protectctl.agent.journal import FileIdentity, Journal, JournalEntry, JournalWriter
from protectctl.agent.tracking import BigFiles, _hole_blocks, _previous_blocks, _spans
from protectctl.engine.ids import BlobId
from protectctl.engine.tree import HashScheme, Node, NodeType, Tree, blocks_hash, decode_tree, encode_tree

K = 4096
S = FIEMAP_EXTENT_SHARED


def test_identical_maps_have_no_changes_whatever_the_bookkeeping_flags() -> None:
    ref = [Extent(0, 100 * K, 64 * K, S), Extent(64 * K, 500 * K, 64 * K, S | FIEMAP_EXTENT_LAST)]
    cur = [Extent(0, 100 * K, 128 * K, S | FIEMAP_EXTENT_LAST)]  # merged in one record: same bytes
    assert changed_ranges(cur, ref, 128 * K) == [(64 * K, 64 * K)]  # ...but not the same physical run
    assert changed_ranges(ref, ref, 128 * K) == []


def test_a_copy_on_write_in_the_middle_of_an_extent_is_the_only_change() -> None:
    ref = [Extent(0, 1000 * K, 100 * K, S)]
    cur = [Extent(0, 1000 * K, 10 * K, S), Extent(10 * K, 7 * K, K, 0), Extent(11 * K, 1011 * K, 89 * K, S)]
    assert changed_ranges(cur, ref, 100 * K) == [(10 * K, K)]


def test_growth_holes_and_untrusted_extents() -> None:
    ref = [Extent(0, 1000 * K, 8 * K, 0)]
    grown = [Extent(0, 1000 * K, 8 * K, 0), Extent(8 * K, 50 * K, 8 * K, 0)]
    assert changed_ranges(grown, ref, 16 * K) == [(8 * K, 8 * K)]
    assert changed_ranges([], [], 16 * K) == []  # holes on both sides
    assert changed_ranges([Extent(0, 1000 * K, 8 * K, FIEMAP_EXTENT_DELALLOC)], ref, 8 * K) == [(0, 8 * K)]
    unwritten = [Extent(0, 1000 * K, 8 * K, FIEMAP_EXTENT_UNWRITTEN)]
    assert changed_ranges(unwritten, ref, 8 * K) == [(0, 8 * K)]  # written since: its flags differ


def test_encoded_extents_compare_as_whole_records() -> None:
    rec = Extent(0, 1000 * K, 32 * K, FIEMAP_EXTENT_ENCODED)
    assert changed_ranges([rec], [rec], 32 * K) == []
    moved = [
        Extent(0, 1000 * K, 16 * K, FIEMAP_EXTENT_ENCODED),
        Extent(16 * K, 1000 * K, 16 * K, FIEMAP_EXTENT_ENCODED),
    ]
    assert changed_ranges(moved, [rec], 32 * K) == [(0, 32 * K)]


def test_blocks_of_ranges() -> None:
    assert list(blocks_of([(0, 1), (4095, 2), (5 * K, 3 * K)], K)) == [0, 1, 5, 6, 7]
    assert list(blocks_of([(0, 0)], K)) == []


def _entry(chunks: int, holes: tuple[tuple[int, int], ...]) -> JournalEntry:
    ids = tuple(bytes([i]) * 32 for i in range(chunks))
    return JournalEntry(FileIdentity(1, 2, 0, 0, 0), ids, holes, b"h" * 32, HashScheme.BLOCKS)


def test_previous_block_layout_with_holes_and_a_short_tail() -> None:
    size = 4 * K + 100
    blocks = _previous_blocks(size, _entry(3, ((K, 2 * K),)), 2 * K)  # blocks: data, hole, data(100)... see below
    assert blocks is None  # a hole from K to 3K ends inside the second block: not a block layout
    blocks = _previous_blocks(size, _entry(2, ((2 * K, 2 * K),)), 2 * K)
    assert blocks == [(2 * K, b"\0" * 32), None, (100, b"\1" * 32)]
    assert _previous_blocks(size, _entry(3, ((2 * K, 2 * K),)), 2 * K) is None  # a chunk too many


def test_hole_blocks_are_blocks_no_extent_touches() -> None:
    extents = [Extent(K, 0, 10, 0), Extent(6 * K, 0, 2 * K, 0)]
    assert _hole_blocks(extents, 8 * K, 2 * K) == {1, 2}


def test_blocks_nodes_need_format_3_and_their_hash_covers_lengths_and_ids() -> None:
    chunk = BlobId(b"\1" * 32)
    node = Node(
        b"disk",
        NodeType.FILE,
        0o644,
        0,
        0,
        None,
        None,
        1,
        1,
        1,
        5,
        chunks=(chunk,),
        content_hash=b"\2" * 32,
        hash_scheme=HashScheme.BLOCKS,
    )
    encoded = encode_tree(Tree((node,)))
    assert encoded.endswith(b'"v":3}') and decode_tree(encoded).nodes[0] == node
    key = b"k" * 32
    one = blocks_hash(blake3.blake3(key=key), 5, (), [(5, bytes(chunk))])
    assert one != blocks_hash(blake3.blake3(key=key), 5, (), [(4, bytes(chunk))])
    assert one != blocks_hash(blake3.blake3(key=key), 5, ((0, 1),), [(5, bytes(chunk))])


def test_points_list_names_the_capture() -> None:
    import protectctl.cli.main  # noqa: F401  (the CLI modules load through it)
    from protectctl.cli.jobs import tracking_cell

    assert tracking_cell({}) == "-"
    assert tracking_cell({"snapshot": "btrfs", "tracking": "blocks"}) == "btrfs+blocks"
    assert tracking_cell({"snapshot": "none", "tracking": "off"}) == "none"


def test_the_journal_keeps_a_blocks_hash_and_its_start_time(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path / "j.db", repo_id="r", started_ns=10**18)
    entry = _entry(1, ())
    writer.add(b"", b"f", entry)
    writer.commit({"point_id": "p"})
    journal = Journal(tmp_path / "j.db", repo_id="r")
    assert journal.directory(b"")[b"f"] == entry
    assert journal.racy_after_ns is not None and journal.racy_after_ns < 10**18


def test_spans_are_runs_of_consecutive_blocks_capped() -> None:
    assert _spans([1, 2, 3, 5, 6, 9], 2) == [(1, 3), (3, 4), (5, 7), (9, 10)]
    assert _spans([], 4) == []


def _stored_whole(data: bytes, block: int, holes: set[int]) -> tuple[list[bytes], list[tuple[int, int]]]:
    """What reading every block gives: one id per block that is not a hole, holes merged."""
    ids: list[bytes] = []
    spans: list[tuple[int, int]] = []
    for index in range(-(-len(data) // block)):
        piece = data[index * block : (index + 1) * block]
        if index in holes:
            if spans and sum(spans[-1]) == index * block:
                spans[-1] = (spans[-1][0], spans[-1][1] + len(piece))
            else:
                spans.append((index * block, len(piece)))
        else:
            ids.append(blake3.blake3(piece).digest())
    return ids, spans


def test_reading_only_changed_blocks_stores_what_reading_everything_does(tmp_path: Path) -> None:
    """The tracked path keeps unchanged runs a run at a time: with holes then and now, a file
    that grew or shrank and a short last block, its chunks, holes and BLOCKS hash equal those
    of reading every block."""
    block = 4 * K
    rng = random.Random(3)
    key = b"k" * 32
    for _ in range(40):
        old_size = rng.randrange(1, 40) * block - rng.choice((0, 0, 100))
        old = bytearray(rng.randbytes(old_size))
        new = bytearray(old[: rng.randrange(old_size // 2, old_size + 1)] if rng.random() < 0.3 else old)
        new += rng.randbytes(rng.choice((0, 0, 5 * block + 7)))
        count, old_count = -(-len(new) // block), -(-old_size // block)
        old_holes = {i for i in range(old_count) if rng.random() < 0.15}
        holes = {i for i in range(count) if rng.random() < 0.15}
        for index in holes:  # a hole reads as zeros
            new[index * block : (index + 1) * block] = bytes(len(new[index * block : (index + 1) * block]))
        changed = {i for i in range(count) if rng.random() < 0.2}
        for index in changed:
            piece = new[index * block : (index + 1) * block]
            new[index * block : index * block + len(piece)] = rng.randbytes(len(piece))
        # blocks not called changed are unchanged (the extent maps' word), except new holes
        for index in range(min(count, old_count)):
            if index not in changed and index not in holes and index not in old_holes:
                new[index * block : (index + 1) * block] = old[index * block : (index + 1) * block][
                    : len(new[index * block : (index + 1) * block])
                ]
        old_ids, _ = _stored_whole(bytes(old), block, old_holes)
        ids = iter(old_ids)
        reused = [
            None if i in old_holes else (len(old[i * block : (i + 1) * block]), next(ids)) for i in range(old_count)
        ]
        path = tmp_path / "clone"
        path.write_bytes(new)
        archiver = SimpleNamespace(
            writer=SimpleNamespace(add=lambda kind, data: (blake3.blake3(data).digest(), True)),
            result=SimpleNamespace(bytes_read=0),
            repo=SimpleNamespace(content_hasher=lambda: blake3.blake3(key=key)),
        )
        big = BigFiles(
            SimpleNamespace(),  # type: ignore[arg-type]
            tmp_path,
            tmp_path / "refs",
            tracking=False,
            verify=False,
            min_size=1,
            block_size=block,
        )
        fd = os.open(path, os.O_RDONLY)
        try:
            content = big._changed_only(archiver, fd, len(new), reused, changed, holes)  # type: ignore[arg-type]
        finally:
            os.close(fd)
        want_ids, want_holes = _stored_whole(bytes(new), block, holes)
        assert list(content.chunks) == want_ids
        assert list(content.holes) == want_holes
        lengths = [len(new[i * block : (i + 1) * block]) for i in range(count) if i not in holes]
        pieces = list(zip(lengths, want_ids, strict=True))
        assert content.content_hash == blocks_hash(blake3.blake3(key=key), len(new), want_holes, pieces)
        assert big.stats.blocks_read + big.stats.blocks_reused == count - len(holes)


def test_the_blocks_hash_is_its_documented_byte_layout() -> None:
    """size, holes, then (u64 length, id) per chunk: computed without a step per chunk, the same bytes."""
    import struct

    pieces = [(16 << 10, bytes([i % 251]) * 32) for i in range(1000)] + [(100, b"\7" * 32)]
    holes = [(0, 4096), (1 << 20, 8192)]
    layout = b"protectctl/blocks-hash/1\0" + struct.pack("<QQQ", 123, len(holes), len(pieces))
    layout += b"".join(struct.pack("<QQ", start, length) for start, length in holes)
    layout += b"".join(struct.pack("<Q", length) + chunk for length, chunk in pieces)
    key = b"k" * 32
    assert blocks_hash(blake3.blake3(key=key), 123, holes, pieces) == blake3.blake3(layout, key=key).digest()


def _changed_by_cuts(current: list[Extent], reference: list[Extent], size: int) -> list[tuple[int, int]]:
    """The comparison by its definition: cut at every extent boundary, compare each piece."""

    def at(extents: list[Extent], offset: int) -> Extent | None:
        return next((e for e in extents if e.logical <= offset < e.end), None)

    from protectctl.agent.extents import _same

    points = sorted({0, size, *(p for e in (*current, *reference) for p in (e.logical, e.end) if 0 < p < size)})
    out: list[tuple[int, int]] = []
    for start, end in zip(points, points[1:], strict=False):
        if not _same(at(current, start), at(reference, start), start):
            if out and sum(out[-1]) == start:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((start, end - start))
    return out


def _random_extents(rng: random.Random, size: int, shared: list[int]) -> list[Extent]:
    out, pos = [], 0
    while pos < size + 8 * K and rng.random() < 0.9:
        pos += rng.choice((0, 0, K, 3 * K))  # holes between extents
        length = rng.randrange(1, 8) * K
        flags = rng.choice((0, 0, 0, S, FIEMAP_EXTENT_DELALLOC))
        physical = rng.choice(shared) + (pos % (8 * K)) if rng.random() < 0.7 else rng.randrange(10**6) * K
        out.append(Extent(pos, physical, length, flags))
        pos += length
    return out


def _rewritten(rng: random.Random, extents: list[Extent]) -> list[Extent]:
    """The same map with some extents split in two and some pieces moved (copy-on-write)."""
    out = []
    for e in extents:
        if e.length > K and rng.random() < 0.4:
            cut = rng.randrange(1, e.length // K) * K
            out += [
                Extent(e.logical, e.physical, cut, e.flags),
                Extent(e.logical + cut, e.physical + cut, e.length - cut, e.flags),
            ]
        else:
            out.append(e)
    return [Extent(e.logical, rng.randrange(10**6) * K, e.length, e.flags) if rng.random() < 0.2 else e for e in out]


def test_the_sweep_finds_what_cutting_at_every_boundary_finds() -> None:
    rng = random.Random(11)
    for _ in range(300):
        size = rng.randrange(1, 64) * K + rng.choice((0, 100))
        shared = [rng.randrange(1000) * K for _ in range(64)]  # physical starts both may map to
        current = _random_extents(rng, size, shared)
        reference = _rewritten(rng, current) if rng.random() < 0.5 else _random_extents(rng, size, shared)
        assert changed_ranges(current, reference, size) == _changed_by_cuts(current, reference, size)
