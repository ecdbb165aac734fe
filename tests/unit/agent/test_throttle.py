"""Token bucket and throttled storage, with a fake clock (no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from protectctl.agent.throttle import ThrottledStorage, TokenBucket
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_bucket_caps_average_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.consume(500)
    # 5000 bytes at 1000 B/s with a 1000-byte burst: about 4 s.
    assert 3.9 <= clock.t <= 4.1


def test_storage_throttles_only_inside_window(tmp_path: Path) -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, burst_bytes=100, clock=clock, sleep=clock.sleep)
    inside = [True]
    storage = ThrottledStorage(
        LocalStorage(tmp_path),
        100,
        window=lambda _: inside[0],
        bucket=bucket,
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    storage.put(ObjectKind.DATA, "aa11", b"x" * 300)
    assert clock.t == 2.0
    inside[0] = False
    storage.put(ObjectKind.DATA, "aa22", b"x" * 300)
    assert clock.t == 2.0
    assert storage.get(ObjectKind.DATA, "aa22") == b"x" * 300
    assert {i.name for i in storage.list(ObjectKind.DATA)} == {"aa11", "aa22"}


def test_the_throttle_keeps_the_stores_read_hints(tmp_path: Path) -> None:
    """Only writes are capped: a throttled s3 store keeps its read-ahead and read parallelism."""

    class Hinted(LocalStorage):
        read_ahead_bytes = 4 << 20
        read_parallelism = 16

    throttled = ThrottledStorage(Hinted(tmp_path), 1 << 20)
    assert (throttled.read_ahead_bytes, throttled.read_parallelism) == (4 << 20, 16)
    assert ThrottledStorage(LocalStorage(tmp_path), 1 << 20).read_ahead_bytes == 0
