"""Content-defined chunking (FastCDC via pyfastcdc) with the repository's parameters.

Owns the chunk-size defaults and the secret gear seed plumbing. A `Chunker` makes a fresh
pyfastcdc object per call because those objects are not safe to share between threads.

Chunks are handed out as memoryviews, never copied: of a caller's buffer (`iter_buffer`),
or of a reusable read buffer (`iter_reader`), where a view is valid until the next chunk is
requested. The writer copies only chunks that turn out to be new.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import pyfastcdc

# pyfastcdc's mean chunk is avg_size + min_size (its docs, "cut-point skipping").
# Measured on 256 MiB of random data: avg_size 768 KiB + min 256 KiB gives a mean of
# 1.09 MiB (median 0.99 MiB), on target for ~1 MiB; avg_size 1 MiB gave a mean of 1.27 MiB.
# ~1 MiB keeps the index near 1 M entries per TiB while an edit in a big file still
# re-sends only ~1 MiB; min 256 KiB bounds per-chunk overhead, max 4 MiB bounds memory.
DEFAULT_MIN_SIZE = 256 << 10
DEFAULT_AVG_SIZE = 768 << 10
DEFAULT_MAX_SIZE = 4 << 20


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    min_size: int = DEFAULT_MIN_SIZE
    avg_size: int = DEFAULT_AVG_SIZE
    max_size: int = DEFAULT_MAX_SIZE


class Chunker:
    """Cuts byte streams into content-defined chunks, as memoryviews."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._seed = seed

    def _cdc(self) -> pyfastcdc.FastCDC:
        import pyfastcdc  # here: a sync that reads no file never pays for the import

        p = self.params
        return pyfastcdc.FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, seed=self._seed)

    def read_buffer(self) -> mmap.mmap:
        """A buffer for `iter_reader`; allocate once and reuse it for every file. An anonymous
        mmap: its pages cost memory only once a file large enough has been read into them."""
        return mmap.mmap(-1, max(3 * self.params.max_size, 8 << 20))

    def iter_buffer(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc().cut_buf(data):
            yield chunk.data

    def iter_reader(self, readinto: Callable[[memoryview], int], buf: bytearray | mmap.mmap) -> Iterator[memoryview]:
        """Chunks of what `readinto` delivers (0 = end), read into `buf` (see `read_buffer`).

        Each view is valid until the next chunk is requested. Boundaries equal those of
        `iter_buffer` over the whole stream: a chunk is handed out only when `max_size` bytes
        after its start were in the buffer (or the stream ended), which is all FastCDC looks at.
        """
        max_size = self.params.max_size
        if len(buf) < 2 * max_size:
            raise ValueError("iter_reader needs a buffer of at least twice the maximum chunk size")
        view = memoryview(buf)
        cdc = self._cdc()
        filled = 0
        eof = False
        while True:
            while not eof and filled < len(view):
                got = readinto(view[filled:])
                if got <= 0:
                    eof = True
                else:
                    filled += got
            if filled == 0:
                return
            done = 0
            for chunk in cdc.cut_buf(view[:filled]):
                if not eof and chunk.offset + max_size > filled:
                    break  # its cut point may lie beyond what is buffered: cut it again after a refill
                yield chunk.data
                done = chunk.offset + chunk.length
            if eof:
                return
            view[: filled - done] = view[done:filled]
            filled -= done

    def iter_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        yield from self.iter_reader(stream.readinto, self.read_buffer())  # type: ignore[attr-defined]

    def iter_file(self, path: Path) -> Iterator[memoryview]:
        with open(path, "rb") as handle:
            yield from self.iter_stream(handle)
