"""Upload rate limiting: a token bucket and a storage wrapper that applies it.

Like restic's limiter, throttling is a wrapper implementing the same storage Protocol, so
no backend has to know about it. Only writes are throttled (the policy caps the upload);
reads pass through. The cap applies only while `window(now)` says so (e.g. office hours).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from protectctl.engine.storage.base import ObjectInfo, ObjectKind, StorageBackend, discard_object


class TokenBucket:
    """Allow `rate_bps` bytes per second on average, with bursts up to `burst_bytes`."""

    def __init__(
        self,
        rate_bps: int,
        *,
        burst_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_bps <= 0:
            raise ValueError("rate_bps must be positive")
        self.rate_bps = rate_bps
        # One second of traffic as burst: smooth enough for a pack of a few MiB.
        self.burst_bytes = burst_bytes if burst_bytes is not None else rate_bps
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst_bytes)
        self._stamp = clock()
        self._mutex = threading.Lock()

    def consume(self, nbytes: int) -> float:
        """Block until `nbytes` may pass; returns the seconds waited."""
        with self._mutex:
            now = self._clock()
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._stamp) * self.rate_bps)
            self._stamp = now
            # Going into debt lets a pack larger than the burst pass after a proportional wait.
            self._tokens -= nbytes
            wait = -self._tokens / self.rate_bps if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


def always(_: datetime) -> bool:
    return True


def utc_now() -> datetime:
    return datetime.now(UTC)


class ThrottledStorage:
    """A StorageBackend whose writes are capped at `rate_bps` while `window(now)` is true."""

    def __init__(
        self,
        inner: StorageBackend,
        rate_bps: int,
        *,
        window: Callable[[datetime], bool] | None = None,
        now: Callable[[], datetime] = utc_now,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.inner = inner
        self.bucket = bucket if bucket is not None else TokenBucket(rate_bps)
        self._window = window if window is not None else always
        self._now = now
        self.waited_s = 0.0

    @property
    def put_parallelism(self) -> int:
        return int(getattr(self.inner, "put_parallelism", 1))

    @property
    def read_parallelism(self) -> int:
        return int(getattr(self.inner, "read_parallelism", 1))

    @property
    def read_ahead_bytes(self) -> int:  # reads are not throttled: keep the store's read-ahead
        return int(getattr(self.inner, "read_ahead_bytes", 0))

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        if self._window(self._now()):
            self.waited_s += self.bucket.consume(len(data))
        self.inner.put(kind, name, data)

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(kind, name, offset, length)

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        return self.inner.list(kind)

    def delete(self, kind: ObjectKind, name: str) -> None:
        self.inner.delete(kind, name)

    def discard(self, kind: ObjectKind, name: str) -> None:
        discard_object(self.inner, kind, name)

    def exists(self, kind: ObjectKind, name: str) -> bool:
        return self.inner.exists(kind, name)

    def describe(self) -> str:
        return f"{self.inner.describe()} (throttled to {self.bucket.rate_bps} B/s)"
