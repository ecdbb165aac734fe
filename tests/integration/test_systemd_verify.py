"""Rendered schedules checked by the real tools: `systemd-analyze verify` and `calendar`.

systemd need not be PID 1: `verify` and `calendar` read files and expressions offline.
ExecStart's binary must exist for verify, so jobs run this interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import pytest

from protectctl.provision.schedulers import ScheduledJob, renderer_for, unit_name
from protectctl.units import Schedule

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed, so units cannot be verified"
)

SCHEDULES = [
    "every 15m",
    "every 2h",
    "hourly at :30",
    "daily at 20:00",
    "daily at 08:00,20:30",
    "weekly on sun at 02:00",
    "weekly on mon,thu at 01:30",
    "monthly on 1,15 at 03:00",
    "0 0 1 * mon",
    "*/5 9-17 * * 1-5",
    "0 0 */2 * 1-5",
]


def _job(schedule: str, **extra: object) -> ScheduledJob:
    fields: dict[str, object] = {
        "name": unit_name("protectctl", "docs", "home-dir", "sync"),
        "description": f"protectctl test job ({schedule}) 100%",
        "argv": (
            sys.executable,
            "-c",
            "import sys; print(sys.argv)",
            "a b",
            "50%",
            "$HOME",
            'it\'s "q"',
            ";",
            "",
            "é x",
        ),
        "schedule": Schedule.parse(schedule),
        "randomized_delay_s": 90,
        "environment": (("PROTECTCTL_CONFIG", "/etc/protectctl/agent config.yaml"),),
    }
    return ScheduledJob(**(fields | extra))  # type: ignore[arg-type]


def _write(root: Path, job: ScheduledJob, kind: str) -> list[Path]:
    paths = []
    for relative, text in renderer_for(kind).render(job).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


@needs_systemd
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_systemd_analyze_verify_accepts_units(tmp_path: Path, schedule: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    paths = _write(tmp_path, _job(schedule, user="root"), "systemd")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"SYSTEMD_LOG_LEVEL": "info"},
    )
    # verify also reports lines it ignored, which still exit 0: none may name our files.
    ours = [line for line in result.stderr.splitlines() if any(p.name in line for p in paths)]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


@needs_systemd
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guard the guard: verify must fail on what we would never render."""
    assert SYSTEMD_ANALYZE is not None
    (timer,) = [p for p in _write(tmp_path, _job("every 15m"), "systemd") if p.suffix == ".timer"]
    timer.write_text(timer.read_text().replace("OnCalendar=*-*-* *:00/15:00", "OnCalendar=every 15m"))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(timer)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 or timer.name in result.stderr


_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def _systemd_elapses(expression: str, base: datetime, count: int) -> list[datetime]:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "calendar",
            f"--iterations={count}",
            f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC",
            f"{expression} UTC",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"TZ": "UTC"},
        check=True,
    )
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for m in _ELAPSE.findall(result.stdout)]


@needs_systemd
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_on_calendar_elapses_match_our_schedule(schedule: str) -> None:
    parsed = Schedule.parse(schedule)
    base = datetime(2024, 2, 26, 0, 0, 30, tzinfo=UTC)
    count = 40
    elapses = sorted(
        {t for expression in parsed.on_calendar_lines() for t in _systemd_elapses(expression, base, count)}
    )[:count]
    assert elapses == list(islice(parsed.iter_runs(base), count))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cron_lines_parse_back_with_our_cron_parser(tmp_path: Path, schedule: str) -> None:
    job = _job(schedule)
    (path,) = _write(tmp_path, job, "cron")
    lines = [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("#") and not re.match(r"[A-Z_]+=", line)
    ]
    assert lines, "no job lines"
    runs: set[int] = set()
    for line in lines:
        fields = line.split()
        assert fields[5] == "root"
        as_cron = Schedule.parse(" ".join(fields[:5]))
        assert as_cron.days == job.schedule.days
        runs |= set(as_cron.times)
    assert tuple(sorted(runs)) == job.schedule.times
