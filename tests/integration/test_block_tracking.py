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
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent.jobs import BackupResult, SourceJob, restore, run_backup
from protectctl.agent.snapshots import REFERENCE_PREFIX, source_tag
from protectctl.engine.repository import Repository
from tests.integration.loopfs import btrfs_mount, fresh_dir, xfs_mount  # noqa: F401  (fixtures)
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

    clock.tick(hours=1)
    nothing = run_backup(job, "sync", now=clock)
    assert nothing.bytes_read == 0

    clock.tick(hours=1)
    full = run_backup(job, "full", now=clock)
    extra = _extra(job, full.point_id)
    assert full.ok and extra["tracking_mismatches"] == 0 and full.silent_changes == 0
    for n, (point, expected) in enumerate(contents):
        assert _restored(job, point, tmp_path / f"out{n}") == expected


def test_a_file_written_during_the_sync_loses_no_change(
    xfs_mount: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
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


def test_a_reference_out_of_step_with_the_journal_is_not_trusted(xfs_mount: Path, tmp_path: Path) -> None:  # noqa: F811
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


def test_tracking_off_reads_whole_files_and_drops_the_references(xfs_mount: Path, tmp_path: Path) -> None:  # noqa: F811
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
