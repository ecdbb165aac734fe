"""Filesystem protection end to end: real directories, real LocalStorage repositories."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, list_points, prune, restore, run_backup, status
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import ProviderError, RestoreError

# Files are written right before each sync: trust them at the next one (agent/journal.py).
pytestmark = pytest.mark.usefixtures("no_racy_slack")

PASS = b"correct horse"
T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A controllable `now` for jobs: each call returns the current value."""

    def __init__(self, start: datetime = T0) -> None:
        self.value = start

    def __call__(self) -> datetime:
        return self.value

    def tick(self, **delta: float) -> datetime:
        self.value += timedelta(**delta)
        return self.value


def make_job(tmp: Path, source_dir: Path, *, source: str = "docs/home", **overrides: object) -> SourceJob:
    repo_dir = tmp / "repo"
    storage = LocalStorage(repo_dir)
    if not Repository.exists(storage):
        Repository.init(storage, PASS, kdf_n=2**10)
    fields: dict[str, object] = {
        "source": source,
        "provider": "filesystem",
        "spec": {"path": str(source_dir)},
        "storage": storage,
        "passphrase": lambda: PASS,
        "state_dir": tmp / "state",
        "host": "testhost",
        "retention": RetentionSpec(keep_within_s=14 * 86400),
    }
    fields.update(overrides)
    return SourceJob(**fields)  # type: ignore[arg-type]


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: type, mode, mtime, content or link target, links."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes(), link)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return out


def populate(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello world\n" * 1000)
    (root / "sub" / "b.bin").write_bytes(os.urandom(3 << 20))
    (root / "sub" / "deep" / "c.txt").write_text("deep")
    (root / "exec.sh").write_text("#!/bin/sh\n")
    (root / "exec.sh").chmod(0o750)
    os.symlink("sub/deep/c.txt", root / "link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.link(root / "a.txt", root / "hard.txt")
    os.mkfifo(root / "fifo")
    with open(root / "sparse.img", "wb") as handle:
        handle.seek(8 << 20)
        handle.write(b"middle")
        handle.truncate(32 << 20)
    os.setxattr(root / "a.txt", "user.note", b"kept")
    os.utime(root / "sub" / "deep" / "c.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def test_sync_mutate_sync_restore_each_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    clock = Clock()
    job = make_job(tmp_path, src)

    first = run_backup(job, "sync", now=clock)
    assert first.ok and first.kind == "full" and first.files == 6
    expected = {first.point_id: snapshot_tree(src)}

    clock.tick(hours=1)
    (src / "a.txt").write_bytes(b"changed\n")
    (src / "sub" / "new.txt").write_text("new")
    (src / "sub" / "deep" / "c.txt").unlink()
    second = run_backup(job, "sync", now=clock)
    assert second.ok and second.kind == "sync"
    assert second.bytes_read < 1000  # only the two small changed files were read
    expected[second.point_id] = snapshot_tree(src)

    points = list_points(job.storage, PASS, "docs")
    assert [p.id for p in points] == [first.point_id, second.point_id]
    for index, point in enumerate(points):
        target = tmp_path / f"restore{index}"
        result = restore(job, point.time + timedelta(seconds=1), target=target)
        assert result.point_id == point.id
        assert result.verified == result.files - 1  # one hard link is linked, not written
        assert snapshot_tree(target) == expected[point.id]
    sparse = (tmp_path / "restore0" / "sparse.img").stat()
    assert sparse.st_size == 32 << 20 and sparse.st_blocks * 512 < 1 << 20
    assert os.getxattr(tmp_path / "restore0" / "a.txt", "user.note") == b"kept"
    links = tmp_path / "restore0"
    assert (links / "a.txt").stat().st_ino == (links / "hard.txt").stat().st_ino


def test_no_change_sync_reads_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    job = make_job(tmp_path, src)
    clock = Clock()
    run_backup(job, "sync", now=clock)
    clock.tick(minutes=15)
    again = run_backup(job, "sync", now=clock)
    assert again.ok and again.bytes_read == 0 and again.chunks_new == 0


def test_restore_before_first_point_names_earliest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    job = make_job(tmp_path, src)
    run_backup(job, "sync", now=Clock())
    with pytest.raises(RestoreError, match="earliest"):
        restore(job, T0 - timedelta(hours=1), target=tmp_path / "out")


def _check_clean(job: SourceJob) -> None:
    with Repository.open(job.storage, PASS) as repo:
        report = repo.check(read_data=True)
    assert report.ok, report.errors


def test_full_detects_silent_change(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "data.bin"
    victim.write_bytes(b"A" * 100_000)
    (src / "other.txt").write_text("unchanged")
    job = make_job(tmp_path, src)
    clock = Clock()
    run_backup(job, "sync", now=clock)
    # A silent change: new content under the same size and mtime (the bit rot or the tool
    # that restores mtimes a sync cannot see). ctime cannot be reset from user space, so
    # the journal's recorded identity is pinned to the file's new one instead.
    before = victim.stat()
    with open(victim, "r+b") as handle:
        handle.write(b"C")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    _pin_identity(tmp_path, "data.bin", victim)
    clock.tick(minutes=15)
    sync = run_backup(job, "sync", now=clock)
    assert sync.bytes_read == 0  # identity unchanged: a sync cannot see it
    clock.tick(minutes=15)
    full = run_backup(job, "full", now=clock)
    assert full.kind == "full" and full.silent_changes == 1
    assert full.bytes_read == 100_000 + len("unchanged")
    assert full.chunks_new == 1  # only the changed content is stored
    with Repository.open(job.storage, PASS) as repo:
        point = repo.load_point(full.point_id)
    assert point.extra["silent_changes"] == 1 and point.extra["silent_changed"] == ["data.bin"]
    out = tmp_path / "out"
    restore(job, "latest", target=out)
    assert (out / "data.bin").read_bytes() == b"C" + b"A" * 99_999


def _pin_identity(tmp: Path, rel: str, path: Path) -> None:
    """Rewrite the journal entry's identity to the file's current one (what a silent change keeps).

    ctime cannot be set from user space, so the test edits the agent's journal instead of
    the file: the effect is a file whose recorded identity matches but content differs.
    """
    import sqlite3

    st = path.stat()
    (db,) = (tmp / "state" / "journal").glob("*.db")
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE files SET dev=?, ino=?, size=?, mtime_ns=?, ctime_ns=? WHERE dir='' AND name=?",
        (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, rel),
    )
    # and as if that sync had started after the change (else the change is racy: re-read)
    conn.execute("UPDATE meta SET value=? WHERE key='started_ns'", (str(st.st_ctime_ns + 1),))
    conn.commit()
    conn.close()


class VanishAfterFirstFile:
    """A Progress that deletes a file once the first file was archived (a real race, made exact)."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        return None

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        if files and self.victim.exists():
            self.victim.unlink()

    def note(self, message: str) -> None:
        return None

    def finish(self) -> None:
        return None


def test_vanished_file_makes_incomplete_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first")
    (src / "b.txt").write_text("vanishes")
    job = make_job(tmp_path, src)
    result = run_backup(job, "sync", progress=VanishAfterFirstFile(src / "b.txt"), now=Clock())
    assert not result.complete and result.exit_code == 1
    assert result.errors == ("b.txt: vanished during the backup",)
    (point,) = list_points(job.storage, PASS, "docs/home")
    assert not point.complete and point.errors == result.errors
    statuses = status([job], now=T0)
    assert statuses[0].last_failure_message and "vanished" in statuses[0].last_failure_message
    metrics = (tmp_path / "state" / "metrics" / "protectctl.prom").read_text()
    assert 'protectctl_last_point_complete{host="testhost",source="docs/home"} 0' in metrics


def test_unreadable_file_makes_incomplete_point(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    (src / "secret.txt").write_text("nobody may read this")
    (src / "secret.txt").chmod(0)
    make_job(tmp_path, src)  # initialises the repository
    driver = (
        "import sys; from pathlib import Path;"
        "from tests.integration.test_filesystem_backup import make_job, Clock;"
        "from protectctl.agent.jobs import run_backup;"
        f"r = run_backup(make_job(Path({str(tmp_path)!r}), Path({str(src)!r})), 'sync', now=Clock());"
        "print(r.errors); sys.exit(r.exit_code)"
    )
    argv = [sys.executable, "-c", driver]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads everything; setpriv is needed to drop that power")
        # Root without these two capabilities obeys file permissions like anyone else.
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *argv]
    proc = subprocess.run(argv, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "secret.txt: Permission denied" in proc.stdout
    (point,) = list_points(make_job(tmp_path, src).storage, PASS)
    assert not point.complete and point.stats.files == 1


def test_pre_script_failure_makes_no_point_and_post_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    marker = tmp_path / "post-ran"
    pre = tmp_path / "pre.sh"
    pre.write_text("#!/bin/sh\necho quiesce failed: database busy\nexit 3\n")
    pre.chmod(0o755)
    post = tmp_path / "post.sh"
    post.write_text(f'#!/bin/sh\necho "$PROTECTCTL_STATUS" > {marker}\n')
    post.chmod(0o755)
    job = make_job(tmp_path, src, pre_script=str(pre), post_script=str(post))
    with pytest.raises(ProviderError, match="database busy"):
        run_backup(job, "sync", now=Clock())
    assert list_points(job.storage, PASS) == []
    assert marker.read_text().strip() == "failure"
    (st,) = status([job], now=T0)
    assert not st.sla_met and "database busy" in (st.last_failure_message or "")


def test_pre_script_timeout_is_enforced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    job = make_job(tmp_path, src, pre_script="sleep 30", script_timeout_s=1)
    with pytest.raises(ProviderError, match="timed out"):
        run_backup(job, "sync", now=Clock())


def test_scripts_succeeding_wrap_the_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    log = tmp_path / "log"
    job = make_job(
        tmp_path,
        src,
        pre_script=f"sh -c 'echo pre >> {log}'",
        post_script=f"sh -c 'echo post $PROTECTCTL_STATUS >> {log}'",
    )
    assert run_backup(job, "sync", now=Clock()).ok
    assert log.read_text().split("\n")[:2] == ["pre", "post success"]


def test_include_exclude(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "docs" / "cache").mkdir(parents=True)
    (src / "keep.txt").write_text("k")
    (src / "skip.tmp").write_text("s")
    (src / "cache" / "x").write_text("c")
    (src / "docs" / "cache" / "y").write_text("c")
    (src / "docs" / "a.md").write_text("m")
    job = make_job(tmp_path, src, spec={"path": str(src), "exclude": ["*.tmp", "cache/"]})
    run_backup(job, "sync", now=Clock())
    out = tmp_path / "out"
    restore(job, "latest", target=out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["docs", "docs/a.md", "keep.txt"]
    job2 = make_job(tmp_path, src, source="docs/md", spec={"path": str(src), "include": ["*.md"]})
    run_backup(job2, "sync", now=Clock())
    out2 = tmp_path / "out2"
    restore(job2, "latest", target=out2)
    assert sorted(str(p.relative_to(out2)) for p in out2.rglob("*")) == ["docs", "docs/a.md"]


def test_restore_subpaths_dry_run_and_non_empty_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    job = make_job(tmp_path, src)
    run_backup(job, "sync", now=Clock())
    out = tmp_path / "out"
    plan = restore(job, "latest", target=out, dry_run=True)
    assert plan.dry_run and plan.files == 6 and plan.fits and not out.exists()
    assert plan.bytes_needed < plan.bytes_total  # holes and the hard link are not needed
    part = restore(job, "latest", target=out, subpaths=["sub/deep", "exec.sh"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "exec.sh",
        "sub",
        "sub/deep",
        "sub/deep/c.txt",
    ]
    assert part.files == 2
    with pytest.raises(RestoreError, match="not empty"):
        restore(job, "latest", target=out)
    with pytest.raises(RestoreError, match="not in this recovery point"):
        restore(job, "latest", target=tmp_path / "o2", subpaths=["nope"])
    with pytest.raises(RestoreError, match="leaves"):
        restore(job, "latest", target=tmp_path / "o3", subpaths=["../etc"])
    # Original place, overwriting: a damaged file comes back.
    (src / "a.txt").write_text("damaged")
    restore(job, "latest", target=None, subpaths=["a.txt"], overwrite=True)
    assert (src / "a.txt").read_bytes() == b"hello world\n" * 1000


def test_prune_keeps_what_retention_demands(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    other_src = tmp_path / "other"
    other_src.mkdir()
    (other_src / "o").write_text("other")
    job = make_job(tmp_path, src, retention=RetentionSpec(keep_within_s=86400, daily=3, weekly=2))
    other = make_job(tmp_path, other_src, source="other/member", retention=RetentionSpec(keep_within_s=0))
    clock = Clock()
    other_point = run_backup(other, "sync", now=Clock(T0 - timedelta(days=30)))
    made = []
    for day in range(7):  # 13:00 and 01:00 (next day) UTC for a week from Sat 1 Aug 2026
        for hour in (1, 13):
            clock.value = T0 + timedelta(days=day, hours=hour)
            (src / "f.bin").write_bytes(os.urandom(200_000))
            made.append(run_backup(job, "sync", now=clock))
    now = T0 + timedelta(days=7)
    dry = prune([job], now=now, dry_run=True)
    # within 1 day: made[12], made[13]; daily 3 (Aug 8, 7, 6): made[13], made[12], made[10];
    # weekly 2 (ISO weeks 32, 31): made[13], made[2] (Sun 2 Aug 13:00).
    keep = {made[i].point_id for i in (2, 10, 12, 13)}
    assert {p.id for p in dry.forgotten} == {p.point_id for p in made} - keep
    assert {p.id for p in dry.kept} == keep
    assert list_points(job.storage, PASS, "docs") != []  # dry run forgot nothing
    assert len(list_points(job.storage, PASS, "docs/home")) == 14
    real = prune([job], now=now)
    assert {p.id for p in real.forgotten} == {p.id for p in dry.forgotten}
    left = {p.id for p in list_points(job.storage, PASS, "docs/home")}
    assert left == {p.point_id for p in made} - {p.id for p in dry.forgotten}
    assert [p.id for p in list_points(job.storage, PASS, "other")] == [other_point.point_id]
    _check_clean(job)
    for point_id in left:
        point = next(p for p in list_points(job.storage, PASS, "docs/home") if p.id == point_id)
        target = tmp_path / f"r-{point_id}"
        restore(job, point.time, target=target)
        assert (target / "f.bin").stat().st_size == 200_000


def test_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from protectctl.agent.lock import source_lock
    from protectctl.errors import LockedError

    src = tmp_path / "src"
    src.mkdir()
    job = make_job(tmp_path, src)
    with (
        source_lock(job.state_dir, job.source, "protectctl run sync docs/home"),
        pytest.raises(LockedError, match=f"pid {os.getpid()}"),
    ):
        run_backup(job, "sync", now=Clock())
    assert run_backup(job, "sync", now=Clock()).ok


def test_status_and_metrics(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    job = make_job(tmp_path, src, sync_interval_s=900, full_interval_s=86400)
    run_backup(job, "sync", now=Clock())
    (ok,) = status([job], now=T0 + timedelta(minutes=10))
    assert ok.sla_met and ok.last_point_kind == "full" and ok.repository_bytes
    (late,) = status([job], now=T0 + timedelta(hours=2))
    assert not late.sla_met and late.problems
    assert late.to_json()["last_point_time"] == T0.isoformat()
    metrics = (tmp_path / "state" / "metrics" / "protectctl.prom").read_text()
    stamp = int(T0.timestamp())  # exact, not 6 significant digits
    assert (
        f'protectctl_last_success_timestamp_seconds{{host="testhost",source="docs/home",kind="full"}} {stamp}'
        in metrics
    )
    assert 'protectctl_last_job_success{host="testhost",source="docs/home",kind="full"} 1' in metrics
