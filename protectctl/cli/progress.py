"""Progress renderers for long-running work: rich bars on a TTY, quiet lines in CI, JSON lines.

All implement `protectctl.progress.Progress`; the engine and jobs never know which. They
share one `Tally` so a bar, a CI line and a final line say the same thing in the same units
as the commands' summaries (`human_bytes`, files as a point counts them).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from protectctl.humanize import human_bytes
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from rich.progress import Progress as RichBar
    from rich.progress import TaskID


def clock(seconds: float) -> str:
    """`1:02:03`, `2:03`: an ETA or an elapsed time as a person reads it."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Tally:
    """One phase's counts, its totals once known, and what follows from them (%, rate, ETA).

    `advance` comes from the working thread, `total` from the pre-count's: plain attribute
    writes (the GIL makes each atomic); a renderer reads a consistent-enough view.
    """

    def __init__(self) -> None:
        self.reset("")

    def reset(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self.task = task
        self.files = 0
        self.bytes_done = 0
        self.total_files = total_files
        self.total_bytes = total_bytes
        # given at start (a restore counts first): final; else a pre-count fills them in
        self.final = total_files is not None or total_bytes is not None
        self.started = time.monotonic()

    def advance(self, files: int, bytes_done: int) -> None:
        self.files += files
        self.bytes_done += bytes_done

    def total(self, files: int, bytes_total: int, final: bool) -> None:
        if self.final and not final:
            return  # a partial count never replaces a whole one
        self.total_files, self.total_bytes, self.final = files, bytes_total, final

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def rate_bps(self) -> float:
        return self.bytes_done / self.elapsed()

    def percent(self) -> float | None:
        """Done, in percent of the final totals (bytes, or files when there are no bytes); None
        while they are not known. Capped at 100: a file may grow while it is read."""
        if not self.final:
            return None
        if self.total_bytes:
            return min(100.0, 100.0 * self.bytes_done / self.total_bytes)
        if self.total_files:
            return min(100.0, 100.0 * self.files / self.total_files)
        return 100.0  # nothing to do is all done

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, by the same measure as `percent` (bytes, or files
        when there are no bytes); None while the totals or a rate are not known."""
        if not self.final:
            return None
        if self.total_bytes:
            left, done = self.total_bytes - self.bytes_done, self.bytes_done
        elif self.total_files:
            left, done = self.total_files - self.files, self.files
        else:
            return 0.0
        if left <= 0:
            return 0.0
        rate = done / self.elapsed()
        return left / rate if rate > 0 else None

    def describe(self) -> str:
        """`1,234 of 5,000 files, 1.2 GB of 4.0 GB, 30%, 12.0 MB/s, ETA 0:45`, or the counts so
        far while the total is being counted."""
        rate = f"{human_bytes(self.rate_bps())}/s"
        if self.final:
            parts = [
                self._of(self.files, self.total_files, "files"),
                f"{human_bytes(self.bytes_done)}"
                + (f" of {human_bytes(self.total_bytes)}" if self.total_bytes is not None else ""),
                f"{self.percent():.0f}%",
                rate,
            ]
            eta = self.eta_s()
            parts.append(f"ETA {clock(eta)}" if eta is not None else "ETA unknown")
            return ", ".join(parts)
        line = f"{self.files:,} files, {human_bytes(self.bytes_done)}, {rate}"
        if self.total_files is not None:
            line += f" (counting the total: {self.total_files:,} files, {human_bytes(self.total_bytes)} so far)"
        return line

    def done_line(self) -> str:
        """The phase's last line: `upload done: 5,000 files, 4.0 GB in 0:12 (330.0 MB/s)`."""
        return (
            f"{self.task} done: {self.files:,} files, {human_bytes(self.bytes_done)} in {clock(self.elapsed())}"
            f" ({human_bytes(self.rate_bps())}/s)"
        )

    @staticmethod
    def _of(done: int, total: int | None, what: str) -> str:
        return f"{done:,} of {total:,} {what}" if total is not None else f"{done:,} {what}"


class RichProgress:
    """A bar with files, bytes, their totals, %, rate and ETA (stderr, TTY only). The figures
    are computed on rich's refresh (10/s), never per event: `advance` only adds."""

    wants_totals = True

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, ProgressColumn, Task, TextColumn
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        tally = self._tally = Tally()

        class _Bar(ProgressColumn):
            def render(self, task: Task) -> ProgressBar:
                pct = tally.percent()
                return ProgressBar(
                    total=100.0 if pct is not None else None,
                    completed=pct or 0.0,
                    width=30,
                    pulse=pct is None,
                    animation_time=task.get_time(),
                )

        class _Figures(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(tally.describe())

        self._bar: RichBar = Progress(
            TextColumn("[bold]{task.description}"), _Bar(), _Figures(), console=Console(stderr=True), transient=True
        )
        self._task: TaskID | None = None

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self.finish()
        self._tally.reset(task, total_bytes=total_bytes, total_files=total_files)
        self._bar.start()
        self._task = self._bar.add_task(task, total=None)

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        self._tally.advance(files, bytes_done)

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        self._tally.total(files, bytes_total, final)

    def note(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
            self._bar.stop()


class LineProgress:
    """Plain lines, at most one every few seconds per phase (CI logs, journald), with % and
    ETA once the total is known, and a last line in the summaries' units."""

    wants_totals = True

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._tally = Tally()
        self._last = 0.0
        self._printed = False

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self._tally.reset(task, total_bytes=total_bytes, total_files=total_files)
        self._last = time.monotonic()
        self._printed = False

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        self._tally.advance(files, bytes_done)
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._printed = True
            sys.stderr.write(f"{self._tally.task}: {self._tally.describe()}\n")

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        self._tally.total(files, bytes_total, final)

    def note(self, message: str) -> None:
        sys.stderr.write(f"{message}\n")

    def finish(self) -> None:
        # a phase that ended quickly says nothing: CI logs keep only what took time
        if self._tally.task and (self._printed or self._tally.elapsed() >= 1.0):
            sys.stderr.write(self._tally.done_line() + "\n")
        self._tally.task = ""


class JsonLinesProgress:
    """One JSON object per event on stderr (`--json` keeps stdout for the result). No pre-count:
    per-item events are too chatty for machines, so nobody would read the totals it gives."""

    wants_totals = False

    def __init__(self) -> None:
        self._tally = Tally()

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        self._tally.reset(task, total_bytes=total_bytes, total_files=total_files)
        self._emit({"type": "start", "task": task, "total_bytes": total_bytes, "total_files": total_files})

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        self._tally.advance(files, bytes_done)  # counted, emitted with finish

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        if final:
            self._emit({"type": "total", "task": self._tally.task, "total_files": files, "total_bytes": bytes_total})

    def note(self, message: str) -> None:
        self._emit({"type": "note", "message": message})

    def finish(self) -> None:
        self._emit(
            {
                "type": "finish",
                "task": self._tally.task,
                "files": self._tally.files,
                "bytes": self._tally.bytes_done,
                "duration_s": round(self._tally.elapsed(), 3),
            }
        )

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
