"""The multi-core first backup (agent/workers.py) builds byte-identical trees whatever the
parallelism: the same tree ids for parallelism 1 (this process) and 2 (worker processes) on a
tree with hard links, xattrs, sparse, big and small files, symlinks, empty and excluded
directories; the journal it writes lets the next sync reuse everything; restore is exact."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from protectctl import workerproc
from protectctl.agent import archiver, workers
from protectctl.agent.archiver import ArchiveOptions, Archiver, ArchiveResult
from protectctl.agent.changes import Changes, JournalWalk
from protectctl.agent.journal import Journal
from protectctl.agent.patterns import PathFilter
from protectctl.engine.repository import Repository
from protectctl.restore.run import restore_tree
from tests.unit.engine.conftest import make_repo

pytestmark = pytest.mark.usefixtures("no_racy_slack")  # files written right before: trusted next time


def _build(src: Path) -> None:
    for d in range(6):
        sub = src / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(40):
            (src / f"d{d}" / f"f{i:03}.txt").write_bytes(b"line %d of %d\n" % (i, d) * (i + 1))
        (sub / "same.txt").write_bytes(b"duplicate content\n" * 50)  # one blob, six files
    (src / "empty").mkdir()
    (src / "skip").mkdir()
    (src / "skip" / "x").write_text("excluded")
    (src / "big.bin").write_bytes(os.urandom(300_000) + b"z" * 900_000)  # chunked by the parent
    with open(src / "sparse.img", "wb") as f:  # holes: read by the parent
        f.seek(3 << 20)
        f.write(b"data after a hole")
        f.truncate(8 << 20)
    (src / "d0" / "link1").write_bytes(b"hard linked\n" * 10)
    os.link(src / "d0" / "link1", src / "d5" / "link2")
    os.symlink("d0/f000.txt", src / "sym")
    os.setxattr(src / "d1" / "f001.txt", "user.tag", b"value")
    os.setxattr(src / "d2", "user.dir", b"on a directory")


def _backup(repo: Repository, src: Path, journal: Path, parallelism: int) -> tuple[ArchiveResult, Journal]:
    book = Journal(journal, repo_id=repo.id)
    out = book.begin()
    options = ArchiveOptions(root=src, filter=PathFilter([], ["skip/"]), parallelism=parallelism)
    with repo.writer() as writer:
        result = Archiver(repo, writer, book, out, options).run()
    book.close()
    out.commit({"point_id": f"p{parallelism}", "source": "test"})
    return result, Journal(journal, repo_id=repo.id)


def _rows(journal: Path, tables: tuple[str, ...] = ("dirs", "subtotals")) -> dict[str, set[tuple[object, ...]]]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        return {table: set(db.execute(f"SELECT * FROM {table}")) for table in tables}


def test_parallel_first_backup_builds_the_serial_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    try:
        _build(src)
    except OSError as err:  # pragma: no cover - a tmp without user xattrs
        pytest.skip(f"cannot build the tree here: {err}")
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setattr(workers, "SPAWN_AFTER_FILES", 0)  # workers from the first task on
    started: list[int] = []
    real_close = workers.ParallelWalk.close

    def counting_close(self: workers.ParallelWalk) -> None:
        started.append(self.started)
        real_close(self)

    monkeypatch.setattr(workers.ParallelWalk, "close", counting_close)
    serial, _ = _backup(repo, src, tmp_path / "j-serial", 1)  # settles the directories' atimes too
    serial, _ = _backup(repo, src, tmp_path / "j-serial2", 1)
    parallel, journal = _backup(repo, src, tmp_path / "j-parallel", 2)
    assert started == [2]
    assert parallel.tree == serial.tree
    assert (parallel.files, parallel.dirs, parallel.bytes_total) == (serial.files, serial.dirs, serial.bytes_total)
    assert parallel.errors == [] and serial.errors == []
    assert parallel.linked_dirs == serial.linked_dirs == {b"d0", b"d5"}  # the change journal's hard-link dirs
    # the same directory and subtotal rows as the serial walk: a journal walk reuses what it knows
    journal.close()
    rows = _rows(tmp_path / "j-parallel")
    assert rows == _rows(tmp_path / "j-serial2") and len(rows["subtotals"]) == 14
    assert ("", serial.files, serial.dirs, serial.bytes_total) in rows["subtotals"]
    journal = Journal(tmp_path / "j-parallel", repo_id=repo.id)

    # the journal written by the parallel walk lets the next sync reuse every directory, unread
    out = journal.begin()
    with repo.writer() as writer:
        again = Archiver(repo, writer, journal, out, ArchiveOptions(root=src, filter=PathFilter([], ["skip/"]))).run()
    out.abort()
    journal.close()
    assert again.tree == serial.tree and again.bytes_read == 0

    assert parallel.tree is not None
    restore_tree(repo, parallel.tree, tmp_path / "out")
    for path in src.rglob("*"):
        if path.is_file() and not path.is_symlink() and "skip" not in path.parts:
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert os.stat(tmp_path / "out" / "d0" / "link1").st_ino == os.stat(tmp_path / "out" / "d5" / "link2").st_ino
    assert os.getxattr(tmp_path / "out" / "d2", "user.dir") == b"on a directory"

    # a change journal's walk right after it walks only the changed directory and its ancestors
    (src / "d3" / "f007.txt").write_bytes(b"changed\n")
    os.listdir(src / "d3")  # settles the directory's atime
    journal = Journal(tmp_path / "j-parallel", repo_id=repo.id)
    out = journal.begin(in_place=True)
    walk = JournalWalk(Changes({b"d3"}, set(), set(), dirty={b"", b"d3"}), journal, out, repo)
    options = ArchiveOptions(root=src, filter=PathFilter([], ["skip/"]), unchanged=walk)
    with repo.writer() as writer:
        synced = Archiver(repo, writer, journal, out, options).run()
    out.abort()
    journal.close()
    assert walk.walked == {b"", b"d3"} and synced.files_read == 1
    assert (synced.files, synced.dirs) == (serial.files, serial.dirs)


def test_small_first_backups_start_no_process_and_workers_that_cannot_start_leave_the_work_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(5):
            (src / f"d{d}" / f"f{i}").write_text(f"{d}/{i}\n")
    repo = make_repo(tmp_path / "repo")

    def no_process(self: workers.ParallelWalk) -> None:
        raise AssertionError("a small first backup started a worker process")

    with monkeypatch.context() as patch:  # below SPAWN_AFTER_FILES: the walk runs here, no process starts
        patch.setattr(workers.ParallelWalk, "_spawn", no_process)
        _backup(repo, src, tmp_path / "j-small", 2)
    monkeypatch.setattr(workers, "SPAWN_AFTER_FILES", 0)
    monkeypatch.setattr(workers, "PARENT_WORKS_WHILE_STARTING", False)
    monkeypatch.setattr(workerproc, "BOOT", "import sys; sys.exit(3)")  # e.g. an interpreter without protectctl
    serial, _ = _backup(repo, src, tmp_path / "j-serial", 1)
    parallel, _ = _backup(repo, src, tmp_path / "j-parallel", 2)
    assert parallel.tree == serial.tree and parallel.files == 15 and not parallel.errors


def test_big_files_read_in_threads_build_the_serial_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs and `full` (a journal: the serial walk) read a directory's big files in threads
    (agent/filereads.py) with parallelism > 1 (a sync its new ones, a `full` all): the same
    tree as one thread, changed files beside them; a file that vanishes before its turn is
    reported as in place."""
    import shutil
    import threading

    from protectctl.agent import filereads

    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    for i in range(5):  # several chunks each (the test repository's chunks are 4-64 KiB)
        (src / "big" / f"b{i}.bin").write_bytes(os.urandom(40_000) + bytes([i]) * 200_000)
    (src / "big" / "small.txt").write_text("small\n")
    repo = make_repo(tmp_path / "repo")
    _backup(repo, src, tmp_path / "j-settle", 1)  # settles the directories' atimes
    # a first backup whose walk ends with big files read in threads, after the workers were ready
    workers_ready = threading.Event()
    real_receive, real_read = workers.ParallelWalk._receive, filereads.FileReads._read

    def receive(self: workers.ParallelWalk, timeout: float | None) -> None:
        real_receive(self, timeout)
        if self._workers and all(w.ready for w in self._workers):
            workers_ready.set()

    def read_late(self: filereads.FileReads, path: bytes) -> filereads.FileRead:
        workers_ready.wait(30)
        return real_read(self, path)

    with monkeypatch.context() as patch:
        patch.setattr(workers, "SPAWN_AFTER_FILES", 0)
        patch.setattr(workers.ParallelWalk, "_receive", receive)
        patch.setattr(filereads.FileReads, "_read", read_late)
        parallel_first, _ = _backup(repo, src, tmp_path / "j0", 2)
    first, _ = _backup(repo, src, tmp_path / "j1", 1)
    assert parallel_first.tree == first.tree
    shutil.copy(tmp_path / "j1", tmp_path / "j2")
    with open(src / "big" / "b1.bin", "r+b") as f:  # changed in place
        f.seek(100_000)
        f.write(b"changed" * 1000)
    with open(src / "big" / "b3.bin", "ab") as f:  # grown
        f.write(os.urandom(70_000))
    (src / "big" / "b5.bin").write_bytes(os.urandom(90_000))  # new
    (src / "big" / "b6.bin").write_bytes(os.urandom(80_000))  # new
    os.listdir(src / "big")  # settles the directory's atime before both syncs

    submitted: list[int] = []
    real_close = filereads.FileReads.close

    def counting_close(self: filereads.FileReads) -> None:
        submitted.append(self.submitted)
        real_close(self)

    monkeypatch.setattr(filereads.FileReads, "close", counting_close)
    monkeypatch.setattr(archiver, "READ_AHEAD_MIN_BYTES", 0)  # these files are small: read ahead anyway
    serial, _ = _backup(repo, src, tmp_path / "j1", 1)
    threaded, _ = _backup(repo, src, tmp_path / "j2", 2)
    assert submitted == [2]  # the new big files; the changed and grown ones are read in place
    assert threaded.tree == serial.tree != first.tree
    assert (threaded.files_read, threaded.bytes_read) == (serial.files_read, serial.bytes_read)

    # a `full` reads every big file in threads; one vanishing before its turn is an error, as in place
    def full(journal: str, parallelism: int) -> ArchiveResult:
        book = Journal(tmp_path / journal, repo_id=repo.id)
        out = book.begin()
        options = ArchiveOptions(root=src, filter=PathFilter([], []), verify_all=True, parallelism=parallelism)
        real_read = Archiver._read_ahead

        def vanish_first(self: Archiver, entries: list[object], here: object) -> None:
            if self.result.files == 0:  # scanned (lstat) but not opened yet
                (src / "big" / "b0.bin").unlink(missing_ok=True)
            real_read(self, entries, here)  # type: ignore[arg-type]

        with monkeypatch.context() as patch, repo.writer() as writer:
            patch.setattr(Archiver, "_read_ahead", vanish_first)
            result = Archiver(repo, writer, book, out, options).run()
        out.abort()
        book.close()
        return result

    data = (src / "big" / "b0.bin").read_bytes()
    threaded_full = full("j2", 2)
    (src / "big" / "b0.bin").write_bytes(data)
    serial_full = full("j1", 1)
    assert threaded_full.errors == serial_full.errors == ["big/b0.bin: vanished during the backup"]
    assert threaded_full.files == serial_full.files == 7 and threaded_full.silent_changes == 0


def test_a_sync_captures_a_new_subtree_like_a_first_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync that meets a directory its journal knows nothing in or below captures it with the
    parallel walk (workers once it holds enough files): the serial sync's tree; a no-change sync
    never builds a parallel walk (no process, no pipe)."""
    import shutil

    src = tmp_path / "src"
    (src / "old").mkdir(parents=True)
    (src / "old" / "a.txt").write_text("kept\n")
    repo = make_repo(tmp_path / "repo")
    _backup(repo, src, tmp_path / "j1", 1)
    shutil.copy(tmp_path / "j1", tmp_path / "j2")
    for d in range(archiver.NEW_SUBTREE_DIRS):  # looks big: this many subdirectories
        sub = src / "new" / f"n{d}"
        sub.mkdir(parents=True)
        for i in range(20):
            (sub / f"f{i}.txt").write_bytes(b"new file %d in %d\n" % (i, d) * (i + 1))
    (src / "new" / "big.bin").write_bytes(os.urandom(150_000))
    os.link(src / "new" / "n0" / "f1.txt", src / "new" / "n2" / "link")
    for d in [src, *src.rglob("*")]:
        if d.is_dir():
            os.listdir(d)  # settles the directories' atimes before both syncs
    monkeypatch.setattr(workers, "SPAWN_AFTER_FILES", 0)
    started: list[int] = []
    real_close = workers.ParallelWalk.close

    def counting_close(self: workers.ParallelWalk) -> None:
        started.append(self.started)
        real_close(self)

    monkeypatch.setattr(workers.ParallelWalk, "close", counting_close)
    serial, _ = _backup(repo, src, tmp_path / "j1", 1)
    parallel, journal = _backup(repo, src, tmp_path / "j2", 2)
    assert started == [2]  # one walk for the new subtree, its workers
    assert parallel.tree == serial.tree and parallel.files == serial.files == 1 + 8 * 20 + 2
    assert parallel.linked_dirs == serial.linked_dirs == {b"new/n0", b"new/n2"}
    journal.close()
    assert _rows(tmp_path / "j2") == _rows(tmp_path / "j1")  # the new subtree's subtotals too
    journal = Journal(tmp_path / "j2", repo_id=repo.id)

    def no_walk(*args: object) -> None:
        raise AssertionError("a no-change sync built a parallel walk")

    journal.close()
    monkeypatch.setattr(workers.ParallelWalk, "__init__", no_walk)
    again, _ = _backup(repo, src, tmp_path / "j2", 2)
    assert again.tree == serial.tree and again.bytes_read == 0


def test_a_journal_walk_rewrites_its_journal_in_place_as_a_sync_writes_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal walk leaves the rows of unchanged entries of the directories it walks where they
    are (no rewrite) and removes those of entries gone: the same rows as a sync writing a new
    journal from the same tree."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    try:
        _build(src)
    except OSError as err:  # pragma: no cover - a tmp without user xattrs
        pytest.skip(f"cannot build the tree here: {err}")
    for raw in (b"kept-\xe9", b"gone-\xe9"):  # names that are not UTF-8: BLOB keys in the journal
        (src / "d3" / os.fsdecode(raw)).write_bytes(raw)
    repo = make_repo(tmp_path / "repo")
    _backup(repo, src, tmp_path / "j-settle", 1)  # settles the directories' atimes
    _, journal = _backup(repo, src, tmp_path / "j-sync", 1)
    journal.close()
    shutil.copy(tmp_path / "j-sync", tmp_path / "j-walk")
    (src / "d3" / "f007.txt").write_bytes(b"changed\n")
    (src / "d3" / "f008.txt").unlink()
    os.rename(src / "d3" / "f009.txt", src / "d3" / "g009.txt")
    (src / "d3" / "new.txt").write_bytes(b"new\n")
    (src / "d3" / os.fsdecode(b"gone-\xe9")).unlink()
    shutil.rmtree(src / "d4" / "inner")
    for d in ("d3", "d4"):
        os.listdir(src / d)  # settles the directories' atimes before both syncs
    tables = ("files", "nodes", "dirs", "subtotals")
    synced, _ = _backup(repo, src, tmp_path / "j-sync", 1)

    journal = Journal(tmp_path / "j-walk", repo_id=repo.id)
    out = journal.begin(in_place=True)
    changed = {b"d3", b"d4", b"d0", b"d5"}  # and the directories with hard links, as changes.decide adds them
    walk = JournalWalk(Changes(changed, set(), {b"d4/inner"}, dirty={b"", *changed}), journal, out, repo)
    options = ArchiveOptions(root=src, filter=PathFilter([], ["skip/"]), unchanged=walk)
    with repo.writer() as writer:
        walked = Archiver(repo, writer, journal, out, options).run()
    out.commit({"point_id": "p1", "source": "test"})
    journal.close()
    assert walk.walked == {b"", *changed} and walked.files_read == synced.files_read == 3
    assert walked.tree == synced.tree and walked.nodes_reused > 0
    assert _rows(tmp_path / "j-walk", tables) == _rows(tmp_path / "j-sync", tables)
