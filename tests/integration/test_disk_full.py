"""A full disk under the state or the agent's state directory, on a real full filesystem.

Each test mounts a small tmpfs (root only; skipped, saying why, where mounting is not allowed),
fills it to ENOSPC with a real file, and runs the real job or CLI: the user gets a clear
message and exit 1 (never "internal error", exit 70), a point saved before the disk filled
counts as saved, and nothing is left behind that keeps the disk full.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protectctl.agent.jobs import list_points, run_backup
from protectctl.agent.status import read_status
from protectctl.errors import StateError
from tests.conftest import run_cli
from tests.integration.test_filesystem_backup import PASS, make_job

Mount = Callable[[Path, str], Path]


@pytest.fixture
def small_fs() -> Iterator[Mount]:
    """mount(DIR, SIZE): a tmpfs of SIZE at DIR, unmounted after the test."""
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs for a full-disk test (needs root): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; returns it (delete it to free the space)."""
    filler = directory / "filler"
    block = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    # a last page may remain where a smaller write still fits: take it too
    with filler.open("ab", buffering=0) as out:
        for size in (2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):
            try:
                out.write(b"\0" * size)
            except OSError:
                continue
    return filler


def many_files(root: Path, count: int) -> Path:
    """A source whose change journal is far bigger than the small filesystem."""
    for index in range(count):
        sub = root / f"d{index % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file-with-a-longish-name-{index:05d}.txt").write_text(f"content {index}\n")
    return root


def test_agent_state_dir_full_before_the_run_is_a_clear_error(tmp_path: Path, small_fs: Mount) -> None:
    state_dir = small_fs(tmp_path / "state", "256k")
    job = make_job(tmp_path, many_files(tmp_path / "src", 10), state_dir=state_dir)
    (state_dir / "locks").mkdir()
    filler = fill(state_dir)
    with pytest.raises(StateError) as caught:  # once: OSError, "internal error", exit 70
        run_backup(job, "sync")
    assert "no space left: the filesystem is full" in caught.value.message
    assert "no recovery point was started" in (caught.value.hint or "")
    filler.unlink()
    assert run_backup(job, "sync").ok


def test_journal_commit_on_a_full_disk_keeps_the_point_and_leaves_nothing(tmp_path: Path, small_fs: Mount) -> None:
    state_dir = small_fs(tmp_path / "state", "256k")
    job = make_job(tmp_path, many_files(tmp_path / "src", 3000), state_dir=state_dir)
    for attempt in range(2):  # once: the 2 MB journal left behind made every later sync fail
        result = run_backup(job, "sync")
        assert result.ok and result.exit_code == 0, result  # the point is saved: the run succeeded
        (note,) = result.notes
        assert f"point {result.point_id[:12]} is saved, but the change journal" in note
        assert "no space left: the filesystem is full" in note
        assert [p for p in (state_dir / "journal").iterdir() if p.name.endswith(".new")] == []
        assert read_status(state_dir, "docs/home")["last_success"]["point_id"] == result.point_id
        assert len(list_points(job.storage, PASS, "docs")) == attempt + 1


def test_control_state_dir_full_is_a_clear_error(quickstart: Path, small_fs: Mount) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    state = quickstart / ".protectctl" / "state"
    (quickstart / "settings.yaml").write_text(
        "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {name: settings}\n"
        f"spec: {{state: {{path: {state}/state.json}}}}\n"
    )
    small_fs(state, "64k")
    filler = fill(state)
    for command in (["plan"], ["apply", "--auto-approve"]):
        proc = run_cli(quickstart, *command, expect=1)  # once: "internal error", exit 70
        assert "no space left: the filesystem is full" in proc.stderr, proc.stderr
        assert "free space where the state lives" in proc.stderr
    filler.unlink()
    run_cli(quickstart, "apply", "--auto-approve")


def test_cli_sync_with_a_full_agent_state_dir_exits_1(quickstart: Path, small_fs: Mount) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    run_cli(quickstart, "run", "sync", "docs")
    state_dir = next(quickstart.glob(".protectctl/root/**/locks")).parent
    saved = {p: p.read_bytes() for p in state_dir.rglob("*") if p.is_file()}
    small_fs(state_dir, "1m")
    for path, data in saved.items():  # the agent's state as it was, now on the small filesystem
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    filler = fill(state_dir)
    proc = run_cli(quickstart, "run", "sync", "docs", expect=1)
    assert "no space left: the filesystem is full" in proc.stdout + proc.stderr
    os.unlink(filler)
    run_cli(quickstart, "run", "sync", "docs")
