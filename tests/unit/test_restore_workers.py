"""Small files restored by worker processes (restore/workers.py): byte-exact with modes, times,
xattrs, hard links and sparse files, the same report as the threads' path; a chunk the index
has lost fails only its file; `parallelism: 1` starts no process; a worker killed fails only
the files it held, and `--resume` finishes them."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.errors import RestoreError
from protectctl.restore import fs, workers
from tests.integration.test_filesystem_backup import make_job, snapshot_tree


def _populate(src: Path) -> None:
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(40):
            (src / f"d{d}" / f"f{i:02}.txt").write_text(f"dir {d} file {i}\n" * (10 + 7 * i))
    os.chmod(src / "d1" / "f03.txt", 0o751)
    (src / "d0" / "big.bin").write_bytes(os.urandom(1 << 20))
    with open(src / "d2" / "sparse.img", "wb") as f:  # small and sparse: a worker's file
        f.write(b"head")
        f.seek(200 << 10)
        f.write(b"tail")
    os.link(src / "d1" / "f07.txt", src / "d3" / "hard.txt")
    os.symlink("d0/f01.txt", src / "link")
    with contextlib.suppress(OSError):  # a filesystem without user xattrs: the rest still counts
        os.setxattr(src / "d3" / "f10.txt", b"user.tag", b"kept")


def _xattrs(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    return {
        str(p.relative_to(root)): sorted((k, os.getxattr(p, k)) for k in os.listxattr(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One backup for the module's restores (each into its own target)."""
    base = tmp_path_factory.mktemp("restore-workers")
    src = base / "src"
    src.mkdir()
    _populate(src)
    assert run_backup(make_job(base, src), "sync").exit_code == 0
    return base, src


@pytest.fixture
def backed_up(repository: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(fs, "_BATCH_FILES", 16)  # several batches per directory
    monkeypatch.setattr(workers, "ENABLED", True)
    monkeypatch.setattr(workers, "SPAWN_AFTER_BATCHES", 0)
    monkeypatch.setattr(workers, "WAIT_FOR_WORKERS", True)  # every batch to a worker
    return repository


def _started(monkeypatch: pytest.MonkeyPatch) -> list[workers.RestoreWorkers]:
    made: list[workers.RestoreWorkers] = []
    real = workers.RestoreWorkers.start

    def start(self: workers.RestoreWorkers) -> None:
        made.append(self)
        real(self)

    monkeypatch.setattr(workers.RestoreWorkers, "start", start)
    return made


def test_workers_restore_byte_exact(
    backed_up: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tmp, src = backed_up
    out = tmp_path / "out"
    made = _started(monkeypatch)
    job = make_job(tmp, src, parallelism=2)
    result = restore(job, "latest", target=out)
    assert [w.started for w in made] == [2]
    assert result.files == 163 and result.verified == 162  # the hard link is a link
    assert snapshot_tree(out) == snapshot_tree(src)
    assert _xattrs(out) == _xattrs(src)
    assert os.stat(out / "d2" / "sparse.img").st_blocks * 512 < (100 << 10)  # still sparse


def test_parallelism_one_starts_no_process(
    backed_up: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tmp, src = backed_up
    out = tmp_path / "out"
    made = _started(monkeypatch)
    restore(make_job(tmp, src, parallelism=1), "latest", target=out)
    assert made == []
    assert snapshot_tree(out) == snapshot_tree(src)


def test_a_lost_chunk_fails_only_its_file(
    backed_up: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tmp, src = backed_up
    out = tmp_path / "out"
    made = _started(monkeypatch)
    from protectctl.engine.repository import Repository

    real = Repository.blob_location
    lost = (src / "d2" / "f05.txt").read_bytes()
    job = make_job(tmp, src, parallelism=2)

    def blob_location(self: Repository, blob_id: bytes):  # type: ignore[no-untyped-def]
        if blob_id == self.blob_id(lost):
            raise RestoreError("blob gone from the index (test)")
        return real(self, blob_id)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "blob_location", blob_location)
    with pytest.raises(RestoreError) as caught:
        restore(job, "latest", target=out)
    assert made and made[0].started == 2
    assert "1 entry could not be restored" in caught.value.message
    assert "d2/f05.txt" in caught.value.message and "partial file was removed" in caught.value.message
    assert not (out / "d2" / "f05.txt").exists()
    assert (out / "d2" / "f06.txt").read_bytes() == (src / "d2" / "f06.txt").read_bytes()


def test_a_killed_worker_fails_its_files_and_resume_finishes(
    backed_up: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each worker stops at its second batch (a crashpoint) and is SIGKILLed there: the files of
    those batches fail, the rest goes to the parent's threads, `--resume` finishes."""
    tmp, src = backed_up
    out = tmp_path / "out"
    made = _started(monkeypatch)
    announce = tmp_path / "announce"
    monkeypatch.setenv("PROTECTCTL_CRASH_POINT", "restore-worker-batch#2")
    monkeypatch.setenv("PROTECTCTL_CRASH_ANNOUNCE", str(announce))
    done = threading.Event()

    def killer() -> None:
        killed: set[int] = set()
        while not done.is_set():
            lines = announce.read_text().splitlines() if announce.exists() else []
            for pid in {int(line.split()[1]) for line in lines if line.endswith(tuple("0123456789"))} - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            done.wait(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    job = make_job(tmp, src, parallelism=2)
    try:
        with pytest.raises(RestoreError) as caught:
            restore(job, "latest", target=out)
    finally:
        done.set()
        thread.join()
    assert "restore worker process writing it failed (killed by a signal)" in caught.value.message
    assert made[0].started == 2
    monkeypatch.delenv("PROTECTCTL_CRASH_POINT")
    result = restore(job, "latest", target=out, resume=True)
    assert any("resumed" in n for n in result.notes), result.notes
    assert snapshot_tree(out) == snapshot_tree(src)
    assert _xattrs(out) == _xattrs(src)
