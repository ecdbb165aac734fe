"""Read-ahead windows for blob reads on a store whose requests are costly (engine/readahead.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from protectctl.engine.readahead import PackReadAhead
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import RepositoryError
from tests.unit.engine.conftest import PASSPHRASE, SMALL_CHUNKS, backup, random_files, restore


class CountingRemote:
    """A local store that says its requests are costly, and counts its DATA reads."""

    read_ahead_bytes = 128 << 10
    get_into = None  # no zero-copy local reads: every blob goes through `get`

    def __init__(self, inner: LocalStorage) -> None:
        self.inner = inner
        self.data_gets = 0

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind is ObjectKind.DATA:
            self.data_gets += 1
        return self.inner.get(kind, name, offset, length)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Repository, CountingRemote]]:
    storage = CountingRemote(LocalStorage(tmp_path / "repo"))
    repo = Repository.init(storage, PASSPHRASE, kdf_n=2**10, chunker=SMALL_CHUNKS, pack_size=256 << 10)  # type: ignore[arg-type]
    yield repo, storage
    repo.close()


def test_blobs_read_in_order_cost_one_request_per_window(remote: tuple[Repository, CountingRemote]) -> None:
    repo, storage = remote
    files = random_files(12, 40_000)
    point = backup(repo, files)
    fresh = Repository.open(storage, PASSPHRASE)  # type: ignore[arg-type]
    assert restore(fresh, point) == files
    blobs = sum(1 for _ in fresh._loaded_index().live)
    assert storage.data_gets * 3 <= blobs  # ~30 blobs of ~16 KiB, 128 KiB windows
    assert fresh.check(read_data=True).ok


def test_concurrent_readers_share_one_fetch_and_errors_are_not_kept() -> None:
    calls: list[tuple[int, int | None]] = []
    gate = threading.Event()
    fail = [True]

    class Slow:
        def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
            calls.append((offset, length))
            gate.wait(5)
            if fail[0]:
                fail[0] = False
                raise RepositoryError("transient")
            return bytes(range(256)) * 64  # 16 KiB

    ends = [1024 * i for i in range(1, 17)]
    ahead = PackReadAhead(Slow(), lambda pack: ends, window_bytes=8192, budget_bytes=1 << 20)  # type: ignore[arg-type]
    with pytest.raises(RepositoryError):
        gate.set()
        ahead.read("p", 0, 1024)
    gate.clear()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ahead.read, "p", 1024 * i, 1024) for i in range(4)]
        gate.set()
        got = [bytes(f.result()) for f in futures]
    window = bytes(range(256)) * 64
    assert calls[0] == (0, 8192)  # the window ends at the last blob end within 8 KiB
    assert len(calls) <= 1 + 4 and got == [window[1024 * i : 1024 * (i + 1)] for i in range(4)]
    before = len(calls)
    assert bytes(ahead.read("p", 2048, 1024)) == window[2048:3072]  # served from the cached window
    assert len(calls) == before


def test_the_budget_bounds_what_is_kept() -> None:
    class Store:
        gets = 0

        def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
            Store.gets += 1
            return bytes(length or 0)

    ahead = PackReadAhead(Store(), lambda pack: [4096, 8192], window_bytes=8192, budget_bytes=8192)  # type: ignore[arg-type]
    for pack in ("a", "b", "c"):
        ahead.read(pack, 0, 100)
    assert Store.gets == 3
    ahead.read("a", 0, 100)  # evicted: fetched again
    assert Store.gets == 4
    assert ahead._held <= 8192
