"""The source's status file: concurrent records (a backup's and a prune's, from two processes)
never drop each other's update."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protectctl.agent import status
from protectctl.agent.status import JobRecord, read_status, record_job, record_retention


def test_a_record_made_while_another_is_being_written_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = status.MetricsTarget(tmp_path / "m.prom", "h1", "0")
    record_job(tmp_path, "g/a", JobRecord("sync", "2026-12-01T00:00:00+00:00", True, 1.0), metrics=metrics)
    prune_read, release = threading.Event(), threading.Event()
    real_read = status.read_status

    def slow_read(state_dir: Path, source: str) -> dict[str, object]:
        found = real_read(state_dir, source)
        if threading.current_thread().name == "prune":  # the prune has read; a backup ends meanwhile
            prune_read.set()
            release.wait(10)
        return found

    monkeypatch.setattr(status, "read_status", slow_read)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    prune = threading.Thread(
        name="prune",
        target=lambda: record_retention(tmp_path, "g/a", points=3, oldest=now, pruned_at=now, metrics=metrics),
    )
    prune.start()
    assert prune_read.wait(10)
    backup = threading.Thread(
        target=lambda: record_job(
            tmp_path, "g/a", JobRecord("full", "2026-12-03T00:00:00+00:00", True, 2.0), metrics=metrics
        )
    )
    backup.start()
    backup.join(0.5)  # with the lock it waits for the prune: this only bounds how long the test waits
    release.set()
    prune.join(10)
    backup.join(10)
    final = read_status(tmp_path, "g/a")
    assert final["retention"] == {"points": 3, "oldest_point_time": now.isoformat(), "last_prune_time": now.isoformat()}
    assert final["counts"] == {"sync": {"success": 1}, "full": {"success": 1}}
    assert final["last_full_success"]["time"] == "2026-12-03T00:00:00+00:00"  # type: ignore[index]


def test_the_first_point_time_is_kept_and_exported(tmp_path: Path) -> None:
    """The prune and tape alerts need an age for sources never pruned: the first job that made a
    point sets it once; failures and later points leave it alone."""
    from protectctl.agent.status import render_metrics

    record_job(tmp_path, "g/a", JobRecord("sync", "2026-12-01T00:00:00+00:00", False, 1.0))
    assert "first_point" not in read_status(tmp_path, "g/a")
    record_job(tmp_path, "g/a", JobRecord("sync", "2026-12-01T01:00:00+00:00", True, 1.0, point_id="p1"))
    record_job(tmp_path, "g/a", JobRecord("full", "2026-12-02T01:00:00+00:00", True, 1.0, point_id="p2"))
    status = read_status(tmp_path, "g/a")
    assert status["first_point"] == {"time": "2026-12-01T01:00:00+00:00"}
    text = render_metrics([status], host="h")
    assert 'protectctl_first_point_timestamp_seconds{host="h",source="g/a"} 1796086800' in text
