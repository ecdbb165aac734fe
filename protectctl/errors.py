"""The one error tree of protectctl.

Every error a user may see is a `ProtectctlError`: its message is fit for users, its
`hint` says what would be right, and `exit_code` is what the CLI exits with. Lower layers
translate foreign errors (OSError, paramiko, psycopg) into these at their boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class ProtectctlError(Exception):
    """An error whose text is fit for users."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a policy file; line and column are 1-based, as editors count."""

    file: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


# What a diagnostic may echo of the user's input: a 10 MB name was once printed whole.
MAX_DIAGNOSTIC_CHARS = 400


def clip(text: str, limit: int = MAX_DIAGNOSTIC_CHARS) -> str:
    """`text` cut to about `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}…[{len(text) - 2 * keep:,} characters cut]…{text[-keep:]}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in the policy: where, what is wrong, what would be right (each text
    bounded: whatever of the policy it quotes is clipped)."""

    severity: Severity
    summary: str
    location: Location | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", clip(self.summary))
        if self.detail is not None:
            object.__setattr__(self, "detail", clip(self.detail))

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.severity.value}: {self.summary}"
        if self.detail:
            text += f" ({self.detail})"
        return text

    def to_json(self) -> dict[str, object]:
        loc = self.location
        return {
            "severity": self.severity.value,
            "summary": self.summary,
            "detail": self.detail,
            "file": str(loc.file) if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
        }


class PolicyError(ProtectctlError):
    """The policy has errors; all of them are carried together."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        errors = [d for d in self.diagnostics if d.severity is Severity.ERROR]
        super().__init__(f"{len(errors)} problem(s) in the policy")


class StateError(ProtectctlError):
    """The recorded state cannot be read, written or trusted."""


class StateLockedError(StateError):
    """Another process holds the state lock; the message names it."""


class StalePlanError(StateError):
    """A saved plan no longer matches the state it was made from."""


class PlanError(ProtectctlError):
    """A plan cannot be made or applied (cycle, refused deletion, errored plan)."""


class ApplyError(ProtectctlError):
    """Some resources failed during apply; the state records what succeeded."""


class RemoteError(ProtectctlError):
    """A command on a host failed or the host could not be reached."""


class RepositoryError(ProtectctlError):
    """The repository cannot be opened, read or written."""


class CorruptionError(RepositoryError):
    """Stored data failed authentication or is missing."""


class WrongKeyError(RepositoryError):
    """The passphrase does not open the repository's master key."""


class LockedError(RepositoryError):
    """A repository or source lock is held by a live process."""


class ProviderError(ProtectctlError):
    """A data-source provider failed (snapshot, scripts, unreadable source)."""


class RestoreError(ProtectctlError):
    """A restore cannot be planned or carried out safely."""


class TapeError(ProtectctlError):
    """A tape library, cartridge or tape format problem."""


class TapeCorruptionError(TapeError, CorruptionError):
    """A record on a cartridge failed authentication, is malformed or is not where it belongs."""


class TapeKeyError(TapeError, WrongKeyError):
    """A key does not open a cartridge's label (wrong key, or the label was altered)."""
