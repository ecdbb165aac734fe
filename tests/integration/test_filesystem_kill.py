"""SIGKILL a sync at several moments: the repository checks clean and the next sync completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protectctl.agent.jobs import restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from tests.integration.test_filesystem_backup import PASS, make_job, snapshot_tree

ROOT = Path(__file__).parents[2]

# The driver: one sync of the test's source, throttled so it lasts long enough to be killed
# in every phase (reading, sealing, uploading packs, indexing, saving the point, journal).
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
        (src / "big" / f"f{i:02}.bin").write_bytes(os.urandom(1 << 20) if (i + seed) % 3 else bytes(1 << 20))
    for i in range(200):
        (src / f"small{i:03}.txt").write_text(f"file {i} generation {seed}\n" * (i + 1))


def _check(repo_dir: Path) -> None:
    with Repository.open(LocalStorage(repo_dir), PASS) as repo:
        report = repo.check(read_data=True)
    assert report.ok, report.errors


def test_sigkill_mid_sync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, PASS, kdf_n=2**10, pack_size=1 << 20)  # many packs: many moments
    killed = 0
    for round_, delay in enumerate((0.3, 0.6, 0.9, 1.2, 1.5, 1.75)):
        _populate(src, round_)
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(src)], cwd=ROOT)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        _check(tmp_path / "repo")
    assert killed >= 3
    job = make_job(tmp_path, src)
    final = run_backup(job, "sync")
    assert final.ok
    _check(tmp_path / "repo")
    target = tmp_path / "restored"
    restore(job, "latest", target=target)
    assert snapshot_tree(target) == snapshot_tree(src)
    again = run_backup(job, "sync")
    assert again.bytes_read == 0
