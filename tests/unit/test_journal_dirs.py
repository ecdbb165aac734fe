"""The change journal's directory table and row carry-over, on real SQLite files."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from protectctl.agent.journal import FileIdentity, Journal, JournalEntry
from protectctl.engine.tree import HashScheme


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


def test_keys_are_text_when_utf8_and_raw_bytes_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    writer = Journal(path, repo_id="r1").begin()
    writer.add(b"d\xff", b"f\xfe", _entry(1))
    writer.add(b"d\xff", "café".encode(), _entry(2))
    writer.add(b"d", b"caf\xe9", _entry(3))
    sparse = replace(_entry(4), holes=((0, 1 << 50),), hash_scheme=HashScheme.EXTENTS)
    writer.add(b"d", b"sparse", sparse)
    writer.add_directory(b"d\xff", b"k" * 32, b"t" * 32)
    writer.commit({"point_id": "p1"})
    journal = Journal(path, repo_id="r1")
    assert journal.directory(b"d\xff") == {b"f\xfe": _entry(1), "café".encode(): _entry(2)}
    assert journal.directory(b"d") == {b"caf\xe9": _entry(3), b"sparse": sparse}
    assert journal.directory_tree(b"d\xff") == (b"k" * 32, b"t" * 32)
    journal.close()
    conn = sqlite3.connect(path)
    kinds = set(conn.execute("SELECT dir, typeof(dir), typeof(name) FROM files").fetchall())
    conn.close()
    # UTF-8 keys stay TEXT, as every earlier journal stored them (those journals stay usable).
    assert kinds == {
        (b"d\xff", "blob", "blob"),
        (b"d\xff", "blob", "text"),
        ("d", "text", "blob"),
        ("d", "text", "text"),
    }
