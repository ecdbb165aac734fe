"""A blob stored at another zstd level (`BlobWriter.add(level=)`, `store_content(compression="fast")`)
is the same record format: it reads back whatever the level, small (inline) or large (pool)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protectctl.agent.archive import RepositorySink
from protectctl.engine.repository import BlobKind, Repository
from protectctl.engine.writer import INLINE_MAX
from tests.unit.engine.conftest import PASSPHRASE, make_repo


def test_blobs_at_any_level_read_back(tmp_path: Path) -> None:
    repo: Repository = make_repo(tmp_path / "repo")
    text = os.urandom(64).hex().encode() * 8000  # compressible, ~1 MiB
    blobs = [(text[:100], 1), (text, 1), (text[7:], 19), (text[:INLINE_MAX], 2), (text[3:], None)]
    with repo.writer(workers=2) as writer:
        ids = [writer.add(BlobKind.DATA, blob, level=level)[0] for blob, level in blobs]
        with pytest.raises(ValueError, match="zstd level 0"):
            writer.add(BlobKind.DATA, b"x" * 10, level=0)
        sink = RepositorySink(repo, writer)
        chunks = sink.store_content(text[11:] * 3, compression="fast")
    fresh = Repository.open(repo.storage, PASSPHRASE)
    assert [fresh.load_blob(i) for i in ids] == [blob for blob, _ in blobs]
    assert b"".join(fresh.load_blob(c) for c in chunks) == text[11:] * 3
    assert fresh.blob_entry(ids[1]).length < len(text) // 2  # compressed at level 1 too
