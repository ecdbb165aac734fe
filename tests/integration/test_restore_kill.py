"""SIGKILL a restore on its parallel path (small files batched, large ones one per task), then
--resume: the target ends byte-exact, hard links, xattrs and sparse files included. With worker
processes (restore/workers.py): the parent killed while a worker holds a batch, the workers die
with it, the repository is as before (its lock aside), and --resume completes.

The moment is the `restore-file` crashpoint (the N-th file collected as restored and verified):
the walk stops there while batches already handed to the pool threads are still being written,
so the kill lands with files done, in flight and not started. No sleeps.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from tests.conftest import wait_until
from tests.integration.test_filesystem_backup import make_job, snapshot_tree

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.usefixtures("no_racy_slack")

DRIVER = """
import sys
from pathlib import Path
from tests.integration.test_filesystem_backup import make_job
from protectctl.agent.jobs import restore
restore(make_job(Path(sys.argv[1]), Path(sys.argv[2])), "latest", target=Path(sys.argv[3]))
"""


def _populate(src: Path) -> None:
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(150):
            (src / f"d{d}" / f"f{i:03}.txt").write_text(f"dir {d} file {i}\n" * (20 + i))
    (src / "big.bin").write_bytes(os.urandom(1 << 20))
    with open(src / "sparse.img", "wb") as f:
        f.write(b"head" * 1000)
        f.seek(8 << 20)
        f.write(b"tail" * 1000)
    os.link(src / "d1" / "f007.txt", src / "d2" / "hard.txt")
    os.symlink("d0/f001.txt", src / "link")
    with contextlib.suppress(OSError):  # a filesystem without user xattrs: the rest still counts
        os.setxattr(src / "d0" / "f010.txt", b"user.tag", b"kept")


def _xattrs(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = sorted((k, os.getxattr(path, k)) for k in os.listxattr(path))
    return out


@pytest.mark.parametrize("nth", [3, 260])
def test_sigkill_mid_parallel_restore_then_resume_is_byte_exact(tmp_path: Path, nth: int) -> None:
    src, target, announce = tmp_path / "src", tmp_path / "out", tmp_path / "announce"
    src.mkdir()
    _populate(src)
    job = make_job(tmp_path, src)
    assert run_backup(job, "sync").exit_code == 0
    env = {**os.environ, "PROTECTCTL_CRASH_POINT": f"restore-file#{nth}", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(src), str(target)], cwd=ROOT, env=env)
    try:
        wait_until(
            lambda: proc.poll() is not None or announce.exists() and announce.read_text().endswith("\n"),
            f"the restore reaches its file {nth}",
        )
        assert proc.poll() is None, "the restore ended before its crashpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert (target / ".protectctl-restore").exists()
    assert snapshot_tree(target) != snapshot_tree(src)
    result = restore(job, "latest", target=target, resume=True)
    assert any("resumed" in n for n in result.notes), result.notes
    assert result.files == 453 and result.verified >= 452  # each checked, now or when first written
    assert not (target / ".protectctl-restore").exists()
    assert snapshot_tree(target) == snapshot_tree(src)
    assert _xattrs(target) == _xattrs(src)
    assert os.stat(target / "sparse.img").st_blocks * 512 < (1 << 20)  # still sparse


RANGES_DRIVER = """
import sys
from pathlib import Path
from protectctl.restore import ranges
ranges.RANGE_BYTES = 2 << 20  # ranges.img's 6 MiB make several ranges; big.bin's 1 MiB none
ranges.SPLIT_BELOW_JOBS = 1000  # whatever else is in flight
from tests.integration.test_filesystem_backup import make_job
from protectctl.agent.jobs import restore
restore(make_job(Path(sys.argv[1]), Path(sys.argv[2])), "latest", target=Path(sys.argv[3]))
"""


def test_sigkill_mid_range_of_a_big_file_then_resume_is_byte_exact(tmp_path: Path) -> None:
    """Killed with one range of a big sparse file written and others in flight or not started
    (the `restore-range` crashpoint, in a pool thread): the resume rewrites that file whole."""
    src, target, announce = tmp_path / "src", tmp_path / "out", tmp_path / "announce"
    src.mkdir()
    _populate(src)
    with open(src / "ranges.img", "wb") as f:  # holes between and around 6 MiB of data
        data = random.Random(7).randbytes(6 << 20)
        for i in range(6):
            f.seek(i * (3 << 20) + (1 << 20))
            f.write(data[i << 20 : (i + 1) << 20])
        f.truncate(20 << 20)
    job = make_job(tmp_path, src)
    assert run_backup(job, "sync").exit_code == 0
    env = {**os.environ, "PROTECTCTL_CRASH_POINT": "restore-range#2", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)}
    argv = [sys.executable, "-c", RANGES_DRIVER, str(tmp_path), str(src), str(target)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        wait_until(
            lambda: proc.poll() is not None or announce.exists() and announce.read_text().endswith("\n"),
            "the restore writes a second range",
        )
        assert proc.poll() is None, "the restore ended before its crashpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    half = target / "ranges.img"
    assert half.exists() and half.stat().st_mtime_ns != (src / "ranges.img").stat().st_mtime_ns
    result = restore(job, "latest", target=target, resume=True)
    assert any("resumed" in n for n in result.notes), result.notes
    assert result.files == 454 and result.verified >= 453
    assert snapshot_tree(target) == snapshot_tree(src)
    assert _xattrs(target) == _xattrs(src)
    assert os.stat(half).st_blocks * 512 <= (6 << 20) + (256 << 10)  # data only: still sparse


WORKERS_DRIVER = """
import sys
from pathlib import Path
from protectctl.restore import workers
workers.ENABLED = True
workers.SPAWN_AFTER_BATCHES = 0
workers.WAIT_FOR_WORKERS = True  # every batch to a worker process
from tests.integration.test_filesystem_backup import make_job
from protectctl.agent.jobs import restore
job = make_job(Path(sys.argv[1]), Path(sys.argv[2]), parallelism=2)
restore(job, "latest", target=Path(sys.argv[3]))
"""


def _stored(repo: Path) -> dict[str, bytes]:
    """The repository's objects but its locks (a killed restore leaves its lease behind)."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and p.relative_to(repo).parts[0] != "locks"
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended


def test_sigkill_parent_while_a_worker_holds_a_batch_then_resume(tmp_path: Path) -> None:
    src, target, announce = tmp_path / "src", tmp_path / "out", tmp_path / "announce"
    src.mkdir()
    _populate(src)
    job = make_job(tmp_path, src, parallelism=2)
    assert run_backup(job, "sync").exit_code == 0
    before = _stored(tmp_path / "repo")
    # Each worker stops at its second batch, received and not written.
    env = {
        **os.environ,
        "PROTECTCTL_CRASH_POINT": "restore-worker-batch#2",
        "PROTECTCTL_CRASH_ANNOUNCE": str(announce),
    }
    argv = [sys.executable, "-c", WORKERS_DRIVER, str(tmp_path), str(src), str(target)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        wait_until(
            lambda: proc.poll() is not None or announce.exists() and announce.read_text().endswith("\n"),
            "a restore worker holds its second batch",
        )
        assert proc.poll() is None, "the restore ended before its crashpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    paused = int(announce.read_text().splitlines()[0].split()[1])
    assert paused != proc.pid
    wait_until(lambda: not _alive(paused), "the worker dies with its parent")
    assert _stored(tmp_path / "repo") == before
    assert snapshot_tree(target) != snapshot_tree(src)
    result = restore(job, "latest", target=target, resume=True)
    assert any("resumed" in n for n in result.notes), result.notes
    assert result.files == 453 and result.verified >= 452
    assert snapshot_tree(target) == snapshot_tree(src)
    assert _xattrs(target) == _xattrs(src)
