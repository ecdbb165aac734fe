"""The small Progress protocol long-running work reports to.

The engine and jobs emit events here and never print; the CLI plugs in rich bars on a
TTY, plain lines in CI, or JSON lines under `--json`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        """A phase begins (e.g. "scan", "upload", "restore", "check")."""

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        """Some work of the current phase is done."""

    def note(self, message: str) -> None:
        """A line worth telling a person (a skipped file, a warning)."""

    def finish(self) -> None:
        """The current phase ended."""


class NullProgress:
    """Progress that ignores every event (library callers, tests)."""

    def start(self, task: str, *, total_bytes: int | None = None, total_files: int | None = None) -> None:
        return None

    def advance(self, *, files: int = 0, bytes_done: int = 0) -> None:
        return None

    def note(self, message: str) -> None:
        return None

    def finish(self) -> None:
        return None
