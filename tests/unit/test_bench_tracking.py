"""The tracking benchmark's own logic (its runs need root and loop mounts: tests/bench/bench_tracking.py)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.bench_tracking import rewrite_scattered, table


def test_scattered_rewrite_changes_the_pages_it_says(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(1 << 20))
    changed = rewrite_scattered(image, 0.01, seed=1)
    data = image.read_bytes()
    assert changed == 2 * 4096 and len(data) == 1 << 20
    assert 0 < sum(1 for i in range(0, len(data), 4096) if any(data[i : i + 4096])) <= 2


def test_table_shows_ratios_and_read_amplification() -> None:
    rows = {
        "1% rewritten": {
            "bytes_changed": 4096,
            "protectctl_s": 1.0,
            "restic_s": 4.0,
            "bytes_read": 16384,
            "protectctl_cpu_s": 0.5,
            "restic_cpu_s": 3.0,
        }
    }
    text = table(
        [{"filesystem": "xfs", "phases": rows}, {"filesystem": "btrfs", "phases": {}, "snapshot_create_delete_s": 0.01}]
    )
    assert "| xfs | 1% rewritten | 1.0 s | 4.0 s | 0.25x | 4.0x (16,384 / 4,096) | 0.5 / 3.0 s |" in text
    assert "snapshot create + delete | 0.01 s" in text
