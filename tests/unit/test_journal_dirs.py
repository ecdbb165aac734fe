"""The change journal's directory table and row carry-over, on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from protectctl.agent.journal import FileIdentity, Journal, JournalEntry


def _entry(size: int) -> JournalEntry:
    return JournalEntry(FileIdentity(1, 2, size, 3, 4), (b"\x01" * 32, b"\x02" * 32), (), b"h" * 32)


def _first(path: Path) -> None:
    writer = Journal(path, repo_id="r1").begin()
    writer.add(b"d", b"a", _entry(1))
    writer.add(b"d", b"b", _entry(2))
    writer.add(b"other", b"c", _entry(3))
    writer.add_directory(b"d", b"k" * 32, b"t" * 32)
    writer.commit({"point_id": "p1"})


def test_directory_tree_round_trip_and_invisible_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal%2f.db"  # the source's safe name may contain "%"
    assert Journal(path, repo_id="r1").directory_tree(b"d") is None
    _first(path)
    journal = Journal(path, repo_id="r1")
    assert journal.directory_tree(b"d") == (b"k" * 32, b"t" * 32)
    assert journal.directory_tree(b"other") is None
    assert sorted(journal.directory_chunks(b"d") or []) == [b"\x01" * 32 + b"\x02" * 32] * 2
    writer = journal.begin()
    writer.add_directory(b"d", b"x" * 32, b"y" * 32)
    writer.abort()
    assert Journal(path, repo_id="r1").directory_tree(b"d") == (b"k" * 32, b"t" * 32)
    assert Journal(path, repo_id="other").directory_tree(b"d") is None


def test_copy_directory_carries_rows_of_that_directory_only(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    _first(path)
    journal = Journal(path, repo_id="r1")
    writer = journal.begin()
    assert writer.copy_directory(b"d")
    writer.add_directory(b"d", b"k" * 32, b"t" * 32)
    journal.close()
    writer.commit({"point_id": "p2"})
    after = Journal(path, repo_id="r1")
    assert after.point_id == "p2"
    assert after.directory(b"d") == {b"a": _entry(1), b"b": _entry(2)}
    assert after.directory(b"other") == {}  # not carried over: not reused this run
    assert after.directory_tree(b"d") == (b"k" * 32, b"t" * 32)


def test_without_a_previous_journal_nothing_can_be_copied(tmp_path: Path) -> None:
    writer = Journal(tmp_path / "fresh.db", repo_id="r1").begin()
    assert not writer.copy_directory(b"d")
    writer.abort()
    assert not (tmp_path / "fresh.db.new").exists()


def test_a_journal_from_before_the_directory_table_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _first(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE dirs")
    conn.commit()
    conn.close()
    journal = Journal(path, repo_id="r1")
    assert journal.directory_tree(b"d") is None
    assert journal.directory(b"d") == {b"a": _entry(1), b"b": _entry(2)}
