"""Allocator settings for the processes that move file content (backup, restore).

The engine allocates and frees buffers of 0.25-4 MiB (chunks, compressed records) at a
high rate from several threads. With glibc's defaults two things inflate peak RSS:

* the *dynamic* mmap threshold: once a large mmapped block is freed (scrypt's 32 MiB work
  area when the repository is opened), glibc raises the threshold to that size, so every
  later chunk buffer comes from the heap, where fragmentation keeps freed memory resident;
* one arena per thread (up to 8 x cores): each seal/restore thread grows its own heap.

`tune_malloc()` fixes the threshold (which also turns the dynamic adjustment off) and caps
the arenas, through `mallopt(3)` via ctypes. Environment variables (MALLOC_ARENA_MAX, ...)
would only work if set before the interpreter starts; mallopt works at any time, and is
called before the repository is opened (before scrypt). It changes allocation placement
only, never data; on a libc without mallopt (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# Blocks of at least this size are mmapped and handed back to the kernel when freed. Chunks
# are 256 KiB to 4 MiB, so chunk buffers never linger in a fragmented heap.
MMAP_THRESHOLD = 256 << 10
TRIM_THRESHOLD = 1 << 20
ARENA_MAX = 2

_done = False
_lock = threading.Lock()


def tune_malloc() -> bool:
    """Apply the settings once per process; True when the C library accepted them."""
    global _done
    with _lock:
        if _done:
            return True
        try:
            # The interpreter's own symbols include its C library's (no ldconfig lookup).
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = all(
            mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_ARENA_MAX, ARENA_MAX),
            )
        )
        _done = ok
        return ok
