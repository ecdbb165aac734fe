"""Small blobs are compressed in the caller's thread, large ones in the pool: interleaved, they
still land in the pack in the order they were added, and every one reads back."""

from __future__ import annotations

import os
from pathlib import Path

from protectctl.engine.repository import BlobKind, Repository
from protectctl.engine.writer import INLINE_MAX
from tests.unit.engine.conftest import PASSPHRASE, make_repo


def test_small_and_large_blobs_keep_their_order_and_read_back(tmp_path: Path) -> None:
    repo: Repository = make_repo(tmp_path / "repo")
    blobs = []
    for i in range(40):
        size = (INLINE_MAX + 1 + i * 997) if i % 3 == 0 else (1 + i * 61)
        blob = (b"text %d " % i) * (size // 8 + 1) if i % 2 else os.urandom(size)
        blobs.append(blob[:size])
    repo.pack_size = 1 << 30  # one pack: its record order is the add order
    with repo.writer(workers=2) as writer:
        ids = [writer.add(BlobKind.DATA, blob)[0] for blob in blobs]
    fresh = Repository.open(repo.storage, PASSPHRASE)
    assert [fresh.load_blob(i) for i in ids] == blobs
    index = fresh._loaded_index()
    offsets = [index.live[i].entry.offset for i in ids]
    assert len({index.live[i].pack for i in ids}) == 1
    assert offsets == sorted(offsets)
