"""engine/prefetch.py: order kept, errors handed back, GETs in flight bounded."""

from __future__ import annotations

import threading
import time

from protectctl.engine.prefetch import fetch_in_order
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError


class _Store:
    def __init__(self, parallelism: int) -> None:
        self.read_parallelism = parallelism
        self.in_flight = 0
        self.most = 0
        self._lock = threading.Lock()

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(0.002 * (int(name) % 3))  # finish out of order
        with self._lock:
            self.in_flight -= 1
        if name == "7":
            raise ObjectMissingError("gone")
        return name.encode()


def test_results_come_in_order_with_errors_handed_back_and_bounded_in_flight() -> None:
    for parallelism, limit in ((1, None), (8, None), (8, 3)):
        store = _Store(parallelism)
        names = [str(i) for i in range(40)]
        got = list(fetch_in_order(store, ObjectKind.POINTS, names, limit=limit))  # type: ignore[arg-type]
        assert [n for n, _ in got] == names
        assert all(data == name.encode() for name, data in got if name != "7")
        assert isinstance(dict(got)["7"], ObjectMissingError)
        assert store.most <= (limit or parallelism)
