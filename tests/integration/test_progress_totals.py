"""Backup and restore progress with totals (issue 11 "progress shows `?` for the total",
issue 12 item 5): a pre-count walks the source alongside the backup; its totals equal what
the point holds, the done counts reach them (100 %), and the lines say %, ETA and the
summaries' units (files, not files + dirs; human_bytes)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.cli.progress import LineProgress, Tally
from protectctl.humanize import human_bytes
from tests.integration.test_filesystem_backup import Clock, make_job


class Recorder:
    """A Progress that wants totals and records every event. The first `advance` of the upload
    waits for the pre-count's final total, so the test does not race the count (a real
    renderer never waits)."""

    wants_totals = True

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self.tally = Tally()
        self.counted = threading.Event()
        self.totals: list[tuple[int, int, bool]] = []

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self.tally.reset(task, total_bytes=total_bytes, total_files=total_files)
        self.events.append(("start", {"task": task, "total_bytes": total_bytes, "total_files": total_files}))

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        if self.tally.task == "upload":
            assert self.counted.wait(30), "the pre-count never reported its total"
        self.tally.advance(files, bytes_done)

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        self.totals.append((files, bytes_total, final))
        self.tally.total(files, bytes_total, final)
        if final:
            self.counted.set()

    def note(self, message: str) -> None:
        return None

    def finish(self) -> None:
        return None


def _tree(root: Path) -> tuple[int, int]:
    """A source with what counting can get wrong; returns (files, bytes) the point must hold."""
    files = size = 0
    for d in range(6):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(25):
            data = os.urandom(97 * i + d)
            (sub / f"f{i}.dat").write_bytes(data)
            files, size = files + 1, size + len(data)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    files, size = files + 1, size + (3 << 20)
    os.link(root / "big.bin", root / "big.link")  # a hard link: counted per name, as the point does
    files, size = files + 1, size + (3 << 20)
    (root / "empty").mkdir()
    os.symlink("big.bin", root / "sym")  # not a file
    (root / "cache").mkdir()
    (root / "cache" / "skip.dat").write_bytes(b"x" * 5000)  # excluded
    (root / "note.tmp").write_bytes(b"y" * 700)  # excluded
    return files, size


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, int, int]:
    src = tmp_path / "src"
    src.mkdir()
    files, size = _tree(src)
    return src, files, size


def test_backup_totals_equal_the_tree_and_reach_100_percent(tmp_path: Path, source: tuple[Path, int, int]) -> None:
    src, files, size = source
    job = make_job(tmp_path, src, spec={"path": str(src), "exclude": ["cache/", "*.tmp"]})
    clock = Clock()
    for kind in ("sync", "sync", "full"):  # first (read), no change (reused from the journal), full
        rec = Recorder()
        result = run_backup(job, kind, progress=rec, now=clock)  # type: ignore[arg-type]
        clock.tick(hours=1)
        assert (result.files, result.bytes_total) == (files, size)
        assert rec.totals[-1] == (files, size, True)
        assert (rec.tally.files, rec.tally.bytes_done) == (files, size), kind
        assert rec.tally.percent() == 100.0 and rec.tally.eta_s() == 0.0
        assert "?" not in rec.tally.describe()


def test_lines_show_percent_eta_and_the_summary_units(
    tmp_path: Path, source: tuple[Path, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    src, files, size = source
    job = make_job(tmp_path, src, spec={"path": str(src), "exclude": ["cache/", "*.tmp"]})
    lines = LineProgress(interval_s=0)  # a line per event: what CI shows every few seconds
    counted = threading.Event()
    total = lines.total

    def total_then_release(**kw: object) -> None:
        total(**kw)  # type: ignore[arg-type]
        if kw.get("final"):
            counted.set()

    lines.total = total_then_release  # type: ignore[method-assign]
    advance = lines.advance

    def advance_once_counted(**kw: int) -> None:
        assert counted.wait(30)
        advance(**kw)

    lines.advance = advance_once_counted  # type: ignore[method-assign]
    result = run_backup(job, "sync", progress=lines, now=Clock())
    err = capsys.readouterr().err.splitlines()
    upload = [line for line in err if line.startswith("upload: ")]
    assert upload and all(" of " in line and "%" in line and "ETA" in line for line in upload)
    assert "?" not in "\n".join(err)
    assert upload[-1].startswith(
        f"upload: {files:,} of {files:,} files, {human_bytes(size)} of {human_bytes(size)}, 100%"
    )
    assert f"upload done: {result.files:,} files, {human_bytes(result.bytes_total)} in " in err[-1]

    restored = tmp_path / "out"
    restore(job, "latest", target=restored, progress=LineProgress(interval_s=0))
    err = capsys.readouterr().err.splitlines()
    shown = [line for line in err if line.startswith("restore: ")]
    assert shown and all(re.search(r" of \d[\d,]* files, .* of .*, \d+%, .*ETA ", line) for line in shown)
    assert shown[-1].startswith(
        f"restore: {files:,} of {files:,} files, {human_bytes(size)} of {human_bytes(size)}, 100%"
    )  # files, not files + directories
    assert err[-1].startswith(f"restore done: {files:,} files, {human_bytes(size)} in ")


def test_precount_follows_includes_and_stops_with_the_backup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "keep" / "deep").mkdir(parents=True)
    (src / "other").mkdir()
    (src / "keep" / "deep" / "a.txt").write_bytes(b"a" * 10)
    (src / "keep" / "b.log").write_bytes(b"b" * 20)
    (src / "other" / "c.txt").write_bytes(b"c" * 40)
    job = make_job(tmp_path, src, spec={"path": str(src), "include": ["keep/"], "exclude": ["*.log"]})
    rec = Recorder()
    result = run_backup(job, "sync", progress=rec, now=Clock())  # type: ignore[arg-type]
    assert (result.files, result.bytes_total) == (1, 10)
    assert rec.totals[-1] == (1, 10, True)
    assert not [t for t in threading.enumerate() if t.name == "precount"]
