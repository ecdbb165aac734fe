"""Content-defined chunking (FastCDC via pyfastcdc) with the repository's parameters.

Owns the chunk-size defaults and the secret gear seed plumbing. A `Chunker` makes a fresh
pyfastcdc object per call because those objects are not safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    """Cuts byte streams into content-defined chunks; every chunk is returned as bytes."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._seed = seed

    def _cdc(self) -> pyfastcdc.FastCDC:
        p = self.params
        return pyfastcdc.FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, seed=self._seed)

    def iter_buffer(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        for chunk in self._cdc().cut_buf(data):
            yield bytes(chunk.data)

    def iter_stream(self, stream: BinaryIO) -> Iterator[bytes]:
        # cut_stream reuses its buffer: copy each chunk before the next is cut.
        for chunk in self._cdc().cut_stream(stream):
            yield bytes(chunk.data)

    def iter_file(self, path: Path) -> Iterator[bytes]:
        with open(path, "rb") as handle:
            yield from self.iter_stream(handle)
