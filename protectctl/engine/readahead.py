"""Read-ahead for blob reads from packs on a remote store (s3): one ranged GET fetches a window
of the pack (the requested blob and the blobs after it, up to `window_bytes`), and the reads
that follow are served from it.

Why: on object storage a request costs tens of milliseconds whatever its size (measured on
SeaweedFS, loaded 2-core machine: 650 blob GETs of 135 KB on average took 37 ms each, so a
restore was bound by request latency, not bytes). A restore reads blobs in the order a backup
wrote them, so a pack's blobs are wanted one after another: a 4 MiB window turns ~30 GETs into
one (tests/bench/bench_s3.py). Windows end at a blob boundary (from the index), so a window
never reads past the blobs the pack holds.

Thread-safe: readers that want a window being fetched wait for that one GET instead of
issuing their own. Memory is bounded by `budget_bytes` of finished windows (least recently
used go first); a window evicted before all its blobs were read is simply fetched again.
Pack names are content hashes, so a cached window is never stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protectctl.engine.storage.base import ObjectKind, StorageBackend

DEFAULT_WINDOW = 4 << 20
DEFAULT_BUDGET = 64 << 20


@dataclass(slots=True, eq=False)
class _Window:
    pack: str
    start: int
    end: int
    data: bytes = b""
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def covers(self, offset: int, end: int) -> bool:
        return self.start <= offset and end <= self.end


class PackReadAhead:
    """`read(pack, offset, length)` for DATA objects through windows of `window_bytes`."""

    def __init__(
        self,
        storage: StorageBackend,
        blob_ends: Callable[[str], Sequence[int]],
        *,
        window_bytes: int = DEFAULT_WINDOW,
        budget_bytes: int = DEFAULT_BUDGET,
    ) -> None:
        self._storage = storage
        self._blob_ends = blob_ends  # pack -> the end offsets of its blobs, ascending
        self._window = window_bytes
        self._budget = budget_bytes
        self._mutex = threading.Lock()
        self._by_pack: dict[str, list[_Window]] = {}
        self._lru: OrderedDict[tuple[str, int], _Window] = OrderedDict()  # finished windows
        self._held = 0
        self.requests = 0  # GETs issued (for tests and benchmarks)

    def read(self, pack: str, offset: int, length: int) -> memoryview:
        """The bytes [offset, offset+length) of the pack; raises what the storage raises."""
        end = offset + length
        if length > self._window:
            self.requests += 1
            return memoryview(self._storage.get(ObjectKind.DATA, pack, offset, length))
        window, mine = self._claim(pack, offset, end)
        if mine:
            self._fetch(window)
        window.done.wait()
        if window.error is not None:
            raise window.error
        return memoryview(window.data)[offset - window.start : end - window.start]

    def _claim(self, pack: str, offset: int, end: int) -> tuple[_Window, bool]:
        with self._mutex:
            found = self._covering(pack, offset, end)
        if found is not None:
            return found, False
        window_end = self._window_end(pack, offset, end)  # outside the mutex: it may load the index
        with self._mutex:
            found = self._covering(pack, offset, end)
            if found is not None:
                return found, False
            window = _Window(pack, offset, window_end)
            self._by_pack.setdefault(pack, []).append(window)
            return window, True

    def _covering(self, pack: str, offset: int, end: int) -> _Window | None:
        for window in self._by_pack.get(pack, ()):
            if window.covers(offset, end) and window.error is None:
                if window.done.is_set():
                    self._lru.move_to_end((pack, window.start))
                return window
        return None

    def _window_end(self, pack: str, offset: int, end: int) -> int:
        """The furthest blob end within the window (at least `end`)."""
        limit = offset + self._window
        best = end
        for blob_end in self._blob_ends(pack):
            if blob_end > limit:
                break
            best = max(best, blob_end)
        return best

    def _fetch(self, window: _Window) -> None:
        try:
            self.requests += 1
            window.data = self._storage.get(ObjectKind.DATA, window.pack, window.start, window.end - window.start)
        except BaseException as err:
            window.error = err
            with self._mutex:
                self._drop(window)
            window.done.set()
            return
        with self._mutex:
            self._lru[(window.pack, window.start)] = window
            self._held += len(window.data)
            while self._held > self._budget and len(self._lru) > 1:
                _, old = self._lru.popitem(last=False)
                self._held -= len(old.data)
                self._drop(old)
        window.done.set()

    def _drop(self, window: _Window) -> None:
        windows = self._by_pack.get(window.pack, [])
        if window in windows:
            windows.remove(window)
        if not windows:
            self._by_pack.pop(window.pack, None)
