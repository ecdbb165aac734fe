"""Big files read, chunked, hashed and stored by a few threads while the walk goes on.

A big file's data path (read, FastCDC, keyed BLAKE3 of the content and of each chunk, zstd,
AES-GCM, the pack write) runs in C code that releases the GIL (measured: docs/performance.md),
but one file goes through it in order: the walk's thread reads, cuts and hashes while the
writer's threads compress. With only that, a tree of big files keeps about one core busy.
`FileReads` reads several big files at once, each in one of its threads with its own read
buffer, handing chunks to the writer (whose `add` is thread-safe; compression still goes
to the writer's pool).

The walk decides what is read ahead (`Archiver` for the files of one directory, `ParallelWalk`
for the big files its workers send back) and takes each result back in its own thread, where
the node is built, the journal written and the result counted exactly as for a file read in
place: only the file's content (`Content`, the same chunker and hashes over the same bytes)
comes from another thread, so trees and chunk ids do not depend on the parallelism.

Bounded: at most `window` files are submitted ahead of the walk, and each thread holds one
read buffer (twice the largest chunk: 8 MiB, touched as files need it); the writer bounds
the chunks in flight. A file that fails to read reports the same error as
in place; any other exception is raised in the walk's thread. `close` stops the threads
between two chunks.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protectctl.agent.archiver import Archiver, Content


class Stopped(Exception):
    """The reads were closed while a file was being read (the backup is stopping)."""


@dataclass(frozen=True, slots=True)
class FileRead:
    """What one read-ahead gives back: the content and fstat, or the error the walk reports."""

    content: Content | None = None
    st: os.stat_result | None = None
    bytes_read: int = 0
    error: OSError | None = None
    changed_type: bool = False  # not a regular file any more when opened


class FileReads:
    """A small pool of threads reading whole big files for one archiver."""

    def __init__(self, archiver: Archiver, threads: int, *, window: int | None = None) -> None:
        self._archiver = archiver
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="file-read")
        self._local = threading.local()
        self._ahead: dict[bytes, Future[FileRead]] = {}
        self._waiting: deque[bytes] = deque()  # chosen but not submitted yet (the window is full)
        self.window = window or 2 * threads
        self._stopping = False
        self.submitted = 0  # files read here (tests, measurements)

    def want(self, paths: list[bytes]) -> None:
        """Read these files ahead, in this order, keeping at most `window` submitted."""
        self._waiting.extend(paths)
        self._fill()

    def submit(self, path: bytes, on_done: Callable[[], None] | None = None) -> Future[FileRead]:
        """Read one file now (the caller bounds how many it submits)."""
        future = self._pool.submit(self._read, path)
        self._ahead[path] = future
        self.submitted += 1
        if on_done is not None:
            future.add_done_callback(lambda _: on_done())
        return future

    def take(self, path: bytes) -> FileRead | None:
        """The read of `path` if it was read ahead (waits for it), else None."""
        future = self._ahead.pop(path, None)
        if future is None:
            if path in self._waiting:  # chosen, not submitted yet: read it now, here
                self._waiting.remove(path)
            return None
        self._fill()
        return future.result()

    def pending(self) -> int:
        return len(self._ahead) + len(self._waiting)

    def drop_rest(self) -> None:
        """Forget what was read ahead and not taken (its file vanished or failed before its
        content was needed); waits for those reads, raises what is not an OSError."""
        self._waiting.clear()
        ahead, self._ahead = self._ahead, {}
        for future in ahead.values():
            future.result()

    def close(self) -> None:
        """Stop: reads running finish their current chunk and give up; waits for the threads."""
        self._stopping = True
        self._waiting.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead = {}

    def _fill(self) -> None:
        while self._waiting and len(self._ahead) < self.window:
            self.submit(self._waiting.popleft())

    def _read(self, path: bytes) -> FileRead:
        archiver = self._archiver
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None:  # the smallest buffer iter_reader takes: two of the largest chunk (8 MiB)
            buf = self._local.buf = mmap.mmap(-1, 2 * archiver._chunker.params.max_size)
        try:
            fd = archiver._open(path)
        except OSError as err:
            return FileRead(error=err)
        try:
            st = archiver._on_device(os.fstat(fd))
            if not stat.S_ISREG(st.st_mode):
                return FileRead(changed_type=True)
            content, got = archiver._chunk_file(fd, st, buf, self._check)
        except OSError as err:
            return FileRead(error=err)
        finally:
            os.close(fd)
        return FileRead(content, st, got)

    def _check(self) -> None:
        if self._stopping:
            raise Stopped
