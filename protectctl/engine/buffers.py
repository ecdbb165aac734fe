"""Reusable byte buffers for the hot paths (backup, restore).

Touching fresh memory is not free: every new 4 KiB page is a page fault, and on virtual
machines a fault costs microseconds, so a fresh 1 MiB buffer per chunk can cost as much as
compressing or decrypting the chunk. The engine therefore reuses its large buffers:

* `Scratch`: a growable buffer owned by one thread or one job at a time;
* `BufferPool`: scratch buffers handed between threads (the writer's chunk copies).

Buffers are anonymous mmaps: pages are faulted in only when first written, stay resident
for reuse, and a buffer sized for a 4 MiB worst case costs nothing until a chunk needs it.
"""

from __future__ import annotations

import mmap
import threading

_PAGE = mmap.PAGESIZE


class Scratch:
    """A reusable buffer that grows (never shrinks) to the largest size asked of it."""

    __slots__ = ("_map",)

    def __init__(self, size: int = 0) -> None:
        self._map: mmap.mmap | None = None
        if size:
            self.view(size).release()

    def view(self, size: int) -> memoryview:
        """A writable view of the first `size` bytes (previous content unspecified)."""
        if self._map is None or len(self._map) < size:
            # The old map is unmapped once the last view of it is released (no close():
            # a caller may still hold a view).
            self._map = mmap.mmap(-1, max(_round(size), _PAGE))
        return memoryview(self._map)[:size]


class BlobScratch:
    """The buffers one thread needs to read blobs without allocating: stored, plain, output."""

    __slots__ = ("out", "plain", "stored")

    def __init__(self) -> None:
        self.stored = Scratch()
        self.plain = Scratch()
        self.out = Scratch()


class BufferPool:
    """Scratch buffers for handing data between threads; thread-safe, bounded only by use."""

    def __init__(self) -> None:
        self._free: list[Scratch] = []
        self._lock = threading.Lock()

    def take(self) -> Scratch:
        with self._lock:
            return self._free.pop() if self._free else Scratch()

    def give(self, scratch: Scratch) -> None:
        with self._lock:
            self._free.append(scratch)


def _round(size: int) -> int:
    return (size + _PAGE - 1) // _PAGE * _PAGE
