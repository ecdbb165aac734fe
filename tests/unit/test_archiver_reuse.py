"""The archiver's reuse of unchanged directories' trees, on real files and a real repository.

Every test compares against the slow walk (no reuse): a reused tree must be byte for byte the
tree the slow walk would build, and any change below a directory must rebuild it. The first
listing of a new directory moves its atime (relatime), which trees record, so tests `settle`
(sync twice) before comparing trees across runs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from protectctl.agent.archiver import ArchiveOptions, Archiver, ArchiveResult
from protectctl.agent.journal import Journal
from protectctl.agent.patterns import PathFilter
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import Repository
from protectctl.engine.tree import NodeType, Tree
from protectctl.restore.run import restore_tree
from tests.unit.engine.conftest import make_repo

# Files are written right before each sync: trust them at the next one (agent/journal.py).
pytestmark = pytest.mark.usefixtures("no_racy_slack")


class _Workspace:
    def __init__(self, tmp_path: Path) -> None:
        self.src = tmp_path / "src"
        self.repo: Repository = make_repo(tmp_path / "repo")
        self.journal_path = tmp_path / "state" / "journal.db"
        self.tmp = tmp_path

    def sync(
        self,
        *,
        reuse: bool = True,
        exclude: tuple[str, ...] = (),
        reread: Callable[[bytes, os.stat_result], bool] | None = None,
    ) -> ArchiveResult:
        journal = Journal(self.journal_path, repo_id=self.repo.id)
        out = journal.begin()
        with self.repo.writer() as writer:
            archiver = Archiver(
                self.repo,
                writer,
                journal,
                out,
                ArchiveOptions(root=self.src, filter=PathFilter([], list(exclude)), reread=reread),
            )
            if not reuse:
                archiver._reuse_dirs = False
            result = archiver.run()
        journal.close()
        out.commit({"point_id": "p"})
        return result

    def settle(self) -> ArchiveResult:
        self.sync()
        return self.sync()

    def restored(self, tree: BlobId | None, name: str) -> Path:
        assert tree is not None
        target = self.tmp / name
        restore_tree(self.repo, tree, target)
        return target


@pytest.fixture
def ws(tmp_path: Path) -> _Workspace:
    src = tmp_path / "src"
    (src / "a" / "deep").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "empty").mkdir()
    (src / "a" / "one.txt").write_bytes(b"one" * 5000)
    (src / "a" / "deep" / "two.bin").write_bytes(os.urandom(70000))
    (src / "b" / "three.txt").write_bytes(b"three")
    (src / "b" / "empty-file").write_bytes(b"")
    os.link(src / "b" / "three.txt", src / "a" / "three-link.txt")
    os.symlink("../b/three.txt", src / "a" / "to-three")
    os.mkfifo(src / "b" / "fifo")
    with open(src / "sparse", "wb") as handle:
        handle.seek(1 << 20)
        handle.write(b"tail")
    return _Workspace(tmp_path)


def _tree_node(repo: Repository, tree: BlobId | None, *path: str) -> Tree:
    assert tree is not None
    current = repo.load_tree(tree)
    for name in path:
        node = next(n for n in current.nodes if n.name == name.encode())
        assert node.subtree is not None
        current = repo.load_tree(node.subtree)
    return current


def test_unchanged_sync_reuses_every_directory_and_equals_the_slow_walk(ws: _Workspace) -> None:
    first = ws.sync()
    assert first.dirs_reused == 0 and first.files_read == 5  # 6 files, two of them hard links
    first = ws.sync()
    second = ws.sync()
    # root, a, a/deep, b, empty: all reused, nothing read, same counters as the first walk.
    assert second.dirs_reused == 5
    assert (second.files_read, second.files_reused) == (0, first.files)
    assert (second.files, second.dirs, second.bytes_total) == (first.files, first.dirs, first.bytes_total)
    assert second.tree == first.tree
    slow = ws.sync(reuse=False)
    assert slow.dirs_reused == 0 and slow.files_read == 0 and slow.tree == second.tree
    # The journal carried over by reuse still serves the next run, file by file and directory by directory.
    assert ws.sync().dirs_reused == 5


def test_a_changed_file_rebuilds_its_directory_and_ancestors_only(ws: _Workspace) -> None:
    first = ws.settle()
    (ws.src / "a" / "deep" / "two.bin").write_bytes(b"new content")
    changed = ws.sync()
    assert changed.files_read == 1 and changed.dirs_reused == 2  # b and empty; root, a, a/deep rebuilt
    # In the rebuilt directories only the changed file and the directories above it are captured
    # again: root keeps b, empty and sparse; a keeps one.txt, three-link.txt and to-three.
    assert changed.nodes_reused == 6
    assert changed.tree != first.tree
    assert _tree_node(ws.repo, changed.tree, "b") == _tree_node(ws.repo, first.tree, "b")
    restored = ws.restored(changed.tree, "r1")
    assert (restored / "a" / "deep" / "two.bin").read_bytes() == b"new content"
    assert (restored / "b" / "three.txt").read_bytes() == b"three"
    assert ws.sync(reuse=False).tree == changed.tree


def test_added_and_deleted_entries_are_seen(ws: _Workspace) -> None:
    ws.settle()
    (ws.src / "b" / "three.txt").unlink()  # a/three-link.txt remains: its nlink (in the key) drops
    (ws.src / "empty" / "new").write_bytes(b"new")
    result = ws.sync()
    assert result.dirs_reused == 1  # only a/deep
    restored = ws.restored(result.tree, "r")
    assert not (restored / "b" / "three.txt").exists()
    assert (restored / "empty" / "new").read_bytes() == b"new"
    again = ws.sync()
    assert ws.sync(reuse=False).tree == again.tree


def test_an_xattr_change_is_not_hidden_by_reuse(ws: _Workspace) -> None:
    ws.sync()
    target = ws.src / "b" / "three.txt"
    try:
        os.setxattr(target, "user.note", b"v1")
    except OSError as err:
        pytest.skip(f"no user xattrs here: {err}")
    result = ws.sync()
    node = next(n for n in _tree_node(ws.repo, result.tree, "b").nodes if n.name == b"three.txt")
    assert node.xattrs == ((b"user.note", b"v1"),)


def test_a_tree_or_chunk_missing_from_the_repository_is_not_reused(ws: _Workspace) -> None:
    first = ws.settle()
    conn = sqlite3.connect(ws.journal_path)
    conn.execute("UPDATE dirs SET tree = ? WHERE dir = 'b'", (b"\x07" * 32,))  # as if pruned away
    conn.execute("UPDATE files SET chunks = ? WHERE dir = 'a/deep'", (b"\x08" * 32,))
    conn.commit()
    conn.close()
    result = ws.sync()
    # b (no tree) and a/deep (a missing chunk) are rebuilt, two.bin is read again; rebuilt to the
    # same trees, so root, a and empty, whose keys name those trees, are reused.
    assert result.dirs_reused == 3
    assert result.files_read == 1
    assert result.tree == first.tree


def test_a_journal_without_directory_keys_falls_back_to_the_file_journal(ws: _Workspace) -> None:
    first = ws.settle()
    conn = sqlite3.connect(ws.journal_path)
    conn.execute("DROP TABLE dirs")  # a journal written before directory reuse existed
    conn.commit()
    conn.close()
    result = ws.sync()
    assert (result.dirs_reused, result.files_read, result.tree) == (0, 0, first.tree)
    assert ws.sync().dirs_reused == 5


def test_changed_excludes_change_the_tree(ws: _Workspace) -> None:
    ws.settle()
    excluded = ws.sync(exclude=("*.txt",))
    included = ws.sync()
    assert included.tree != excluded.tree and included.files == excluded.files + 3
    assert ws.sync(exclude=("*.txt",)).tree == excluded.tree


def test_a_reread_policy_vetting_journal_entries_never_gets_a_reused_directory(ws: _Workspace) -> None:
    plain = ws.settle()
    result = ws.sync(reread=lambda rel, st: True)
    assert (result.dirs_reused, result.nodes_reused, result.files_read) == (0, 0, 5)
    assert result.tree == plain.tree  # the node-by-node path encodes the same tree


def test_reused_tree_keeps_every_node_type(ws: _Workspace) -> None:
    ws.settle()
    result = ws.sync()
    assert result.dirs_reused == 5
    types = {n.name.decode(): n.type for n in _tree_node(ws.repo, result.tree, "b").nodes}
    assert types == {"empty-file": NodeType.FILE, "fifo": NodeType.FIFO, "three.txt": NodeType.FILE}
    restored = ws.restored(result.tree, "r")
    assert (restored / "a" / "to-three").is_symlink()
    assert os.stat(restored / "sparse").st_size == (1 << 20) + 4
    assert (restored / "a" / "deep" / "two.bin").read_bytes() == (ws.src / "a" / "deep" / "two.bin").read_bytes()


def test_a_damaged_encoded_node_is_rebuilt_never_stored(ws: _Workspace) -> None:
    first = ws.settle()
    (ws.src / "a" / "one.txt").write_bytes(b"changed")  # "a" must be rebuilt, entry by entry
    conn = sqlite3.connect(ws.journal_path)
    conn.execute("""UPDATE nodes SET encoded = replace(encoded, '"size"', '"sizf"') WHERE dir = 'a'""")
    conn.execute("UPDATE nodes SET seal = 'not a blob' WHERE dir = ''")  # a foreign row shape
    conn.commit()
    conn.close()
    result = ws.sync()
    assert result.nodes_reused == 0 and result.tree != first.tree
    assert _tree_node(ws.repo, result.tree, "a").nodes  # decodes: nothing damaged reached the tree
    assert ws.sync(reuse=False).tree == result.tree
