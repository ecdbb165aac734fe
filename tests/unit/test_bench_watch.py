"""The watcher benchmark's own logic (its runs need root, fanotify and a loop mount: tests/bench/bench_watch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import bench_watch
from tests.bench.bench_watch import change_ten, make_tree, table


def test_tree_and_ten_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_watch, "PER_DIR", 100)
    dirs = make_tree(tmp_path, 250, seed=1)
    assert len(dirs) == 3 and sum(1 for p in tmp_path.rglob("f*") if p.is_file()) == 250
    before = {d: (d / "f0000").read_bytes() for d in dirs}
    change_ten(dirs, seed=2)
    assert all((d / "f0000").read_bytes() != before[d] for d in dirs)  # fewer than ten directories: all


def test_table_shows_ratios_walks_and_the_watchers_share() -> None:
    result = {
        "files": 1000,
        "load_before": (1.0, 1.0, 1.0),
        "phases": {"no change": {"protectctl_s": 0.5, "restic_s": 10.0, "duration_s": 0.1, "walk": "journal (0)"}},
        "overhead": [
            {
                "rate_mib_s": 4,
                "writer_cpu_s": 2.0,
                "writer_cpu_watched_s": 2.1,
                "watcher_cpu_s": 0.1,
                "wall_watched_s": 10.0,
                "extra_cpu": 0.1,
                "watcher_share": 0.05,
            }
        ],
    }
    text = table(result)
    assert "| no change | 0.5 s | 0.1 s | 10.0 s | 0.050x | journal (0) |" in text
    assert "| 4 | 2.0 s | 2.1 s | 0.1 s | 5.0 % | 1.0 % | 10.0 % |" in text
