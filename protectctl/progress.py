"""The small Progress protocol long-running work reports to.

The engine and jobs emit events here and never print; the CLI plugs in rich bars on a
TTY, plain lines in CI, or JSON lines under `--json`.

Counting conventions, the same in every renderer and in the summaries: `files` are regular
files (never directories or symlinks: a point's "N files" counts the same things), `bytes`
are their logical sizes (a reused or deduplicated file's bytes are done as surely as a read
one's). A phase's totals come with `start` when the work knows them up front (a restore
counts its selection first), or later through `total` when they are counted alongside (a
backup's pre-count walks the source while the archiver reads it).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    # True when the renderer shows totals (a percentage, an ETA): the backup then counts its
    # source alongside (agent/precount.py). False for renderers nobody reads: no extra walk.
    wants_totals: bool

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        """A phase begins (e.g. "scan", "upload", "restore", "check")."""

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        """Some work of the current phase is done."""

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        """The current phase's totals, counted alongside the work (from another thread).
        `final` false: the count so far (the walk goes on); true: the whole of it."""

    def note(self, message: str) -> None:
        """A line worth telling a person (a skipped file, a warning)."""

    def finish(self) -> None:
        """The current phase ended."""


class NullProgress:
    """Progress that ignores every event (library callers, tests)."""

    wants_totals = False

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        return None

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        return None

    def total(self, *, files: int, bytes_total: int, final: bool = True) -> None:
        return None

    def note(self, message: str) -> None:
        return None

    def finish(self) -> None:
        return None


def wants_totals(progress: object) -> bool:
    """Whether `progress` shows totals (a Progress written before `total` existed does not)."""
    return bool(getattr(progress, "wants_totals", False)) and callable(getattr(progress, "total", None))
