"""The change journal's crash-safe commit and the hole-skipping reader, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import blake3

from protectctl.agent.journal import FileIdentity, Journal, JournalEntry
from protectctl.agent.sparse import DataReader


def _entry(size: int) -> JournalEntry:
    return JournalEntry(FileIdentity(1, 2, size, 3, 4), (b"\x01" * 32, b"\x02" * 32), ((10, 20),), b"h" * 32)


def test_journal_invisible_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "j" / "docs%2fhome.repo.db"
    journal = Journal(path, repo_id="r1")
    writer = journal.begin()
    writer.add(b"sub", b"a", _entry(5))
    assert Journal(path, repo_id="r1").directory(b"sub") == {}  # not committed: old (empty) journal
    writer.commit({"point_id": "p1"})
    reopened = Journal(path, repo_id="r1")
    assert reopened.point_id == "p1" and reopened.directory(b"sub") == {b"a": _entry(5)}
    # An abandoned next journal leaves the committed one as it was.
    nxt = reopened.begin()
    nxt.add(b"sub", b"a", _entry(6))
    nxt.abort()
    assert Journal(path, repo_id="r1").directory(b"sub") == {b"a": _entry(5)}
    # Bound to its repository: another repository id sees nothing.
    assert Journal(path, repo_id="other").directory(b"sub") == {}


def test_reader_skips_holes_and_hashes_data_only(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as handle:
        handle.seek(1 << 20)
        handle.write(b"data" * 1024)
        handle.truncate(4 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = blake3.blake3()
        reader = DataReader(fd, 4 << 20, hasher)
        data = b""
        while chunk := reader.read(1 << 16):
            data += chunk
    finally:
        os.close(fd)
    assert data.startswith(b"data") and len(data) < 1 << 20
    assert reader.holes[0] == (0, 1 << 20) and reader.holes[-1][0] + reader.holes[-1][1] == 4 << 20
    # Holes cost nothing to hash: the digest is of the data bytes; the hole map completes it.
    assert hasher.digest() == blake3.blake3(data).digest()
