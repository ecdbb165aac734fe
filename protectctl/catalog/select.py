"""Pick a recovery point by time.

Pure: works on any value with a `time` (UTC-aware datetime), so it serves the engine's
`Point` and tests alike without importing the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from protectctl.errors import RestoreError


class Timed(Protocol):
    @property
    def time(self) -> datetime: ...


T = TypeVar("T", bound=Timed)


def select_point(points: Sequence[T], to_time: datetime | Literal["latest"], *, source: str = "") -> T:
    """The newest point at or before `to_time`; raises RestoreError when there is none."""
    what = f" of {source}" if source else ""
    if not points:
        raise RestoreError(f"there are no recovery points{what}", hint="run a sync first")
    ordered = sorted(points, key=lambda p: p.time)
    if to_time == "latest":
        return ordered[-1]
    eligible = [p for p in ordered if p.time <= to_time]
    if not eligible:
        earliest = ordered[0].time.isoformat(timespec="seconds")
        raise RestoreError(
            f"no recovery point{what} at or before {to_time.isoformat(timespec='seconds')};"
            f" the earliest is at {earliest}",
            hint=f"choose a time at or after {earliest}, or 'latest'",
        )
    return eligible[-1]
