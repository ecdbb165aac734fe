"""Progress renderers for long-running work: rich bars on a TTY, quiet lines in CI, JSON lines.

All implement `protectctl.progress.Progress`; the engine and jobs never know which.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from rich.progress import Progress as RichBar
    from rich.progress import TaskID


class RichProgress:
    """Bars with files, bytes, rate and ETA (stderr, TTY only)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar: RichBar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[files]} files"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True)
        self._task: TaskID | None = None
        self._files = 0

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self.finish()
        self._bar.start()
        self._files = 0
        self._task = self._bar.add_task(task, total=total_bytes, files=0)

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        if self._task is not None:
            self._files += files
            self._bar.update(self._task, advance=bytes_done, files=self._files)

    def note(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
            self._bar.stop()


class LineProgress:
    """Plain lines, at most one every few seconds per phase (CI logs, journald)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._task = ""
        self._files = 0
        self._bytes = 0
        self._last = 0.0
        self._started = 0.0

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self._task, self._files, self._bytes = task, 0, 0
        self._started = self._last = time.monotonic()

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        self._files += files
        self._bytes += bytes_done
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._line("...")

    def note(self, message: str) -> None:
        sys.stderr.write(f"{message}\n")

    def finish(self) -> None:
        # a phase that ended quickly says nothing: CI logs keep only what took time
        if self._task and time.monotonic() - self._started >= 1.0:
            self._line("done")
        self._task = ""

    def _line(self, what: str) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        sys.stderr.write(f"{self._task} {what}: {self._files} files, {self._bytes / 1e6:.1f} MB "
                         f"({self._bytes / 1e6 / elapsed:.1f} MB/s)\n")


class JsonLinesProgress:
    """One JSON object per event on stderr (`--json` keeps stdout for the result)."""

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self._emit({"type": "start", "task": task, "total_bytes": total_bytes, "total_files": total_files})

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        return None  # too chatty for machines; start/finish/note carry the facts

    def note(self, message: str) -> None:
        self._emit({"type": "note", "message": message})

    def finish(self) -> None:
        self._emit({"type": "finish"})

    @staticmethod
    def _emit(doc: dict[str, object]) -> None:
        sys.stderr.write(json.dumps(doc) + "\n")


def progress_for(*, json_mode: bool, quiet: bool) -> Progress:
    if quiet:
        return NullProgress()
    if json_mode:
        return JsonLinesProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return LineProgress()
