"""Status and metrics that can be trusted: real jobs on a real repository, then what status
says (one list of problems for the table and --json) and what the textfile says (exact values,
checked by `promtool check metrics`)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent.jobs import run_backup, status
from protectctl.agent.lock import source_lock
from protectctl.agent.status import MetricsTarget, render_metrics
from protectctl.errors import LockedError, ProtectctlError
from tests.integration.test_filesystem_backup import T0, Clock, make_job

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
)


def _status_row(row: object) -> tuple[object, ...]:
    """The status table's row, as the CLI renders it (imported late: cli.jobs needs cli.main first)."""
    import protectctl.cli.main  # noqa: F401
    from protectctl.cli.jobs import _status_row as render

    return render(row)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    return src


def test_a_failure_shows_until_a_later_success_in_table_and_json(tmp_path: Path) -> None:
    job = make_job(tmp_path, _source(tmp_path), sync_interval_s=900, full_interval_s=86400)
    clock = Clock()
    run_backup(job, "sync", now=clock)
    clock.tick(minutes=5)
    with source_lock(job.state_dir, job.source, "another run"), pytest.raises(LockedError):
        run_backup(job, "sync", now=clock)
    (failed,) = status([job], now=clock.tick(minutes=1))
    assert not failed.sla_met
    assert any("failed" in p and "another run" in p for p in failed.problems), failed.problems
    row = _status_row(failed)
    assert row[-1] == "; ".join(failed.to_json()["problems"])  # type: ignore[arg-type]
    clock.tick(minutes=5)
    run_backup(job, "sync", now=clock)
    (settled,) = status([job], now=clock.tick(minutes=1))
    assert settled.sla_met and settled.problems == ()
    assert _status_row(settled)[-1] == ""
    assert settled.last_failure_message  # still recorded, no longer a problem


def test_an_unreadable_repository_is_not_never_and_zero_points(tmp_path: Path) -> None:
    job = make_job(tmp_path, _source(tmp_path), sync_interval_s=900, full_interval_s=86400)
    run_backup(job, "sync", now=Clock())

    def missing() -> bytes:
        raise ProtectctlError("environment variable PASS is not set")

    blind = make_job(tmp_path, tmp_path / "src", passphrase=missing, sync_interval_s=900, full_interval_s=86400)
    (row,) = status([blind], now=T0 + timedelta(minutes=10))
    assert row.points is None
    assert row.sync_age_s == pytest.approx(600, abs=5)  # from what the agent recorded
    assert any("cannot be read" in p and "PASS is not set" in p for p in row.problems)
    table = _status_row(row)
    assert table[2] == "unknown" and table[5] == "?"
    assert "never" not in table


def test_metrics_are_exact_labelled_and_pass_promtool(tmp_path: Path) -> None:
    metrics_path = tmp_path / "textfile" / "protectctl.prom"
    target = MetricsTarget(metrics_path, "db1", "9.9.9")
    job = make_job(tmp_path, _source(tmp_path), metrics=target, sync_interval_s=900, full_interval_s=86400)
    clock = Clock(T0 + timedelta(seconds=1971.25))
    run_backup(job, "sync", now=clock)
    text = metrics_path.read_text()
    stamp = (T0 + timedelta(seconds=1971.25)).timestamp()
    assert (
        f'protectctl_last_success_timestamp_seconds{{host="db1",source="docs/home",kind="full"}} {stamp!r}'
        in text.splitlines()
    )
    assert "e+" not in text
    assert 'protectctl_build_info{host="db1",version="9.9.9"} 1' in text
    assert 'protectctl_jobs_total{host="db1",source="docs/home",kind="full",outcome="success"} 1' in text
    assert 'protectctl_sla_target_seconds{host="db1",source="docs/home",kind="sync"} 900' in text
    assert stat.S_IMODE(metrics_path.stat().st_mode) == 0o640
    if PROMTOOL is not None:
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_big_values_print_exactly() -> None:
    status_doc = {
        "source": "docs/home",
        "last_sync_success": {"time": "2026-12-01T10:06:11+00:00"},
        "last_attempt": {
            "kind": "sync",
            "ok": True,
            "duration_s": 0.5,
            "bytes_read": 123456789012345,
            "bytes_added": 7,
            "point_id": "p",
            "files": 1234567,
            "bytes_total": 98765432109876,
            "complete": True,
        },
    }
    text = render_metrics([status_doc], host="h", version="1")
    assert 'protectctl_last_success_timestamp_seconds{host="h",source="docs/home",kind="sync"} 1796119571' in text
    assert 'protectctl_last_job_read_bytes{host="h",source="docs/home",kind="sync"} 123456789012345' in text
    assert 'protectctl_last_point_size_bytes{host="h",source="docs/home"} 98765432109876' in text


@needs_promtool
def test_promtool_is_the_checker() -> None:
    """Guard the guard: promtool refuses what we would never write."""
    assert PROMTOOL is not None
    bad = "# HELP x_total a counter\n# TYPE x_total gauge\nx_total 1\n"
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode != 0 or check.stdout + check.stderr
