"""The change journal's watcher (agent/watch.py): real fanotify, as root."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl.agent import archive, fanotify, watch
from protectctl.agent.changes import journal_problems
from protectctl.agent.jobs import BackupResult, SourceJob, restore, run_backup
from protectctl.agent.watch import DIR, GONE, TREE, Cut, Watcher, read_header, read_records, request_cut, watch_dir
from protectctl.cli.progress import LineProgress
from protectctl.engine.repository import Repository
from tests.conftest import cli_argv, cli_env, copy_example, run_cli, wait_until
from tests.integration.loopfs import fresh_dir
from tests.integration.test_browse import fast_repository
from tests.integration.test_filesystem_backup import PASS, Clock, make_job, snapshot_tree

_WHY = fanotify.unsupported()
pytestmark = [
    pytest.mark.skipif(_WHY is not None, reason=f"no fanotify here: {_WHY}"),
    pytest.mark.usefixtures("no_racy_slack"),
]


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    root = tmp_path / "src"
    root.mkdir()
    w = Watcher("g/m", root, tmp_path / "state")
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(60)


def _records(w: Watcher, start: int, cut: Cut) -> list[tuple[int, bytes]]:
    data = (watch_dir(w.state_dir, w.source) / "log").read_bytes()
    header = read_header(data)
    assert header is not None and header.generation == cut.generation
    found = read_records(data, max(start, header.size), cut.offset)
    assert found is not None
    return found


def test_cut_holds_every_change_made_before_it(watcher: Watcher, monkeypatch: pytest.MonkeyPatch) -> None:
    root = watcher.root
    first = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(first, Cut)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x")
    (root / "top").write_bytes(b"y")
    os.rename(root / "a" / "b", root / "a" / "c")
    os.chmod(root / "a", 0o700)
    cut = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(cut, Cut) and cut.generation == first.generation
    records = set(_records(watcher, first.offset, cut))
    assert {(DIR, b""), (TREE, b"a"), (DIR, b"a"), (GONE, b"a/b"), (TREE, b"a/c")} <= records
    # the file's directory, by the name it had when the watcher placed the event
    assert (DIR, b"a/b") in records or (DIR, b"a/c") in records
    # nothing outside the root, nothing twice within one cut
    assert len(records) == len(_records(watcher, first.offset, cut))
    again = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(again, Cut) and again.offset == cut.offset  # no change: nothing recorded
    monkeypatch.setattr(watch, "ROTATE_BYTES", 0)  # a log too big: each cut now starts a new one
    rotating = request_cut(watcher.state_dir, watcher.source)  # answered in the old generation
    assert isinstance(rotating, Cut) and (rotating.generation, rotating.offset) == (cut.generation, cut.offset)
    (root / "after").mkdir()
    rotated = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(rotated, Cut) and rotated.generation != cut.generation
    assert (rotated.rotated_from, rotated.rotated_at) == (cut.generation, cut.offset)
    # the old generation is kept as log.prev, whole; the change is in the new one
    directory = watch_dir(watcher.state_dir, watcher.source)
    older = read_header((directory / "log.prev").read_bytes())
    newer = read_header((directory / "log").read_bytes())
    assert older is not None and newer is not None
    assert (older.generation, newer.rotated_from) == (rotated.generation, rotated.generation)  # rotated again
    assert (TREE, b"after") in (read_records((directory / "log.prev").read_bytes(), older.size, rotated.offset) or [])


def test_no_watcher_is_a_reason(tmp_path: Path) -> None:
    assert request_cut(tmp_path, "g/none") == "the watcher is not running"


# -- syncs through the journal ---------------------------------------------------------------


def _point_extra(job: SourceJob, point_id: str) -> dict[str, object]:
    with Repository.open(job.storage, PASS) as repo:
        return dict(repo.load_point(point_id).extra)


def _restores_as(job: SourceJob, result: BackupResult, expected: object, target: Path) -> None:
    restore(job, result.time + timedelta(seconds=1), target=target)
    assert snapshot_tree(target) == expected


def test_sync_walks_only_what_changed_and_restores_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "keep" / "deep").mkdir(parents=True)
    (src / "keep" / "deep" / "k.txt").write_text("kept")
    (src / "work").mkdir()
    (src / "work" / "w.txt").write_text("one")
    (src / "hard").mkdir()
    (src / "hard" / "a").write_text("linked")
    os.link(src / "hard" / "a", src / "work" / "a-link")
    job = make_job(tmp_path, src, spec={"path": str(src), "change_journal": "watch"})
    clock = Clock()
    w = Watcher(job.source, src, job.state_dir)
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        assert journal_problems(job.state_dir, job.source) == []
        first = run_backup(job, "sync", now=clock)
        extra = _point_extra(job, first.point_id)
        assert (extra["journal"], extra["walk"]) == ("on", "full")
        assert extra["walk_note"] == "a full reads everything"  # the first point is a full

        clock.tick(hours=1)
        (src / "work" / "w.txt").write_text("two!")
        (src / "work" / "new" / "n").mkdir(parents=True)
        (src / "work" / "new" / "n" / "f").write_text("fresh")
        os.rename(src / "keep" / "deep", src / "work" / "moved")
        with open(src / "hard" / "a", "a") as handle:  # through the other link
            handle.write(" more")
        second = run_backup(job, "sync", now=clock)
        extra = _point_extra(job, second.point_id)
        assert extra["walk"] == "journal", extra["walk_note"]
        assert second.files == first.files + 1
        _restores_as(job, second, snapshot_tree(src), tmp_path / "r2")

        clock.tick(hours=1)

        def no_count(*args: object, **kwargs: object) -> None:
            raise AssertionError("a journal walk started the pre-count: it would lstat every file")

        with monkeypatch.context() as patch:  # a renderer that shows totals (the timers' LineProgress)
            patch.setattr(archive, "PreCount", no_count)
            third = run_backup(job, "sync", now=clock, progress=LineProgress(interval_s=3600))
        # nothing changed: only the root is walked
        extra = _point_extra(job, third.point_id)
        assert extra["walk"] == "journal" and third.bytes_read == 0
        assert extra["walk_dirs"] <= 3  # the root and the directories with hard links
        _restores_as(job, third, snapshot_tree(src), tmp_path / "r3")

        # the log passes its size limit: each cut now starts a new generation, and the
        # journal goes on across it (the rotating cut is the old one's; then via log.prev)
        monkeypatch.setattr(watch, "ROTATE_BYTES", 0)
        for step, name in enumerate(("rotating", "rotated")):
            clock.tick(hours=1)
            (src / "keep" / f"{name}.txt").write_text(name)
            point = run_backup(job, "sync", now=clock)
            extra = _point_extra(job, point.point_id)
            assert extra["walk"] == "journal", (name, extra["walk_note"])
            assert point.files == third.files + step + 1
            _restores_as(job, point, snapshot_tree(src), tmp_path / f"r-{name}")
        monkeypatch.undo()
    finally:
        w.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert journal_problems(job.state_dir, job.source) == [
        "change journal: the watcher is not running; every sync walks the whole tree until it runs"
    ]
    clock.tick(hours=1)
    (src / "keep" / "late.txt").write_text("written while no watcher ran")
    fourth = run_backup(job, "sync", now=clock)
    assert _point_extra(job, fourth.point_id)["walk_note"] == "the watcher is not running"
    _restores_as(job, fourth, snapshot_tree(src), tmp_path / "r4")


# -- the watcher killed at random instants ---------------------------------------------------

_WATCHER = "import sys; from pathlib import Path; from protectctl.agent.watch import watch_source; " + (
    "watch_source(sys.argv[1], [sys.argv[2]], Path(sys.argv[3]), supervise=False)"
)


class _WatcherProcess:
    def __init__(self, job: SourceJob, src: Path) -> None:
        self.job, self.src = job, src
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-c", _WATCHER, self.job.source, str(self.src), str(self.job.state_dir)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        wait_until(lambda: isinstance(request_cut(self.job.state_dir, self.job.source, 1.0), Cut), "the watcher")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)


def _listing(src: Path) -> tuple[list[Path], list[Path]]:
    dirs, files = [src], []
    for top, subdirs, names in os.walk(src):
        dirs += [Path(top) / d for d in sorted(subdirs)]
        files += [Path(top) / f for f in sorted(names)]
    return dirs, files


def _mutate(src: Path, rng: random.Random, count: int, on_op: Callable[[int], None]) -> None:
    """`count` seeded changes: creates, appends, renames of files and directories, deletes,
    nested new directories (the listing is refreshed every few changes; a change whose
    target has moved since is skipped)."""
    dirs: list[Path] = []
    files: list[Path] = []
    for op in range(count):
        on_op(op)
        if op % 10 == 0:
            dirs, files = _listing(src)
        shallow = [d for d in dirs if len(d.relative_to(src).parts) <= 3]
        where = rng.choice(shallow)
        roll = rng.random()
        try:
            if roll < 0.35 or not files:
                (where / f"f{op}").write_bytes(rng.randbytes(rng.randrange(1, 3000)))
            elif roll < 0.55:
                with open(rng.choice(files), "ab") as handle:
                    handle.write(rng.randbytes(rng.randrange(1, 500)))
            elif roll < 0.65:
                os.rename(rng.choice(files), where / f"r{op}")
            elif roll < 0.75:
                rng.choice(files).unlink()
            elif roll < 0.87:
                deep = where / f"d{op}" / "x" / "y"
                deep.mkdir(parents=True)
                (deep / "in").write_bytes(rng.randbytes(100))
            elif roll < 0.95:
                moving = rng.choice(dirs)
                target = rng.choice(shallow[:20]) / f"m{op}"
                if moving != src and not target.is_relative_to(moving):
                    os.rename(moving, target)
            else:
                gone = rng.choice(dirs)
                if gone != src:
                    shutil.rmtree(gone)
        except (FileNotFoundError, NotADirectoryError):
            pass  # moved or removed since the listing


@pytest.mark.parametrize("seed", [13])
def test_watcher_killed_at_random_instants_every_point_equals_the_tree(
    xfs_mount: Path, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    src = fresh_dir(xfs_mount, "watch")
    job = make_job(tmp_path, src, spec={"path": str(src), "change_journal": "watch", "snapshot": "none"})
    watcher = _WatcherProcess(job, src)
    watcher.start()
    clock = Clock()
    expected: dict[str, object] = {}
    walks: list[tuple[str, str]] = []
    rounds = 6
    kill_rounds = set(rng.sample(range(1, rounds), 2))  # a kill at a seeded instant of these rounds
    try:
        _mutate(src, rng, 200, lambda _op: None)
        for index in range(rounds):
            kill_at = rng.randrange(200) if index in kill_rounds else -1

            def maybe_kill(op: int, kill_at: int = kill_at) -> None:
                if op == kill_at:
                    watcher.kill()
                    watcher.start()  # the service manager restarts it: another generation

            _mutate(src, rng, 200, maybe_kill)
            clock.tick(hours=1)
            result = run_backup(job, "sync", now=clock)
            assert result.ok, result.errors
            expected[result.point_id] = snapshot_tree(src)
            extra = _point_extra(job, result.point_id)
            walks.append((str(extra["walk"]), str(extra["walk_note"])))
            if index in kill_rounds:
                assert walks[-1] == ("full", "the watcher restarted since the last point")
            elif index > 0:
                assert walks[-1][0] == "journal", walks
        # an overflow: the watcher stopped while more events than its queue holds arrive
        watcher.kill(signal.SIGSTOP)
        flood = src / "flood"
        flood.mkdir()
        # 17,000 names created and deleted (the kernel merges the two events of one name):
        # more than the 16,384 events the queue holds
        for n in range(17_000):
            os.close(os.open(flood / str(n), os.O_CREAT | os.O_WRONLY, 0o600))
        for n in range(17_000):
            os.unlink(flood / str(n))
        watcher.kill(signal.SIGCONT)
        clock.tick(hours=1)
        result = run_backup(job, "sync", now=clock)
        expected[result.point_id] = snapshot_tree(src)
        extra = _point_extra(job, result.point_id)
        assert (extra["walk"], extra["walk_note"]) == ("full", "the watcher's queue overflowed: events were lost")
    finally:
        if watcher.proc is not None:
            watcher.proc.kill()
            watcher.proc.wait(10)
    assert sum(1 for walk, _ in walks if walk == "journal") >= rounds - 1 - len(kill_rounds)
    for number, (point_id, tree) in enumerate(expected.items()):
        target = tmp_path / f"restore{number}"
        with Repository.open(job.storage, PASS) as repo:
            when = repo.load_point(point_id).time
        restore(job, when + timedelta(seconds=1), target=target)
        assert snapshot_tree(target) == tree, f"point {number} ({walks[number] if number < len(walks) else 'flood'})"


# -- through the CLI, as apply installs it ---------------------------------------------------


def test_apply_installs_the_watcher_and_syncs_say_how_they_walked(tmp_path: Path) -> None:
    policy = copy_example("quickstart", tmp_path / "qs")
    text = (policy / "protect.yaml").read_text()
    (policy / "protect.yaml").write_text(
        text.replace('exclude: ["*.tmp"]}', 'exclude: ["*.tmp"], changeJournal: watch}')
    )
    fast_repository(policy)
    run_cli(policy, "-q", "apply", "--auto-approve")
    root = policy / ".protectctl" / "root"
    (unit,) = root.glob("etc/systemd/system/*-watch.service")
    unit_text = unit.read_text()
    assert "Restart=always" in unit_text and "agent watch docs --member home" in unit_text, unit_text
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the unit as systemd reads it: no warning may name it
        checked = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
        )
        assert checked.returncode == 0 and unit.name not in checked.stderr, checked.stderr

    agent_config = next(root.glob("etc/protectctl/agent.yaml"))
    argv = cli_argv(policy, "--agent-config", str(agent_config), "agent", "watch", "docs", "--member", "home")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    try:
        wait_until(lambda: proc.poll() is not None or any(root.rglob("watch/*/log")), "the watcher is up")
        assert proc.poll() is None, proc.communicate()
        run_cli(policy, "-q", "run", "sync", "docs")  # the first point is a full
        (policy / "data" / "hello.txt").write_text("changed while watched\n")
        run_cli(policy, "-q", "run", "sync", "docs")
        listed = run_cli(policy, "points", "list", "docs/home").stdout
        assert "+journal" in listed and "walk: journal (1 changed directory)" in listed, listed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.communicate()


_SYNC = (
    "import sys; from pathlib import Path; from protectctl.agent.jobs import run_backup; "
    "from tests.integration.test_filesystem_backup import make_job; "
    "src = Path(sys.argv[2]); "
    "run_backup(make_job(Path(sys.argv[1]), src, spec={'path': str(src), 'change_journal': 'watch'}), 'sync')"
)


def test_a_sync_killed_before_its_journal_commits_is_replayed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one").write_text("1")
    job = make_job(tmp_path, src, spec={"path": str(src), "change_journal": "watch"})
    w = Watcher(job.source, src, job.state_dir)
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        run_backup(job, "sync")
        run_backup(job, "sync")  # records a cut
        (src / "a" / "two").write_text("2")
        announce = tmp_path / "announce"
        env = cli_env({"PROTECTCTL_CRASH_POINT": "journal.in_place_commit", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)})
        proc = subprocess.Popen([sys.executable, "-c", _SYNC, str(tmp_path), str(src)], env=env)
        wait_until(lambda: announce.exists() or proc.poll() is not None, "the sync reaches its journal commit")
        proc.kill()
        proc.wait(10)
        assert announce.exists()
        assert list((job.state_dir / "journal").glob("*.db-journal"))  # SQLite's, left by the kill
        (src / "a" / "three").write_text("3")
        last = run_backup(job, "sync")
        extra = _point_extra(job, last.point_id)
        assert extra["walk"] == "journal", extra["walk_note"]  # the range since the old cut, again
        assert not list((job.state_dir / "journal").glob("*.db-journal"))
        _restores_as(job, last, snapshot_tree(src), tmp_path / "r")
    finally:
        w.stop()
        thread.join(60)
