"""A set of blob ids on disk (SQLite), and the walk that fills it from points' trees.

gc and check must know every blob any point references; holding them all in a Python
set costs ~100 bytes per id (a TiB of 1 MiB chunks: 100 MB and growing). A WITHOUT ROWID
SQLite table in a temporary file keeps memory flat at SQLite's page cache. Trees are
tracked separately from "referenced" so a subtree shared by many points is walked once
and a data chunk whose bytes happen to equal a tree's never stops a tree walk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import Tree, TreeRefs
from protectctl.progress import NullProgress, Progress

_BATCH = 4096
_QUERY = 500  # ids per IN (...) query, below SQLite's variable limit of old versions (999)


class BlobSet:
    """Referenced blob ids and walked tree ids, in `directory`/marks.sqlite."""

    def __init__(self, directory: Path) -> None:
        self._db = sqlite3.connect(directory / "marks.sqlite", isolation_level=None)
        # A scratch file: durability is worthless, speed is not.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB page cache, the memory bound
        self._db.execute("CREATE TABLE refs (id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE trees (id BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def __enter__(self) -> BlobSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def add_many(self, ids: Iterable[BlobId]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO refs VALUES (?)", ((i,) for i in ids))

    def contains(self, blob_id: BlobId) -> bool:
        return self._db.execute("SELECT 1 FROM refs WHERE id = ?", (blob_id,)).fetchone() is not None

    def present(self, ids: Sequence[BlobId]) -> set[bytes]:
        """Those of `ids` in the set: one query per 500 ids, not one per id (gc's classify asks
        for every blob of every pack)."""
        found: set[bytes] = set()
        for start in range(0, len(ids), _QUERY):
            batch = ids[start : start + _QUERY]
            sql = f"SELECT id FROM refs WHERE id IN ({','.join('?' * len(batch))})"
            found.update(row[0] for row in self._db.execute(sql, batch))
        return found

    def any_of(self, ids: Iterable[BlobId]) -> bool:
        return any(self.contains(i) for i in ids)

    def first_visit(self, tree_id: BlobId) -> bool:
        """Record a tree as walked; False if it already was."""
        cursor = self._db.execute("INSERT OR IGNORE INTO trees VALUES (?)", (tree_id,))
        return cursor.rowcount == 1

    def count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM refs").fetchone()
        return int(row[0])


def mark_tree(
    root: BlobId, load_tree: Callable[[BlobId], Tree], marks: BlobSet, progress: Progress | None = None
) -> None:
    """Add `root`, every tree below it and every chunk they reference to `marks`."""

    def load_refs(tree_id: BlobId) -> TreeRefs:
        nodes = load_tree(tree_id).nodes
        subtrees = [node.subtree for node in nodes if node.subtree is not None]
        return TreeRefs(subtrees, [chunk for node in nodes for chunk in node.chunks], len(nodes))

    mark_refs(root, load_refs, marks, progress)


def mark_refs(
    root: BlobId, load_refs: Callable[[BlobId], TreeRefs], marks: BlobSet, progress: Progress | None = None
) -> None:
    """`mark_tree` from each tree's references alone (`tree.tree_refs`, what gc reads)."""
    progress = progress or NullProgress()
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if not marks.first_visit(tree_id):
            continue
        refs = load_refs(tree_id)
        marks.add_many([tree_id])
        marks.add_many(refs.chunks)
        stack.extend(refs.subtrees)
        progress.advance(files=refs.nodes)
