"""Racily clean files: a file rewritten (same size) within the timestamp granularity of the
sync that read it keeps its identity; the next sync must read it again, not reuse the old
content (agent/journal.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from protectctl.agent.archiver import ArchiveOptions, Archiver, ArchiveResult
from protectctl.agent.journal import Journal
from protectctl.agent.patterns import PathFilter
from protectctl.engine.repository import Repository
from protectctl.restore.run import restore_tree
from tests.integration.loopfs import fresh_dir
from tests.unit.engine.conftest import make_repo


class _Syncs:
    def __init__(self, src: Path, work: Path) -> None:
        self.src = src
        self.work = work
        self.repo: Repository = make_repo(work / "repo")
        self.journal_path = work / "state" / "journal.db"

    def sync(self) -> ArchiveResult:
        journal = Journal(self.journal_path, repo_id=self.repo.id)
        out = journal.begin()
        with self.repo.writer() as writer:
            result = Archiver(
                self.repo, writer, journal, out, ArchiveOptions(root=self.src, filter=PathFilter([], []))
            ).run()
        journal.close()
        out.commit({"point_id": "p"})
        return result

    def restored(self, result: ArchiveResult, name: str) -> Path:
        assert result.tree is not None
        target = self.work / name
        restore_tree(self.repo, result.tree, target)
        return target


def test_a_file_rewritten_within_the_same_second_as_its_sync_is_read_again(
    ext4_seconds_mount: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ext4 with whole-second timestamps: write, sync, rewrite (same size) in the same second.
    Without the racy check the second sync reuses the first content and the point is wrong."""
    monkeypatch.delenv("PROTECTCTL_RACY_SLACK_NS", raising=False)  # the default slack is under test
    for _ in range(5):  # a second boundary between write and rewrite spoils an attempt: retry
        src = fresh_dir(ext4_seconds_mount, "racy")
        syncs = _Syncs(src, tmp_path / src.name)
        while time.time() % 1 > 0.3:  # start early in a second: all of it fits in the rest
            time.sleep(0.02)
        (src / "f").write_bytes(b"first version")
        (src / "g").write_bytes(b"untouched")
        before = os.stat(src / "f")
        syncs.sync()
        (src / "f").write_bytes(b"later version")
        after = os.stat(src / "f")
        if (before.st_mtime_ns, before.st_ctime_ns) == (after.st_mtime_ns, after.st_ctime_ns):
            break
    else:
        pytest.skip("could not rewrite a file within one second five times (an overloaded machine)")
    second = syncs.sync()
    assert (syncs.restored(second, "second") / "f").read_bytes() == b"later version"
    # Once the previous sync lies far enough back, the file is trusted again (nothing read).
    monkeypatch.setenv("PROTECTCTL_RACY_SLACK_NS", "0")
    third = syncs.sync()
    assert third.files_read == 0 and third.files_reused == 2


def test_entries_changed_within_the_slack_of_the_last_sync_are_read_and_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 1000)
    syncs = _Syncs(src, tmp_path)
    syncs.sync()
    monkeypatch.setenv("PROTECTCTL_RACY_SLACK_NS", str(3600 * 10**9))  # everything is recent
    again = syncs.sync()
    assert again.files_read == 1 and again.bytes_read == 1000 and again.dirs_reused == 0
    monkeypatch.setenv("PROTECTCTL_RACY_SLACK_NS", "0")
    calm = syncs.sync()
    assert calm.files_read == 0 and calm.dirs_reused >= 1


def test_a_journal_without_a_start_time_trusts_its_entries(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "none.db", repo_id="r")
    assert journal.racy_after_ns is None
