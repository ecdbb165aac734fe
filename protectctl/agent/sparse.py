"""Read a file's data without inflating its holes.

`DataReader` is a stream of the file's *data* bytes only: it asks the filesystem where data
lies (SEEK_DATA/SEEK_HOLE) and skips the holes, recording them as (offset, length). So a
100 GiB sparse image with 1 GiB written is read, chunked and stored as 1 GiB, and restore
recreates the holes. While reading it hashes the data bytes only: a hole costs nothing,
however long (the caller turns that digest and the hole map into the node's EXTENTS hash,
see engine/tree.py; hashing a 1 PiB hole as zeros would take hours).

Reading is capped at the size seen when the file was opened: a file growing during the
backup is stored as it was at that size; one shrinking ends early (its logical size is
what was read). Either way the journal keeps the pre-read identity, so the next sync sees
the change and reads the file again.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Protocol


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


class DataReader:
    """A file-like `readinto` over the data segments of `fd`, from offset 0."""

    def __init__(
        self,
        fd: int,
        size: int,
        hasher: Hasher,
        on_read: Callable[[int], None] | None = None,
        *,
        detect_holes: bool = True,
    ) -> None:
        self.fd = fd
        self.limit = size
        self.hasher = hasher
        self.holes: list[tuple[int, int]] = []
        self.pos = 0  # logical offset
        self.bytes_read = 0
        self._data_end = 0  # end of the current data segment
        self._seekable = detect_holes  # False: treat the whole file as data
        self._eof = False
        self._on_read = on_read

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill `buffer` with the next data bytes; 0 at the end."""
        view = memoryview(buffer)
        filled = 0
        while filled < len(view) and not self._eof:
            if self.pos >= self._data_end and not self._next_segment():
                break
            want = min(len(view) - filled, self._data_end - self.pos)
            got = os.preadv(self.fd, [view[filled : filled + want]], self.pos)
            if got == 0:  # shrank under us
                self._eof = True
                self.limit = self.pos
                break
            self.hasher.update(view[filled : filled + got])
            self.pos += got
            filled += got
        self.bytes_read += filled
        if self._on_read is not None and filled:
            self._on_read(filled)
        return filled

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(size if size >= 0 else 1 << 20)
        n = self.readinto(buffer)
        return bytes(buffer[:n])

    def _next_segment(self) -> bool:
        """Move to the next data segment, recording the hole before it; False at the end."""
        if self.pos >= self.limit:
            self._finish()
            return False
        start = self._seek(os.SEEK_DATA, self.pos)
        if start is None or start >= self.limit:
            self._finish()
            return False
        if start > self.pos:
            self._hole(self.pos, start - self.pos)
            self.pos = start
        end = self._seek(os.SEEK_HOLE, start)
        self._data_end = min(end if end is not None else self.limit, self.limit)
        return True

    def _seek(self, whence: int, offset: int) -> int | None:
        if not self._seekable:
            return offset if whence == os.SEEK_DATA else self.limit
        try:
            return os.lseek(self.fd, offset, whence)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after offset
                return None
            if err.errno in (errno.EINVAL, errno.ENOTSUP):  # filesystem without hole reporting
                self._seekable = False
                return offset if whence == os.SEEK_DATA else self.limit
            raise

    def _finish(self) -> None:
        if self.pos < self.limit:
            self._hole(self.pos, self.limit - self.pos)
            self.pos = self.limit
        self._eof = True

    def _hole(self, offset: int, length: int) -> None:
        self.holes.append((offset, length))
