"""Reflink clones and extent maps: what block-level change tracking asks of the filesystem.

`clone(src_fd, dst_fd)` makes `dst` share every extent of `src` (FICLONE: XFS with reflink,
btrfs; the kernel writes back `src`'s dirty pages first, so the clone is `src` at one instant
and costs no space until either side is written). `extent_map(fd)` is the file's FIEMAP:
(logical, physical, length, flags) per extent.

`changed_ranges(current, reference, size)` is the comparison block tracking rests on: a
byte range is unchanged when both files map it to the same physical bytes, extent by extent
(a copy-on-write filesystem never writes a shared extent in place: a write to either file
moves that range of it to new blocks). Everything not proven shared is changed: holes on one
side only, extents whose location is unknown, delayed, inline or not block-aligned, and
encoded (compressed) extents unless both files hold the very same extent record. Holes on
both sides are unchanged. The check is conservative by construction: a range wrongly called
changed is merely read; a range is only called unchanged on the filesystem's own word.
"""

from __future__ import annotations

import fcntl
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)

FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_DATA_ENCRYPTED = 0x80
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_DATA_TAIL = 0x400
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_MERGED = 0x1000
FIEMAP_EXTENT_SHARED = 0x2000

# An extent with one of these cannot be compared by location: always "changed".
_UNTRUSTED = (
    FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL
)
# Flags that say nothing about the bytes (bookkeeping, or sharing itself).
_IGNORED = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED | FIEMAP_EXTENT_SHARED

_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]
_BATCH = 1024
_ALL = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.logical + self.length


def clone(src_fd: int, dst_fd: int) -> None:
    """Make `dst_fd`'s file share all of `src_fd`'s extents; raises OSError (EOPNOTSUPP: no
    reflink here, EXDEV: another filesystem, EINVAL: not supported for this file)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def extent_map(fd: int, *, sync: bool = False) -> list[Extent]:
    """The file's extents in logical order; raises OSError when FIEMAP is not supported."""
    out: list[Extent] = []
    start = 0
    buf = bytearray(_HEADER.size + _EXTENT.size * _BATCH)
    while True:
        _HEADER.pack_into(buf, 0, start, _ALL - start, FIEMAP_FLAG_SYNC if sync else 0, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _HEADER.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        records = memoryview(buf)[_HEADER.size : _HEADER.size + mapped * _EXTENT.size]
        out.extend(Extent(rec[0], rec[1], rec[2], rec[5]) for rec in _EXTENT.iter_unpack(records))
        last = out[-1]
        if last.flags & FIEMAP_EXTENT_LAST or last.end <= start:
            return out
        start = last.end


def changed_ranges(current: Sequence[Extent], reference: Sequence[Extent], size: int) -> list[tuple[int, int]]:
    """(offset, length) ranges of [0, size) of the file mapped by `current` not proven equal to the
    reference mapped by `reference` (see the module docstring), merged and in order. One sweep
    over both maps (sorted and disjoint, as FIEMAP gives them): a fragmented file's tens of
    thousands of extents cost a pass, not a search per boundary."""
    out: list[tuple[int, int]] = []
    i = j = 0
    n, m = len(current), len(reference)
    pos = 0
    while pos < size:
        while i < n and current[i].logical + current[i].length <= pos:
            i += 1
        while j < m and reference[j].logical + reference[j].length <= pos:
            j += 1
        a = current[i] if i < n else None
        b = reference[j] if j < m else None
        end = size  # the next boundary of either map after pos
        if a is not None:
            if a.logical > pos:
                end, a = min(end, a.logical), None
            else:
                end = min(end, a.logical + a.length)
        if b is not None:
            if b.logical > pos:
                end, b = min(end, b.logical), None
            else:
                end = min(end, b.logical + b.length)
        if not _same(a, b, pos):
            if out and out[-1][0] + out[-1][1] == pos:
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((pos, end - pos))
        pos = end
    return out


def _same(a: Extent | None, b: Extent | None, offset: int) -> bool:
    if a is None or b is None:
        return a is None and b is None  # a hole on both sides reads as zeros on both
    if (a.flags | b.flags) & _UNTRUSTED:
        return False
    if (a.flags & ~_IGNORED) != (b.flags & ~_IGNORED):
        return False
    if a.flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED):
        # A compressed extent's bytes are not laid out linearly: only the same record is the same data.
        return (a.logical, a.physical, a.length) == (b.logical, b.physical, b.length)
    return a.physical + (offset - a.logical) == b.physical + (offset - b.logical)


def blocks_of(ranges: Sequence[tuple[int, int]], block: int) -> Iterator[int]:
    """The indexes of the `block`-sized blocks that `ranges` touch, ascending, each once."""
    last = -1
    for offset, length in ranges:
        if length <= 0:
            continue
        first = max(offset // block, last + 1)
        for index in range(first, (offset + length - 1) // block + 1):
            yield index
            last = index
