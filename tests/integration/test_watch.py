"""The change journal's watcher (agent/watch.py): real fanotify, as root."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent import fanotify
from protectctl.agent.jobs import BackupResult, SourceJob, restore, run_backup
from protectctl.agent.watch import DIR, GONE, TREE, Cut, Watcher, read_header, read_records, request_cut, watch_dir
from protectctl.engine.repository import Repository
from tests.integration.test_filesystem_backup import PASS, Clock, make_job, snapshot_tree

_WHY = fanotify.unsupported()
pytestmark = [
    pytest.mark.skipif(_WHY is not None, reason=f"no fanotify here: {_WHY}"),
    pytest.mark.usefixtures("no_racy_slack"),
]


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    root = tmp_path / "src"
    root.mkdir()
    w = Watcher("g/m", root, tmp_path / "state")
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(5)


def _records(w: Watcher, start: int, cut: Cut) -> list[tuple[int, bytes]]:
    data = (watch_dir(w.state_dir, w.source) / "log").read_bytes()
    header = read_header(data)
    assert header is not None and header.generation == cut.generation
    found = read_records(data, max(start, header.size), cut.offset)
    assert found is not None
    return found


def test_cut_holds_every_change_made_before_it(watcher: Watcher) -> None:
    root = watcher.root
    first = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(first, Cut)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x")
    (root / "top").write_bytes(b"y")
    os.rename(root / "a" / "b", root / "a" / "c")
    os.chmod(root / "a", 0o700)
    cut = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(cut, Cut) and cut.generation == first.generation
    records = set(_records(watcher, first.offset, cut))
    assert {(DIR, b""), (TREE, b"a"), (DIR, b"a"), (GONE, b"a/b"), (TREE, b"a/c")} <= records
    # the file's directory, by the name it had when the watcher placed the event
    assert (DIR, b"a/b") in records or (DIR, b"a/c") in records
    # nothing outside the root, nothing twice within one cut
    assert len(records) == len(_records(watcher, first.offset, cut))
    again = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(again, Cut) and again.offset == cut.offset  # no change: nothing recorded


def test_no_watcher_is_a_reason(tmp_path: Path) -> None:
    assert request_cut(tmp_path, "g/none") == "the watcher is not running"


# -- syncs through the journal ---------------------------------------------------------------


def _point_extra(job: SourceJob, point_id: str) -> dict[str, object]:
    with Repository.open(job.storage, PASS) as repo:
        return dict(repo.load_point(point_id).extra)


def _restores_as(job: SourceJob, result: BackupResult, expected: object, target: Path) -> None:
    restore(job, result.time + timedelta(seconds=1), target=target)
    assert snapshot_tree(target) == expected


def test_sync_walks_only_what_changed_and_restores_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "keep" / "deep").mkdir(parents=True)
    (src / "keep" / "deep" / "k.txt").write_text("kept")
    (src / "work").mkdir()
    (src / "work" / "w.txt").write_text("one")
    (src / "hard").mkdir()
    (src / "hard" / "a").write_text("linked")
    os.link(src / "hard" / "a", src / "work" / "a-link")
    job = make_job(tmp_path, src, spec={"path": str(src), "change_journal": "watch"})
    clock = Clock()
    w = Watcher(job.source, src, job.state_dir)
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        first = run_backup(job, "sync", now=clock)
        extra = _point_extra(job, first.point_id)
        assert (extra["journal"], extra["walk"]) == ("on", "full")
        assert extra["walk_note"] == "a full reads everything"  # the first point is a full

        clock.tick(hours=1)
        (src / "work" / "w.txt").write_text("two!")
        (src / "work" / "new" / "n").mkdir(parents=True)
        (src / "work" / "new" / "n" / "f").write_text("fresh")
        os.rename(src / "keep" / "deep", src / "work" / "moved")
        with open(src / "hard" / "a", "a") as handle:  # through the other link
            handle.write(" more")
        second = run_backup(job, "sync", now=clock)
        extra = _point_extra(job, second.point_id)
        assert extra["walk"] == "journal", extra["walk_note"]
        assert second.files == first.files + 1
        _restores_as(job, second, snapshot_tree(src), tmp_path / "r2")

        clock.tick(hours=1)
        third = run_backup(job, "sync", now=clock)  # nothing changed: only the root is walked
        extra = _point_extra(job, third.point_id)
        assert extra["walk"] == "journal" and third.bytes_read == 0
        assert extra["walk_dirs"] <= 3  # the root and the directories with hard links
        _restores_as(job, third, snapshot_tree(src), tmp_path / "r3")
    finally:
        w.stop()
        thread.join(5)
    clock.tick(hours=1)
    (src / "keep" / "late.txt").write_text("written while no watcher ran")
    fourth = run_backup(job, "sync", now=clock)
    assert _point_extra(job, fourth.point_id)["walk_note"] == "the watcher is not running"
    _restores_as(job, fourth, snapshot_tree(src), tmp_path / "r4")
