"""A large file restored in ranges, on several threads at once (restore/fs.py).

`plan_ranges` splits a file's chunk list into ranges of whole chunks (at least `RANGE_BYTES`
of data each) and says where each lands in the file: a range's span runs from the end of the
previous range's data to the end of its own, so the holes between are its own too, and the
last span ends at the file's size. Chunk lengths come from the repository's index (nothing
is read to plan). Each range is then fetched, decrypted, decompressed and written with
pwrite into the pre-sized file by a pool thread; zstd, BLAKE3 and the writes run outside the
GIL (measured: AES-GCM does not scale with threads, but it is the cheapest step), so ranges of
one file use every core.

The whole-file hash of a CONTENT or EXTENTS node is a keyed BLAKE3 of the data in file order,
which cannot be computed in pieces: `OrderedHash` feeds it in order. The range whose
predecessors are all hashed (the head) hashes its own data as it writes it; a range that
finishes ahead of its turn keeps nothing, and the thread that completes the prefix hashes it
from the file it was written to (read back from the page cache through a reused buffer). So
the restore checks the same hash over the bytes in the file, and no thread waits for another.
`ByteBudget` bounds what is in flight: a range takes its bytes before it is queued and gives
them back once its data is hashed (or written, when there is nothing to hash in order).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from protectctl.engine.tree import Hasher
from protectctl.errors import RestoreError

# Data of one range (whole chunks; with ~1 MiB chunks, ~8 of them); a file is split only when
# it makes two ranges or more. Module attributes, read when used (tests make them small).
RANGE_BYTES = 8 << 20
# A file is split only while fewer file-pool jobs than this are queued or running, i.e. while
# a core would otherwise idle (one huge file, or the last large ones). When many large files
# are restored, one file per thread already keeps every core busy, and splitting them too
# only added memory and system time (bench_backup 1 GiB: +47 MiB RSS, ~+10 % system time, no
# faster, with 8 ranges of 8 MiB in flight and copies kept for the in-order hash).
SPLIT_BELOW_JOBS = os.cpu_count() or 1
# Range data in flight at once, all files together (taken when a range is queued, given back
# once it is hashed): one range per core, the work being CPU-bound; more only grew the RSS
# (each thread's decode buffers are faulted in: +30 MiB at 64 MiB in flight) with no gain.
INFLIGHT_BYTES = min(64 << 20, max(2, SPLIT_BELOW_JOBS) * RANGE_BYTES)

_ZEROS = bytes(1 << 20)


@dataclass(frozen=True, slots=True)
class Range:
    index: int
    first: int  # its first chunk, an index into the node's chunks
    sizes: tuple[int, ...]  # the plaintext length of each of its chunks (from the index)
    pieces: tuple[tuple[int, int, bool], ...]  # (offset, length, is_hole) of its span, in order
    start: int  # the file offset its span starts at
    end: int  # and ends at

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)


def segments(size: int, holes: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_hole) covering [0, size) in order; raises RestoreError on bad holes."""
    pos = 0
    for start, length in sorted(holes):
        if start < pos or start + length > size:
            raise RestoreError("stored holes overlap or exceed the file")
        if start > pos:
            yield pos, start - pos, False
        if length:
            yield start, length, True
        pos = start + length
    if pos < size:
        yield pos, size - pos, False


def plan_ranges(
    size: int, holes: Sequence[tuple[int, int]], sizes: Sequence[int], range_bytes: int
) -> list[Range] | None:
    """The ranges of a file of `size` with `holes` whose chunks are `sizes` long; None when it
    makes fewer than two ranges or its chunks do not add up to its data (the one-thread path
    then says what is wrong)."""
    layout = list(segments(size, holes))
    if sum(sizes) != sum(length for _, length, hole in layout if not hole):
        return None
    groups: list[tuple[int, int]] = []  # (first chunk, count)
    first, acc = 0, 0
    for i, length in enumerate(sizes):
        acc += length
        if acc >= range_bytes:
            groups.append((first, i + 1 - first))
            first, acc = i + 1, 0
    if first < len(sizes):
        if groups and acc < range_bytes // 2:  # a short tail joins the last range
            last_first, _ = groups.pop()
            groups.append((last_first, len(sizes) - last_first))
        else:
            groups.append((first, len(sizes) - first))
    if len(groups) < 2:
        return None
    ranges: list[Range] = []
    seg = 0  # the segment the next span starts in
    seg_used = 0  # bytes of it already given to earlier spans
    start = 0
    for index, (chunk, count) in enumerate(groups):
        chunk_sizes = tuple(sizes[chunk : chunk + count])
        want = sum(chunk_sizes)  # data bytes this span covers
        last = index == len(groups) - 1
        pieces: list[tuple[int, int, bool]] = []
        while seg < len(layout):
            offset, length, hole = layout[seg]
            offset, length = offset + seg_used, length - seg_used
            if hole:
                if not last and want == 0:
                    break  # the holes after a range's data belong to the next one
                pieces.append((offset, length, True))
                seg, seg_used = seg + 1, 0
                continue
            if want == 0 and not last:
                break
            take = min(length, want)
            pieces.append((offset, take, False))
            want -= take
            if take == length:
                seg, seg_used = seg + 1, 0
            else:
                seg_used += take
        end = size if last else (pieces[-1][0] + pieces[-1][1] if pieces else start)
        ranges.append(Range(index, chunk, chunk_sizes, tuple(pieces), start, end))
        start = end
    return ranges


def hash_zeros(hasher: Hasher, length: int) -> None:
    while length:
        step = min(length, len(_ZEROS))
        hasher.update(memoryview(_ZEROS)[:step])
        length -= step


class ByteBudget:
    """Bytes in flight, at most `limit` (one request larger than the limit passes alone)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            while self._used and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    @property
    def used(self) -> int:
        return self._used


class OrderedHash:
    """A hasher fed range by range in file order, whatever order the ranges finish in.

    The head range (every range before it hashed) hashes its data as it writes it. A range
    written ahead of its turn keeps nothing: when its turn comes, the thread that completed
    the prefix hashes it with `hash_back` (read back from the file just written, through a
    reused buffer; copies kept in fresh memory cost more in page faults than they saved)."""

    def __init__(self, hasher: Hasher, hash_back: Callable[[int], None], release: Callable[[int], None]) -> None:
        self.hasher = hasher
        self.broken = False  # a range failed: the hash no longer matters, keep the order only
        self._hash_back = hash_back  # hashes range `index` from the file
        self._release = release  # gives a range's bytes back once they are hashed
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, int] = {}  # range index -> its bytes

    def is_head(self, index: int) -> bool:
        """Every range before `index` is hashed: this one may hash its data as it goes (until
        its `done`, no other range can become the head)."""
        with self._lock:
            return self._next == index

    def done(self, index: int, hashed: bool, nbytes: int) -> None:
        """Range `index` is written (`hashed`: by the head, as it went). Hashes every range
        waiting after it, if it is the head; else it waits for its turn."""
        with self._lock:
            if index != self._next:
                self._waiting[index] = nbytes
                return
        while True:
            if not hashed and not self.broken:
                self._hash_back(index)
            self._release(nbytes)
            with self._lock:
                self._next += 1
                index = self._next
                waiting = self._waiting.pop(index, None)
                if waiting is None:
                    return
            hashed, nbytes = False, waiting
