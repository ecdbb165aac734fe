"""Parse the TIME of `restore --to-time` and `points list`.

Pure: no clock, no I/O. `now` and the local zone are passed in, so the same text always
yields the same instant in tests. Accepted forms:

- ``latest``
- ISO 8601 with a zone (``2026-08-01T10:00:00+02:00``, ``...Z``) or without one, which means
  local time (a date alone means its midnight);
- relative to now: ``-2h``, ``-30m``, ``-1d``, ``-1w``, ``-90s`` and sums such as ``-1d12h``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from protectctl.errors import ProtectctlError

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^-(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")
_HINT = "use ISO 8601 (2026-08-01T10:00, 2026-08-01T10:00Z), a relative time (-2h, -30m, -1d) or 'latest'"


class TimeSpecError(ProtectctlError):
    """The TIME text is not a time protectctl understands."""


def parse_time(text: str, *, now: datetime, local_tz: tzinfo | None = None) -> datetime | Literal["latest"]:
    """Turn TIME into a UTC-aware datetime (or "latest"); raises TimeSpecError."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    value = text.strip()
    if value.lower() == "latest":
        return "latest"
    if _RELATIVE.match(value):
        return (now - _relative_delta(value)).astimezone(UTC)
    return _parse_absolute(value, local_tz)


def _relative_delta(value: str) -> timedelta:
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(value))
    return timedelta(seconds=seconds)


def _parse_absolute(value: str, local_tz: tzinfo | None) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise TimeSpecError(f"cannot read time {value!r}", hint=_HINT) from err
    if parsed.tzinfo is None:
        # No zone means the operator's wall clock; astimezone() on a naive value applies the
        # system's rules for that date (DST included), a passed zone applies its own.
        parsed = parsed.replace(tzinfo=local_tz) if local_tz is not None else parsed.astimezone()
    return parsed.astimezone(UTC)
