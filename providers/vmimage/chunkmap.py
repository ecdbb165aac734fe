"""The image as fixed-size chunks (pure): which chunks an extent map touches, which are all
zeros, how they coalesce into reads, and the chunk map a sync keeps for the next one.

A chunk map holds one 32-byte blob id per chunk of the image, in order; all zeros stands for
a chunk that reads as zeros (stored as a hole, never as data). Chunks are aligned to the
image's clusters (a multiple of the cluster size, at least 64 KiB), so a rewritten cluster
dirties exactly one chunk and is read exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from protectctl.provider import BlobId

ID_SIZE = 32
ZERO_ID = bytes(ID_SIZE)
MIN_CHUNK = 64 << 10
STATE_FORMAT = 1


def chunk_size_for(cluster_size: int) -> int:
    """The chunk size of an image with clusters of `cluster_size` (0: raw, no clusters)."""
    cluster = cluster_size if cluster_size > 0 else 4096
    return max(cluster, -(-MIN_CHUNK // cluster) * cluster)


def chunk_count(size: int, chunk: int) -> int:
    return -(-size // chunk)


def touched(extents: Iterable[tuple[int, int, int]], chunk: int, count: int, *, bit: int = 1) -> set[int]:
    """Indexes of the chunks that any extent whose type has `bit` overlaps."""
    out: set[int] = set()
    for offset, length, kind in extents:
        if kind & bit and length > 0:
            out.update(range(offset // chunk, min(count, -(-(offset + length) // chunk))))
    return out


def all_zero(extents: Iterable[tuple[int, int, int]], chunk: int, size: int) -> set[int]:
    """Indexes of the chunks that lie wholly in extents reading as zeros (type bit 2)."""
    out: set[int] = set()
    for offset, length, kind in extents:
        if kind & 2:
            first = -(-offset // chunk)
            end = offset + length
            last = end // chunk if end < size else chunk_count(size, chunk)  # the tail chunk may be short
            out.update(range(first, last))
    return out


def read_ranges(indexes: Iterable[int], chunk: int, size: int, *, limit: int = 4 << 20) -> Iterator[tuple[int, int]]:
    """(offset, length) reads covering `indexes`, neighbours merged up to `limit` bytes."""
    start = end = -1
    for index in sorted(indexes):
        offset = index * chunk
        length = min(chunk, size - offset)
        if offset == end and end - start + length <= limit:
            end += length
            continue
        if start >= 0:
            yield start, end - start
        start, end = offset, offset + length
    if start >= 0:
        yield start, end - start


def layout(ids: bytes | bytearray, chunk: int, size: int) -> tuple[tuple[BlobId, ...], tuple[tuple[int, int], ...]]:
    """The file node of the image: its data chunks in order and its holes (zero chunks, merged)."""
    chunks: list[BlobId] = []
    holes: list[tuple[int, int]] = []
    for index in range(len(ids) // ID_SIZE):
        blob = bytes(ids[index * ID_SIZE : (index + 1) * ID_SIZE])
        if blob != ZERO_ID:
            chunks.append(BlobId(blob))
            continue
        offset = index * chunk
        length = min(chunk, size - offset)
        if holes and holes[-1][0] + holes[-1][1] == offset:
            holes[-1] = (holes[-1][0], holes[-1][1] + length)
        else:
            holes.append((offset, length))
    return tuple(chunks), tuple(holes)


@dataclass(frozen=True, slots=True)
class Tracked:
    """What the last saved point of an image left for the next sync (per source and repository)."""

    point_id: str
    bitmap: str | None  # the bitmap that has tracked writes since that point (qcow2)
    format: str
    virtual_size: int
    chunk_size: int
    ids: bytes  # the chunk map
    # raw images: (dev, inode, size, mtime_ns, ctime_ns) of the image and when the read began (ns)
    identity: tuple[int, ...] | None = None
    # a libvirt domain's: `bitmap` names its checkpoint (taken by `virsh backup-begin`), not a
    # bitmap of our own
    domain: str | None = None

    def header(self) -> dict[str, object]:
        return {
            "format_version": STATE_FORMAT,
            "point_id": self.point_id,
            "bitmap": self.bitmap,
            "format": self.format,
            "virtual_size": self.virtual_size,
            "chunk_size": self.chunk_size,
            "identity": list(self.identity) if self.identity is not None else None,
            "domain": self.domain,
        }


def load_tracked(path: Path) -> Tracked | None | str:
    """The tracked state, None when there is none, or why it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"its change-tracking state {path} cannot be read ({err.strerror})"
    head, sep, ids = raw.partition(b"\n")
    try:
        h = json.loads(head) if sep else None
        if not isinstance(h, dict) or h.get("format_version") != STATE_FORMAT:
            raise ValueError("unknown format")
        tracked = Tracked(
            str(h["point_id"]),
            h["bitmap"] if h.get("bitmap") is None else str(h["bitmap"]),
            str(h["format"]),
            int(h["virtual_size"]),
            int(h["chunk_size"]),
            ids,
            tuple(int(v) for v in h["identity"]) if h.get("identity") else None,
            None if h.get("domain") is None else str(h["domain"]),
        )
    except (ValueError, KeyError, TypeError):
        return f"its change-tracking state {path} is damaged"
    if tracked.chunk_size <= 0 or len(ids) != ID_SIZE * chunk_count(tracked.virtual_size, tracked.chunk_size):
        return f"its change-tracking state {path} is damaged (the chunk map has the wrong length)"
    return tracked


def save_tracked(path: Path, tracked: Tracked) -> None:
    """Crash-safe: a temporary file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(json.dumps(tracked.header(), sort_keys=True).encode() + b"\n")
        out.write(tracked.ids)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ZEROS = memoryview(bytes(4 << 20))


def is_zero(data: bytes | bytearray) -> bool:
    """All zeros? (a memcmp against a zero buffer, a count for longer data)"""
    n = len(data)
    return data == _ZEROS[:n] if n <= len(_ZEROS) else data.count(0) == n  # type: ignore[comparison-overlap]
