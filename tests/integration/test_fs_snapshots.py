"""Consistent snapshots of a filesystem source (agent/snapshots.py) on loop-mounted btrfs, and
what a filesystem without snapshots says."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.agent.snapshots import SNAPSHOT_PREFIX, btrfs_snapshot, source_tag
from protectctl.engine.repository import Repository
from protectctl.errors import ProviderError
from providers.filesystem import FilesystemProvider
from tests.integration.loopfs import fresh_dir
from tests.integration.test_filesystem_backup import PASS, Clock, make_job

pytestmark = pytest.mark.usefixtures("no_racy_slack")

DEAD_PID = 4194305  # above any pid_max: never a live process


def _extra(job: object, point_id: str) -> dict[str, object]:
    with Repository.open(job.storage, PASS) as repo:  # type: ignore[attr-defined]
        return dict(repo.load_point(point_id).extra)


def test_btrfs_point_is_the_instant_of_its_snapshot_taken_between_pre_and_post(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    src = fresh_dir(btrfs_mount, "snap")
    (src / "a.txt").write_text("before the snapshot")
    (src / "sub").mkdir()
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    nested = shutil.which("btrfs") is not None  # a nested subvolume is not in a snapshot: read live
    if nested:
        subprocess.run(["btrfs", "subvolume", "create", str(src / "nested")], check=True, capture_output=True)
        (src / "nested" / "n.txt").write_text("in a nested subvolume")
    seen = tmp_path / "seen-by-post"
    # The post script runs right after the snapshot: it sees it, and what it writes is not in the point.
    post = f"sh -c 'ls -a {btrfs_mount} > {seen}; echo after the snapshot > {src}/a.txt'"
    job = make_job(tmp_path, src, pre_script=f"sh -c 'test ! -e {seen}'", post_script=post)
    clock = Clock()
    first = run_backup(job, "sync", now=clock)
    assert first.ok, (first.errors, first.warnings)
    extra = _extra(job, first.point_id)
    assert extra["snapshot"] == "btrfs" and "snapshot_create_s" in extra and "snapshot_delete_s" in extra
    assert SNAPSHOT_PREFIX in seen.read_text()
    assert not any(p.name.startswith(SNAPSHOT_PREFIX) for p in btrfs_mount.iterdir())  # deleted after
    out = tmp_path / "out"
    restore(job, first.time + timedelta(seconds=1), target=out)
    assert (out / "a.txt").read_text() == "before the snapshot"
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    if nested:
        assert (out / "nested" / "n.txt").read_text() == "in a nested subvolume"
        assert extra["snapshot_live_subvolumes"] == ["nested"]
    # Read from a new snapshot each time, files keep their identity: an unchanged file is not read.
    seen.unlink()
    clock.tick(hours=1)
    second = run_backup(job, "sync", now=clock)
    assert second.ok and second.bytes_read == len("after the snapshot\n")


def test_a_killed_runs_snapshot_is_shown_by_status_and_deleted_by_the_next_sync(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    src = fresh_dir(btrfs_mount, "left")
    (src / "f").write_text("x")
    job = make_job(tmp_path, src, source="docs/leftover")
    left = btrfs_mount / f"{SNAPSHOT_PREFIX}{DEAD_PID}-{source_tag(job.source)}"
    btrfs_snapshot(btrfs_mount, left)
    problems = FilesystemProvider().status_problems(job.source, job.spec, [], tmp_path / "state")
    assert len(problems) == 1 and str(left) in problems[0]
    result = run_backup(job, "sync", now=Clock())
    assert result.ok and not left.exists()
    assert any(str(left) in note for note in _extra(job, result.point_id)["snapshot_cleanup"])  # type: ignore[attr-defined]
    assert FilesystemProvider().status_problems(job.source, job.spec, [], tmp_path / "state") == []


def test_ext4_points_say_they_are_not_snapshots_and_btrfs_cannot_be_forced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    job = make_job(tmp_path, src)
    result = run_backup(job, "sync", now=Clock())
    extra = _extra(job, result.point_id)
    if extra["filesystem"] in ("btrfs", "xfs"):
        pytest.skip(f"tmp_path is on {extra['filesystem']}: this test wants a filesystem without snapshots")
    assert extra["snapshot"] == "none" and "not a snapshot" in str(extra["snapshot_note"])
    forced = make_job(tmp_path, src, spec={"path": str(src), "snapshot": "btrfs"})
    with pytest.raises(ProviderError, match="no btrfs snapshot of .*: ext4 is not btrfs"):
        run_backup(forced, "sync", now=Clock(result.time + timedelta(hours=1)))
    (problem,) = FilesystemProvider().status_problems(forced.source, forced.spec, [], tmp_path / "state")
    assert "snapshot: btrfs, but" in problem and "every sync fails" in problem
