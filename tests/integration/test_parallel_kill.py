"""The multi-core first backup (agent/workers.py) killed: the parent by SIGKILL while its workers
run (they die with it, the repository checks clean, the next run completes and restores exactly),
and a worker by SIGKILL (the backup fails with one line and publishes nothing); then the parent
of a sync whose new subtree the workers capture.

Moments are observed, not timed: each worker pauses at its 4th task (crashpoint.py), so the
parent is killed while both workers hold work and the repository has packs in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from protectctl.agent import workers
from protectctl.agent.jobs import restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import ProviderError
from tests.integration.test_filesystem_backup import PASS, make_job, snapshot_tree

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.usefixtures("no_racy_slack")

DRIVER = """
import sys
from pathlib import Path
from protectctl.agent import workers
from tests.integration.test_filesystem_backup import make_job
from protectctl.agent.jobs import run_backup
workers.SPAWN_AFTER_FILES = 0
workers.PARENT_WORKS_WHILE_STARTING = False
job = make_job(Path(sys.argv[1]), Path(sys.argv[2]), parallelism=2)
sys.exit(run_backup(job, "sync").exit_code)
"""


def _populate(src: Path) -> None:
    for d in range(24):
        sub = src / f"d{d:02}"
        sub.mkdir(parents=True)
        for i in range(50):
            (sub / f"f{i:02}.txt").write_bytes(b"directory %d file %d\n" % (d, i) * (20 + i))
    (src / "d00" / "big.bin").write_bytes(os.urandom(2 << 20))
    os.link(src / "d00" / "f00.txt", src / "d07" / "linked.txt")


def _announced(path: Path, count: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]
            if len(pids) >= count:
                return pids
        time.sleep(0.01)
    raise AssertionError(f"no worker reached its crash point ({path})")


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours is gone too
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.02)
    return False


def _points(repo: Path) -> int:
    return sum(1 for p in (repo / "points").rglob("*") if p.is_file())


def _check(repo: Path) -> None:
    with Repository.open(LocalStorage(repo), PASS) as opened:
        report = opened.check(read_data=True)
    assert report.ok, report.errors


def test_parallel_first_backup_killed_parent_then_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _populate(src)
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASS, kdf_n=2**10, pack_size=256 << 10)  # many packs

    # 1. SIGKILL the parent while both workers hold a task: they die with it, nothing is damaged
    announce = tmp_path / "announce-parent"
    env = {**os.environ, "PROTECTCTL_CRASH_POINT": "archive-worker-task#4", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(src)], cwd=ROOT, env=env)
    try:
        paused = _announced(announce, 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert all(_gone(pid) for pid in paused), "archive workers outlived their parent"
    assert _points(repo) == 0
    _check(repo)

    # 2. SIGKILL a worker: the backup fails with one line and publishes nothing
    announce = tmp_path / "announce-worker"
    monkeypatch.setattr(workers, "SPAWN_AFTER_FILES", 0)
    monkeypatch.setattr(workers, "PARENT_WORKS_WHILE_STARTING", False)
    monkeypatch.setenv("PROTECTCTL_CRASH_POINT", "archive-worker-task#4")
    monkeypatch.setenv("PROTECTCTL_CRASH_ANNOUNCE", str(announce))
    killer = threading.Thread(target=lambda: os.kill(_announced(announce, 1)[0], signal.SIGKILL), daemon=True)
    killer.start()
    job = make_job(tmp_path, src, parallelism=2)
    with pytest.raises(ProviderError) as failed:
        run_backup(job, "sync")
    killer.join(timeout=60)
    assert "archive worker" in failed.value.message and "\n" not in failed.value.message
    assert _points(repo) == 0
    _check(repo)

    # 3. the next run completes and restores exactly
    monkeypatch.delenv("PROTECTCTL_CRASH_POINT")
    final = run_backup(job, "sync")
    assert final.ok and final.files == 24 * 50 + 2
    _check(repo)
    restore(job, "latest", target=tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == snapshot_tree(src)
    assert run_backup(job, "sync").bytes_read == 0

    # 4. a sync's new subtree goes to the workers too (agent/archiver.py, _new_subtree): SIGKILL
    # the parent there: the workers die with it, no point, the journal of the last point stands,
    # and the next sync reads only the new files
    new_bytes = 0
    for d in range(24):  # enough directories for both workers to reach their 4th task
        sub = src / "new" / f"n{d:02}"
        sub.mkdir(parents=True)
        for i in range(5):
            new_bytes += (sub / f"g{i}.txt").write_bytes(b"new %d %d\n" % (d, i) * 30)
    points = _points(repo)
    announce = tmp_path / "announce-sync"
    env = {**os.environ, "PROTECTCTL_CRASH_POINT": "archive-worker-task#4", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(src)], cwd=ROOT, env=env)
    try:
        paused = _announced(announce, 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert all(_gone(pid) for pid in paused), "archive workers outlived their parent"
    assert _points(repo) == points
    _check(repo)
    after = run_backup(job, "sync")
    assert after.ok and after.files == 24 * 50 + 2 + 120 and after.bytes_read == new_bytes  # only the new files
    restore(job, "latest", target=tmp_path / "restored-new")
    assert snapshot_tree(tmp_path / "restored-new") == snapshot_tree(src)
