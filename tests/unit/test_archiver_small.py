"""Small files take a short path (read whole, one blob, compressed in the caller's thread):
the tree it builds must be byte for byte the chunked path's, and restore must give the bytes back."""

from __future__ import annotations

import os
from pathlib import Path

from protectctl.agent.archiver import ArchiveOptions, Archiver, ArchiveResult
from protectctl.agent.journal import Journal
from protectctl.agent.patterns import PathFilter
from protectctl.engine.repository import Repository
from protectctl.restore.run import restore_tree
from tests.unit.engine.conftest import SMALL_CHUNKS, make_repo

MIN = SMALL_CHUNKS.min_size


def _sync(repo: Repository, src: Path, journal: Path, *, short_path: bool) -> ArchiveResult:
    book = Journal(journal, repo_id=repo.id)  # a fresh journal each time: every file is read
    out = book.begin()
    with repo.writer() as writer:
        archiver = Archiver(repo, writer, book, out, ArchiveOptions(root=src, filter=PathFilter([], [])))
        if not short_path:
            archiver._one_chunk = -1
        result = archiver.run()
    book.close()
    out.abort()
    return result


def test_short_path_builds_the_chunked_paths_tree_and_restores_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    sizes = [0, 1, 3000, MIN - 1, MIN, MIN + 1, 3 * MIN, 70000]
    for size in sizes:
        (src / "d" / f"f{size}").write_bytes(os.urandom(size // 2) + b"a" * (size - size // 2))
    repo = make_repo(tmp_path / "repo")
    _sync(repo, src, tmp_path / "j0", short_path=True)  # settle directory atimes (relatime)
    short = _sync(repo, src, tmp_path / "j1", short_path=True)
    chunked = _sync(repo, src, tmp_path / "j2", short_path=False)
    assert short.tree == chunked.tree
    assert short.files == len(sizes) and not short.errors
    assert short.tree is not None
    restore_tree(repo, short.tree, tmp_path / "out")
    for size in sizes:
        assert (tmp_path / "out" / "d" / f"f{size}").read_bytes() == (src / "d" / f"f{size}").read_bytes()
