"""The metadata-scale benchmark's repository builder (tests/bench/bench_points.py), at a tiny size:
the points it writes through the engine check clean, share trees as a sync's would, and
`write_source` lays the first point's tree on disk the same shape."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from tests.bench.bench_points import Shape, build_repository, write_source


def test_built_points_check_clean_and_share_trees(tmp_path: Path) -> None:
    passphrase = "bench-points-test-passphrase"
    Repository.init(LocalStorage(tmp_path / "repo"), passphrase.encode(), kdf_n=2**10).close()
    built = build_repository(tmp_path / "repo", passphrase, 250, 4, datetime(2026, 1, 1, tzinfo=UTC))
    # 3 leaves under 1 middle, the root; then 3 new trees per point (leaf, middle, root)
    assert (built["leaves"], built["middles"], built["trees_written"]) == (3, 1, 5 + 3 * 3)
    repo = Repository.open(LocalStorage(tmp_path / "repo"), passphrase.encode())
    points = repo.list_points()
    assert [p.kind for p in points] == ["full", "sync", "sync", "sync"]
    assert len({p.tree for p in points}) == 4 and all(p.stats.files == 250 for p in points)
    report = repo.check()
    assert report.ok, report.errors
    assert report.points_checked == 4


def test_write_source_has_the_shape(tmp_path: Path) -> None:
    shape = write_source(tmp_path, 250)
    assert isinstance(shape, Shape) and shape.leaves == 3
    files = [p for p in tmp_path.rglob("f*") if p.is_file()]
    assert len(files) == 250 and all(64 <= p.stat().st_size < 192 for p in files)
