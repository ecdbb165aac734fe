"""Schedules that run: apply's units, executed the way systemd and cron would start them.

systemd is not PID 1 here, so a unit cannot be started; its ExecStart= is split as systemd
splits it and run under `env -i` with exactly the environment the unit gives (Environment=
lines), which is what a timer-started service has. `systemd-analyze security --offline=true`
scores the sandbox of the generated sync service.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.unit.test_schedulers import cron_shell_argv, systemd_split

UNITS = Path("etc/systemd/system")
PASSPHRASE_ENV = "PROTECTCTL_TEST_SCHEDULE_PASSPHRASE"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# systemd-analyze security: borgmatic's sample service scores 2.7; "UNSAFE" starts at 9.0.
MAX_EXPOSURE = 4.0

POLICY = """\
apiVersion: protectctl/v1
kind: Host
metadata: {{name: local}}
spec: {{address: local, scheduler: {scheduler}, root: ./root}}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {{name: k}}
spec:
  passphrase: {{env: {env}}}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {{name: primary}}
spec: {{type: local, path: ./repo, encryption: {{key: k}}}}
---
apiVersion: protectctl/v1
kind: SLA
metadata: {{name: tier}}
spec: {{sync: every 15m, full: daily at 20:00, retention: {{disk: 14d}}}}
---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: docs}}
spec:
  sla: tier
  storage: primary
  members:
    - {{name: home, host: local, filesystem: {{path: ./data}}}}
"""


def _policy(tmp_path: Path, scheduler: str) -> Path:
    directory = tmp_path / "policy"
    (directory / "data").mkdir(parents=True)
    (directory / "data" / "file.txt").write_text("protect me\n")
    (directory / "protect.yaml").write_text(POLICY.format(scheduler=scheduler, env=PASSPHRASE_ENV))
    return directory


def _apply(directory: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(directory, "apply", "--auto-approve", env={PASSPHRASE_ENV: "correct horse battery"})


def _unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def _service_command(service: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart= as systemd splits it, and the environment its Environment= lines give."""
    text = service.read_text()
    (exec_start,) = _unit_values(text, "ExecStart")
    environment = {}
    for value in _unit_values(text, "Environment"):
        key, _, val = systemd_split(value)[0].partition("=")
        environment[key] = val
    return systemd_split(exec_start), environment


def _points(directory: Path) -> list[object]:
    proc = run_cli(directory, "points", "list", "--json", env={PASSPHRASE_ENV: "correct horse battery"})
    points = json.loads(proc.stdout)["points"]
    assert isinstance(points, list)
    return points


def test_env_passphrase_systemd_sync_runs_from_its_unit(tmp_path: Path) -> None:
    """The issue: an `env:` passphrase left timers failing `environment variable ... is not set`."""
    directory = _policy(tmp_path, "systemd")
    proc = _apply(directory)
    root = directory / "root"
    service = root / UNITS / "protectctl-docs-home-sync.service"
    argv, environment = _service_command(service)
    assert "correct horse" not in service.read_text()
    run = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert len(_points(directory)) == 1
    # the copy the timers read is root-only, and what the plan calls it says where it is
    (copy,) = (root / "etc/protectctl/keys").iterdir()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert "secret.k/local" in proc.stdout


def test_env_passphrase_cron_sync_runs_from_its_line(tmp_path: Path) -> None:
    directory = _policy(tmp_path, "cron")
    _apply(directory)
    text = (directory / "root/etc/cron.d/protectctl-docs-home-sync").read_text()
    assert "MAILTO=root" in text.splitlines()
    environment = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"[A-Z_]+=", line))
    (line,) = [line for line in text.splitlines() if line.startswith("*/15 ")]
    command = line.split(None, 6)[6]
    # no random sleep in a test: the line's own delay is rendered from randomizedDelay
    command = re.sub(r"^sleep \$\(\(.*?\)\) && ", "", command)
    run = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), "/bin/sh", "-c", command.replace("\\%", "%")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == "", "a successful run must print nothing, or cron mails it"
    assert len(_points(directory)) == 1
    assert cron_shell_argv(command)[0] == "out=$("


def test_apply_says_schedules_under_another_root_are_not_active(tmp_path: Path) -> None:
    directory = _policy(tmp_path, "systemd")
    proc = _apply(directory)
    assert re.search(r"host local: 4 schedule\(s\) written but NOT ACTIVE: its root is \S+/root, not /", proc.stdout)
    report = json.loads(
        run_cli(directory, "apply", "--auto-approve", "--json", env={PASSPHRASE_ENV: "correct horse battery"}).stdout
    )
    assert report["inactive_schedules"] == []  # nothing written this time: nothing to say


def _exposure(path: Path) -> float:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_generated_units_verify_and_the_sync_service_is_sandboxed(tmp_path: Path) -> None:
    directory = _policy(tmp_path, "systemd")
    _apply(directory)
    units = sorted((directory / "root" / UNITS).iterdir())
    assert SYSTEMD_ANALYZE is not None
    verify = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=120, check=False
    )
    assert verify.returncode == 0 and not [
        line for line in verify.stderr.splitlines() if any(u.name in line for u in units)
    ], verify.stderr
    scores = {unit.name: _exposure(unit) for unit in units if unit.suffix == ".service"}
    assert scores["protectctl-docs-home-sync.service"] <= MAX_EXPOSURE, scores
    assert all(score <= MAX_EXPOSURE for score in scores.values()), scores
    sync = (directory / "root" / UNITS / "protectctl-docs-home-sync.service").read_text()
    assert "TimeoutStartSec=21600" in sync.splitlines()
    assert "RandomizedDelaySec=120" in (directory / "root" / UNITS / "protectctl-docs-home-prune.timer").read_text()
