"""Block-level change tracking of big files on loop-mounted XFS (reflink=1) and btrfs.

A big file rewritten in a few scattered 4 KiB blocks costs a sync those blocks (rounded to the
tracking block), not the file; every point restores byte-exact, including one taken while the
file is being written; a `full` re-reads everything and finds no block the extents called
unchanged wrongly; a reference out of step with the journal is never trusted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent.jobs import BackupResult, SourceJob, restore, run_backup
from protectctl.agent.snapshots import REFERENCE_PREFIX, source_tag
from protectctl.engine.repository import Repository
from tests.integration.loopfs import fresh_dir
from tests.integration.test_filesystem_backup import PASS, Clock, make_job

pytestmark = pytest.mark.usefixtures("no_racy_slack")

MiB = 1 << 20
SIZE = 4 * MiB
BLOCK = 16 << 10
SPEC = {"change_tracking_min_size": "1MiB", "change_tracking_block_size": "16KiB"}


@pytest.fixture(params=["xfs", "btrfs"])
def cow_dir(request: pytest.FixtureRequest) -> Path:
    mount: Path = request.getfixturevalue(f"{request.param}_mount")
    return fresh_dir(mount, "track")


def _job(tmp: Path, src: Path, **spec: object) -> SourceJob:
    return make_job(tmp, src, spec={"path": str(src), **SPEC, **spec})


def _extra(job: SourceJob, point_id: str) -> dict[str, object]:
    with Repository.open(job.storage, PASS) as repo:
        return dict(repo.load_point(point_id).extra)


def _references(mount: Path, job: SourceJob) -> Path:
    with Repository.open(job.storage, PASS) as repo:
        return mount / (REFERENCE_PREFIX + source_tag(job.source + "\0" + repo.id))


def _restored(job: SourceJob, point: BackupResult, target: Path) -> bytes:
    restore(job, point.time + timedelta(seconds=1), target=target)
    return (target / "disk.img").read_bytes()


def _scatter(path: Path, count: int, rng: random.Random) -> set[int]:
    """Rewrite `count` random 4 KiB blocks in place; the 16 KiB blocks they fall in."""
    touched = set()
    with open(path, "r+b") as handle:
        for _ in range(count):
            offset = rng.randrange(SIZE // 4096) * 4096
            os.pwrite(handle.fileno(), rng.randbytes(4096), offset)
            touched.add(offset // BLOCK)
    return touched


def test_scattered_rewrites_read_only_changed_blocks_and_every_point_restores(cow_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(13)
    disk = cow_dir / "disk.img"
    disk.write_bytes(rng.randbytes(SIZE))
    (cow_dir / "small.txt").write_text("small files are read as always")
    job, clock = _job(tmp_path, cow_dir), Clock()
    first = run_backup(job, "sync", now=clock)
    assert first.ok, first.errors
    extra = _extra(job, first.point_id)
    assert extra["tracking"] == "blocks" and extra["tracked_whole"] == 1, json.dumps(extra)
    contents = [(first, disk.read_bytes())]

    touched = _scatter(disk, 20, rng)
    clock.tick(hours=1)
    second = run_backup(job, "sync", now=clock)
    extra = _extra(job, second.point_id)
    assert extra["tracked_files"] == 1 and extra["blocks_read"] == len(touched), extra
    assert second.bytes_read <= len(touched) * BLOCK + 100  # + the small file, if re-read
    contents.append((second, disk.read_bytes()))

    manifest = _references(cow_dir.parent, job) / "manifest.json"
    before = manifest.stat()
    clock.tick(hours=1)
    nothing = run_backup(job, "sync", now=clock)
    assert nothing.bytes_read == 0
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten

    clock.tick(hours=1)
    full = run_backup(job, "full", now=clock)
    extra = _extra(job, full.point_id)
    assert full.ok and extra["tracking_mismatches"] == 0 and full.silent_changes == 0
    for n, (point, expected) in enumerate(contents):
        assert _restored(job, point, tmp_path / f"out{n}") == expected


def test_a_file_written_during_the_sync_loses_no_change(
    xfs_mount: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On XFS (on btrfs the snapshot already freezes the file): the clone is one instant. A write
    right after the sync's fstat may share its timestamp tick: the racy slack must be in force."""
    monkeypatch.delenv("PROTECTCTL_RACY_SLACK_NS")
    cow_dir = fresh_dir(xfs_mount, "during")
    rng = random.Random(7)
    disk = cow_dir / "disk.img"
    disk.write_bytes(rng.randbytes(SIZE))
    job, clock = _job(tmp_path, cow_dir), Clock()
    assert run_backup(job, "sync", now=clock).ok
    stop = threading.Event()

    def writer() -> None:
        wr = random.Random(8)
        while not stop.is_set():
            _scatter(disk, 4, wr)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        clock.tick(hours=1)
        during = run_backup(job, "sync", now=clock)
    finally:
        stop.set()
        thread.join()
    assert during.ok
    restored = _restored(job, during, tmp_path / "during")  # verified against its hash
    assert len(restored) == SIZE
    clock.tick(hours=1)
    after = run_backup(job, "sync", now=clock)
    assert _restored(job, after, tmp_path / "after") == disk.read_bytes()


def test_a_reference_out_of_step_with_the_journal_is_not_trusted(xfs_mount: Path, tmp_path: Path) -> None:
    src = fresh_dir(xfs_mount, "step")
    rng = random.Random(3)
    disk = src / "disk.img"
    disk.write_bytes(rng.randbytes(SIZE))
    job, clock = _job(tmp_path, src), Clock()
    assert run_backup(job, "sync", now=clock).ok
    manifest = _references(xfs_mount, job) / "manifest.json"
    data = json.loads(manifest.read_text())
    for entry in data["files"].values():
        entry["hash"] = "00" * 32  # as after a crash between the journal commit and the manifest
    manifest.write_text(json.dumps(data))
    _scatter(disk, 3, rng)
    clock.tick(hours=1)
    second = run_backup(job, "sync", now=clock)
    extra = _extra(job, second.point_id)
    assert extra["tracked_whole"] == 1 and "out of step" in json.dumps(extra["tracking_fallbacks"])
    assert _restored(job, second, tmp_path / "out") == disk.read_bytes()


def test_tracking_off_reads_whole_files_and_drops_the_references(xfs_mount: Path, tmp_path: Path) -> None:
    src = fresh_dir(xfs_mount, "off")
    (src / "disk.img").write_bytes(os.urandom(2 * MiB))
    job, clock = _job(tmp_path, src), Clock()
    assert run_backup(job, "sync", now=clock).ok
    refs = _references(xfs_mount, job)
    assert (refs / "manifest.json").exists()
    off = _job(tmp_path, src, change_tracking="off")
    clock.tick(hours=1)
    point = run_backup(off, "sync", now=clock)
    extra = _extra(off, point.point_id)
    assert extra["tracking"] == "off" and extra["snapshot"] == "reflink"
    assert not refs.exists()


# One sync of a source, as a process a test can SIGKILL at a crash point (protectctl/crashpoint.py).
DRIVER = """
import sys
from pathlib import Path
from tests.integration.test_block_tracking import _job
from protectctl.agent.jobs import run_backup
from tests.integration.test_filesystem_backup import Clock
clock = Clock()
clock.tick(hours=int(sys.argv[3]))
sys.exit(run_backup(_job(Path(sys.argv[1]), Path(sys.argv[2])), "sync", now=clock).exit_code)
"""


@pytest.mark.parametrize("point", ["tracking.stashed", "tracking.commit"])
def test_a_sync_killed_around_the_reference_move_loses_no_change(xfs_mount: Path, tmp_path: Path, point: str) -> None:
    """Killed before the point is saved (clones stashed) or after the journal commit (references
    not moved yet): the next sync sees every change and its point restores byte-exact."""
    src = fresh_dir(xfs_mount, "kill")
    rng = random.Random(11)
    disk = src / "disk.img"
    disk.write_bytes(rng.randbytes(SIZE))
    job, clock = _job(tmp_path, src), Clock()
    assert run_backup(job, "sync", now=clock).ok
    _scatter(disk, 5, rng)
    announce = tmp_path / "announce"
    env = {
        **os.environ,
        "PROTECTCTL_CRASH_POINT": point,
        "PROTECTCTL_CRASH_ANNOUNCE": str(announce),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), str(src), "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (announce.exists() and announce.read_text().endswith("\n")):
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the sync ended ({proc.returncode}) before {point}: {stderr}")
        assert time.monotonic() < deadline, f"{point} not reached"
        time.sleep(0.01)  # polling what the run announced, not waiting for it
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    _scatter(disk, 5, rng)
    clock.tick(hours=2)
    after = run_backup(job, "sync", now=clock)
    assert after.ok
    extra = _extra(job, after.point_id)
    if point == "tracking.commit":  # the journal moved on, the reference did not: not trusted
        assert extra["tracked_whole"] == 1 and "out of step" in json.dumps(extra["tracking_fallbacks"])
    else:  # nothing was committed: the old reference still matches the old journal
        assert extra["tracked_files"] == 1
    assert _restored(job, after, tmp_path / "out") == disk.read_bytes()
    assert not list(_references(xfs_mount, job).glob("*.new"))
    assert not [p for p in xfs_mount.iterdir() if p.name.startswith(".protectctl-snapshot-")]


def test_a_reference_directory_others_may_write_is_never_used(xfs_mount: Path, tmp_path: Path) -> None:
    src = fresh_dir(xfs_mount, "shared")
    (src / "disk.img").write_bytes(os.urandom(2 * MiB))
    job = _job(tmp_path, src)
    refs = _references(xfs_mount, job)
    refs.mkdir(mode=0o777)
    refs.chmod(0o777)
    point = run_backup(job, "sync", now=Clock())
    extra = _extra(job, point.point_id)
    assert point.ok and extra["tracking"] == "off" and "not private" in str(extra["tracking_note"])
    assert list(refs.iterdir()) == []


def test_holes_growth_and_shrinking_of_a_tracked_file_restore_exactly(xfs_mount: Path, tmp_path: Path) -> None:
    src = fresh_dir(xfs_mount, "sparse")
    disk = src / "disk.img"
    rng = random.Random(5)
    with open(disk, "wb") as handle:
        handle.truncate(6 * MiB)
        handle.seek(MiB)
        handle.write(rng.randbytes(MiB))
        handle.seek(4 * MiB + 5000)
        handle.write(rng.randbytes(70_000))
    job, clock = _job(tmp_path, src), Clock()
    points = []

    def sync() -> dict[str, object]:
        clock.tick(hours=1)
        result = run_backup(job, "sync", now=clock)
        assert result.ok, result.errors
        points.append((result, disk.read_bytes()))
        return _extra(job, result.point_id)

    assert sync()["blocks_read"] == 64 + 5  # holes are neither read nor stored
    with open(disk, "r+b") as handle:
        handle.seek(3 * MiB)
        handle.write(b"x" * 5000)  # into a hole
    assert sync()["blocks_read"] == 1
    os.truncate(disk, 6 * MiB + 12345)  # grows by a hole
    assert sync()["blocks_read"] == 0
    os.truncate(disk, 5 * MiB + 100)
    assert sync()["blocks_read"] == 0
    for n, (point, expected) in enumerate(points):
        assert _restored(job, point, tmp_path / f"out{n}") == expected


def test_chunks_gone_from_the_repository_make_the_file_read_whole(xfs_mount: Path, tmp_path: Path) -> None:
    """The chunks a tracked file reuses are looked up once per sync (with its directory's): when
    a prune took them, the file is read whole, whatever its reference says."""
    src = fresh_dir(xfs_mount, "pruned")
    disk = src / "disk.img"
    disk.write_bytes(random.Random(8).randbytes(SIZE))
    job, clock = _job(tmp_path, src), Clock()
    first = run_backup(job, "sync", now=clock)
    assert first.ok, first.errors
    with Repository.open(job.storage, PASS) as repo:
        repo.forget_points([first.point_id])
        repo.gc()
    clock.tick(hours=1)
    again = run_backup(job, "sync", now=clock)  # nothing changed, but nothing to reuse either
    extra = _extra(job, again.point_id)
    assert again.ok and again.bytes_read == SIZE and extra["blocks_read"] == SIZE // BLOCK, extra
    assert extra["tracking_fallbacks"] == {"chunks of the last point are gone from the repository": 1}, extra
    assert _restored(job, again, tmp_path / "out") == disk.read_bytes()
