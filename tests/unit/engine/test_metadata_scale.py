"""check and gc visit each unique tree once, however many points share it (issue 12, item 3).

N points of one source, each differing from the one before by one changed leaf directory (a
new leaf tree, its middle tree and the root; everything else re-used), the shape of a
repository with hundreds of points of a big source. Tree reads are counted on the
repository: a walk per point would read every shared tree N times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protectctl.engine.ids import BlobId
from protectctl.engine.pack import PackEntry
from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.tree import Tree
from protectctl.progress import NullProgress
from tests.unit.engine.conftest import dir_node, file_node, make_repo

MIDDLES, LEAVES, FILES, POINTS = 3, 4, 5, 12  # 12 leaves of 5 files; 12 points


class Shaped:
    """The repository, its points, and which trees and chunks each point reaches."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.points: list[Point] = []
        self.trees_of: dict[str, set[BlobId]] = {}
        self.chunks_of: dict[str, set[BlobId]] = {}


def _build(repo: Repository) -> Shaped:
    shaped = Shaped(repo)
    versions: dict[tuple[int, int, int], int] = {}
    leaf_ids: dict[tuple[int, int], BlobId] = {}
    leaf_chunks: dict[tuple[int, int], set[BlobId]] = {}
    middle_ids: dict[int, BlobId] = {}
    roots: list[tuple[BlobId, set[BlobId], set[BlobId]]] = []
    with repo.writer() as writer:

        def leaf(m: int, k: int) -> None:
            nodes, chunks = [], set()
            for f in range(FILES):
                data = f"m{m} leaf{k} file{f} v{versions.get((m, k, f), 0)}".encode() * 4
                chunk = writer.add(BlobKind.DATA, data)[0]
                chunks.add(chunk)
                nodes.append(file_node(f"f{f}", [chunk], len(data)))
            leaf_ids[m, k] = repo.save_tree(writer, Tree(tuple(nodes)))
            leaf_chunks[m, k] = chunks

        def middle(m: int) -> None:
            middle_ids[m] = repo.save_tree(
                writer, Tree(tuple(dir_node(f"d{k}", leaf_ids[m, k]) for k in range(LEAVES)))
            )

        def root() -> None:
            tree = repo.save_tree(writer, Tree(tuple(dir_node(f"m{m}", middle_ids[m]) for m in range(MIDDLES))))
            trees = {tree, *middle_ids.values(), *leaf_ids.values()}
            roots.append((tree, trees, set().union(*leaf_chunks.values())))

        for m in range(MIDDLES):
            for k in range(LEAVES):
                leaf(m, k)
            middle(m)
        root()
        for n in range(1, POINTS):
            m, k, f = n % MIDDLES, n % LEAVES, n % FILES
            versions[m, k, f] = versions.get((m, k, f), 0) + 1
            leaf(m, k)
            middle(m)
            root()
    for n, (tree, trees, chunks) in enumerate(roots):
        point = Point(
            id=new_point_id(),
            source="docs/home",
            time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=n),
            kind="sync",
            parent=None,
            tree=tree,
            stats=PointStats(),
            complete=True,
            host="test",
        )
        repo.save_point(point)
        shaped.points.append(point)
        shaped.trees_of[point.id], shaped.chunks_of[point.id] = trees, chunks
    return shaped


@pytest.fixture
def shaped(tmp_path: Path) -> Iterator[Shaped]:
    repo = make_repo(tmp_path / "repo")
    yield _build(repo)
    repo.close()


class _Files(NullProgress):
    """Files advanced, per task."""

    def __init__(self) -> None:
        self.files: Counter[str] = Counter()
        self.task = ""

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self.task = task

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        self.files[self.task] += files


def _count_tree_reads(repo: Repository, trees: set[BlobId], monkeypatch: pytest.MonkeyPatch) -> Counter[BlobId]:
    """Every read of a tree blob, by id, whichever of the repository's read paths it takes."""
    reads: Counter[BlobId] = Counter()
    read_entry, load_blob = repo.read_entry, repo.load_blob

    def counted_entry(pack: str, entry: PackEntry, *, verify_id: bool = True) -> bytes:
        if entry.blob_id in trees:
            reads[entry.blob_id] += 1
        return read_entry(pack, entry, verify_id=verify_id)

    def counted_blob(blob_id: BlobId) -> bytes:
        if blob_id in trees:
            reads[blob_id] += 1
        return load_blob(blob_id)

    monkeypatch.setattr(repo, "read_entry", counted_entry)
    monkeypatch.setattr(repo, "load_blob", counted_blob)
    return reads


def test_check_reads_each_unique_tree_once(shaped: Shaped, monkeypatch: pytest.MonkeyPatch) -> None:
    every_tree = set().union(*shaped.trees_of.values())
    # the shape shares trees: a walk per point would read far more than the unique ones
    assert sum(len(t) for t in shaped.trees_of.values()) > 3 * len(every_tree)
    reads = _count_tree_reads(shaped.repo, every_tree, monkeypatch)
    progress = _Files()
    report = shaped.repo.check(progress=progress)
    assert report.ok, report.errors
    assert report.points_checked == POINTS
    assert set(reads) == every_tree
    assert max(reads.values()) == 1
    # progress counts the files of each tree read: the distinct leaf trees' files
    assert progress.files["check: points"] == (MIDDLES * LEAVES + POINTS - 1) * FILES


def test_check_names_every_point_a_shared_damage_hurts(shaped: Shaped, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memoised per tree, damage under a shared subtree still reaches every point above it."""
    repo = shaped.repo
    first, last = shaped.points[0], shaped.points[-1]
    # a chunk every point reaches (never changed): its pack goes missing
    shared = next(iter(set.intersection(*shaped.chunks_of.values())))
    pack = repo._loaded_index().lookup(shared)
    assert pack is not None
    repo.storage.delete(ObjectKind.DATA, pack.pack)
    only_first = shaped.chunks_of[first.id] - shaped.chunks_of[last.id]
    assert only_first  # the first point has chunks the last one lost
    report = Repository.open(repo.storage, b"correct horse battery staple").check()
    assert not report.ok
    assert set(report.damaged_packs[pack.pack]) == {p.id for p in shaped.points}


def test_gc_marks_each_unique_tree_once_and_keeps_what_survivors_need(
    shaped: Shaped, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = shaped.repo
    gone, kept = shaped.points[: POINTS // 2], shaped.points[POINTS // 2 :]
    repo.forget_points([p.id for p in gone])
    needed_trees = set().union(*(shaped.trees_of[p.id] for p in kept))
    needed = needed_trees | set().union(*(shaped.chunks_of[p.id] for p in kept))
    every_tree = set().union(*shaped.trees_of.values())
    reads = _count_tree_reads(repo, every_tree, monkeypatch)
    report = repo.gc()
    assert not report.damaged and report.deferred_because is None
    assert set(reads) == needed_trees  # forgotten points' own trees are not read
    assert max(reads.values()) == 1
    assert report.blobs_referenced == len(needed)
    monkeypatch.undo()
    fresh = Repository.open(repo.storage, b"correct horse battery staple")
    for blob in needed:
        assert fresh.has_blob(blob)
    check = fresh.check()
    assert check.ok, check.errors
    assert check.points_checked == len(kept)
