"""SIGKILL a sync at several moments: the repository checks clean and the next sync completes.

The moments are taken from what the killed run has visibly done in the repository (its
journal being written, a first pack, several packs, its index, its point) rather than
from sleeps, so each round lands in the phase it names, however fast the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from tests.integration.test_filesystem_backup import PASS, make_job, snapshot_tree

ROOT = Path(__file__).parents[2]

# Files are written right before each sync: trust them at the next one (agent/journal.py).
pytestmark = pytest.mark.usefixtures("no_racy_slack")

# One sync of the test's source, throttled so the upload phase lasts about a second.
DRIVER = """
import sys
from pathlib import Path
from tests.integration.test_filesystem_backup import make_job
from protectctl.agent.jobs import run_backup
job = make_job(Path(sys.argv[1]), Path(sys.argv[2]), throttle_bps=12 << 20)
sys.exit(run_backup(job, "sync").exit_code)
"""


def _populate(src: Path, seed: int) -> None:
    (src / "big").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (src / "big" / f"f{i:02}.bin").write_bytes(os.urandom(1 << 20) if i % 4 else bytes(1 << 20))
    for i in range(200):
        (src / f"small{i:03}.txt").write_text(f"file {i} generation {seed}\n" * (i + 1))


def _count(repo: Path, kind: str) -> int:
    return sum(1 for p in (repo / kind).rglob("*") if p.is_file() and not p.name.startswith("."))


def _check(repo_dir: Path) -> None:
    with Repository.open(LocalStorage(repo_dir), PASS) as repo:
        report = repo.check(read_data=True)
    assert report.ok, report.errors


def _run_and_kill(tmp: Path, src: Path, moment: Callable[[], bool]) -> bool:
    """Start a sync and SIGKILL it as soon as `moment()` holds; True if it was killed."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp), str(src)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if moment():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(0.001)
    proc.wait(timeout=60)
    return False


def test_sigkill_mid_sync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASS, kdf_n=2**10, pack_size=1 << 20)  # many packs
    journal_dir = tmp_path / "state" / "journal"
    moments: list[tuple[str, Callable[[int, int, int], Callable[[], bool]]]] = [
        ("scanning", lambda d, i, p: lambda: any(journal_dir.glob("*.new"))),
        ("first pack", lambda d, i, p: lambda: _count(repo, "data") > d),
        ("several packs", lambda d, i, p: lambda: _count(repo, "data") > d + 5),
        ("index written", lambda d, i, p: lambda: _count(repo, "index") > i),
        ("point saved", lambda d, i, p: lambda: _count(repo, "points") > p),
    ]
    killed = []
    for round_, (name, make_moment) in enumerate(moments):
        _populate(src, round_)
        before = (_count(repo, "data"), _count(repo, "index"), _count(repo, "points"))
        if _run_and_kill(tmp_path, src, make_moment(*before)):
            killed.append(name)
        _check(repo)
    # The last two moments are a few milliseconds before the run would end anyway.
    assert {"scanning", "first pack", "several packs"} <= set(killed), killed
    job = make_job(tmp_path, src)
    final = run_backup(job, "sync")
    assert final.ok
    _check(repo)
    target = tmp_path / "restored"
    restore(job, "latest", target=target)
    assert snapshot_tree(target) == snapshot_tree(src)
    again = run_backup(job, "sync")
    assert again.bytes_read == 0
