"""Value types parsed once from policy text: durations, sizes, rates, windows, schedules.

Every type is a frozen, slotted dataclass with a `parse(text)` classmethod and a `__str__`
that gives canonical text which parses back to an equal value. Bad input raises `UnitError`
whose message says what was wrong and what would be right.

Pure: no I/O, no clock, no environment. Times of day are wall-clock: a datetime is read
through its own fields, so pass host-local time (DST shifts are not modelled).
"""

from __future__ import annotations

import bisect
import calendar
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from functools import cache
from typing import Self

from protectctl.errors import ProtectctlError

__all__ = [
    "ByteSize",
    "CalendarDays",
    "ChangeRate",
    "Duration",
    "Rate",
    "Schedule",
    "ScheduleForm",
    "TimeWindow",
    "UnitError",
]


class UnitError(ProtectctlError, ValueError):
    """Text that is not a valid duration, size, rate, window or schedule.

    A ValueError too, so pydantic validators turn it into a located policy diagnostic.
    """


MINUTE = 60
HOUR = 3600
DAY = 86_400
MINUTES_PER_DAY = 1440

# ASCII digits only: str.isdigit() and \d accept digits int() may reject, like "²".
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def _quote(text: str) -> str:
    """Show user text in a message the way they typed it, even when empty or odd."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[0-9]+", text) is not None


def _fraction(number: str) -> Fraction:
    # Fraction parses decimal text exactly, so "1.1h" is 3960 s with no float drift.
    return Fraction(number)


# --------------------------------------------------------------------------- Duration

_DURATION_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": MINUTE,
    "min": MINUTE,
    "mins": MINUTE,
    "minute": MINUTE,
    "minutes": MINUTE,
    "h": HOUR,
    "hr": HOUR,
    "hrs": HOUR,
    "hour": HOUR,
    "hours": HOUR,
    "d": DAY,
    "day": DAY,
    "days": DAY,
    "w": 7 * DAY,
    "wk": 7 * DAY,
    "week": 7 * DAY,
    "weeks": 7 * DAY,
    "mo": 30 * DAY,
    "month": 30 * DAY,
    "months": 30 * DAY,
    "y": 365 * DAY,
    "yr": 365 * DAY,
    "year": 365 * DAY,
    "years": 365 * DAY,
}
_DURATION_TOKEN = re.compile(_NUMBER + r"\s*([a-z]+)\s*")
_DURATION_HINT = "expected a number and a unit, like 15m, 14d, 7y or 1h30m (units: s, m, h, d, w, mo, y)"
# Far beyond any retention anyone keeps; the cap keeps float conversions (days) finite.
_MAX_DURATION_S = 1000 * 365 * DAY


def _duration_seconds(text: str) -> Fraction:
    """Sum the number+unit tokens of `text`; raise UnitError if anything else is there."""
    body = text.strip()
    if body == "0":
        return Fraction(0)
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_TOKEN.match(body, pos)
        if match is None:
            raise UnitError(f"{_quote(text)} is not a duration; {_DURATION_HINT}")
        number, unit = match.groups()
        if unit not in _DURATION_UNITS:
            raise UnitError(f"{_quote(text)} is not a duration: unknown unit {_quote(unit)}; {_DURATION_HINT}")
        total += _fraction(number) * _DURATION_UNITS[unit]
        pos = match.end()
    if pos == 0:
        raise UnitError(f"{_quote(text)} is not a duration; {_DURATION_HINT}")
    return total


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A whole number of seconds; months are 30 days and years 365 days."""

    seconds: int

    def __post_init__(self) -> None:
        if not 0 <= self.seconds <= _MAX_DURATION_S:
            raise UnitError(f"a duration must be between 0s and 1000y, got {self.seconds}s")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `15m`, `14d`, `6mo`, `7y`, `1h30m`; raise UnitError otherwise."""
        seconds = _duration_seconds(text)
        if seconds > _MAX_DURATION_S:
            raise UnitError(f"{_quote(text)} is too long; a duration is at most 1000y")
        if seconds.denominator != 1:
            raise UnitError(
                f"{_quote(text)} is not a whole number of seconds; write it with a smaller unit, e.g. {round(seconds)}s"
            )
        return cls(int(seconds))

    @property
    def days(self) -> float:
        return self.seconds / DAY

    def __str__(self) -> str:
        if self.seconds == 0:
            return "0s"
        days, rest = divmod(self.seconds, DAY)
        parts: list[str] = []
        if days:
            # Years only when exact; "180d" is clearer than a mix of months and days.
            parts.append(f"{days // 365}y" if days % 365 == 0 else f"{days}d")
        hours, rest = divmod(rest, HOUR)
        minutes, seconds = divmod(rest, MINUTE)
        for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")):
            if value:
                parts.append(f"{value}{unit}")
        return "".join(parts)


# --------------------------------------------------------------------------- ByteSize

_DECIMAL_PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}
_BINARY_PREFIX = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50, "ei": 2**60}
_SIZE_RE = re.compile(r"\s*" + _NUMBER + r"\s*([a-zA-Z]*)\s*")
_SIZE_HINT = "expected a number and a unit, like 512MB, 100GB (10^9 bytes) or 100GiB (2^30 bytes)"
# A zettabyte: no single source is that big, and floats of it stay exact enough.
_MAX_BYTES = 10**21
# Canonical output picks the largest unit that divides exactly.
_SIZE_UNITS_DESC: tuple[tuple[str, int], ...] = tuple(
    sorted(
        [("EB", 10**18), ("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)]
        + [("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)],
        key=lambda pair: -pair[1],
    )
)


def _size_factor(text: str, unit: str) -> int:
    """Bytes per unit for a size unit such as GB, GiB, kb (sizes are always bytes)."""
    lowered = unit.lower()
    if lowered in ("", "b", "byte", "bytes"):
        return 1
    if lowered.endswith("b") and lowered[:-1] in _DECIMAL_PREFIX:
        return _DECIMAL_PREFIX[lowered[:-1]]
    if lowered.endswith("b") and lowered[:-1] in _BINARY_PREFIX:
        return _BINARY_PREFIX[lowered[:-1]]
    if lowered in _DECIMAL_PREFIX or lowered in _BINARY_PREFIX:
        # "100G" means 10^9 to some tools and 2^30 to others; make the user say which.
        prefix = unit.upper()[0]
        number = text.strip()[: -len(unit)].strip()
        raise UnitError(
            f"{_quote(text)} is ambiguous; write {number}{prefix}B (decimal) or {number}{prefix}iB (binary)"
        )
    raise UnitError(f"{_quote(text)} is not a size: unknown unit {_quote(unit)}; {_SIZE_HINT}")


@dataclass(frozen=True, slots=True, order=True)
class ByteSize:
    """A number of bytes. `GB` is decimal (10^9), `GiB` binary (2^30)."""

    bytes: int

    def __post_init__(self) -> None:
        if not 0 <= self.bytes <= _MAX_BYTES:
            raise UnitError(f"a size must be between 0 and 1ZB, got {self.bytes} bytes")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `100GB`, `100GiB`, `1.5TB`, `0` or a plain byte count; raise UnitError otherwise."""
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise UnitError(f"{_quote(text)} is not a size; {_SIZE_HINT}")
        number, unit = match.groups()
        value = _fraction(number) * _size_factor(text, unit)
        if value > _MAX_BYTES:
            raise UnitError(f"{_quote(text)} is too large; a size is at most 1ZB")
        # Fractions of a byte ("1.3GiB") round to the nearest byte: sizes are estimates.
        return cls(round(value))

    def __str__(self) -> str:
        for unit, factor in _SIZE_UNITS_DESC:
            if self.bytes and self.bytes % factor == 0:
                return f"{self.bytes // factor}{unit}"
        return f"{self.bytes}B"

    def human(self) -> str:
        """Approximate decimal rendering for reports, e.g. `10 GB`, `1.5 TB` (not parseable)."""
        value = float(self.bytes)
        for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
            if value < 1000 or unit == "EB":
                text = f"{value:.1f}".removesuffix(".0") if unit != "B" else str(self.bytes)
                return f"{text} {unit}"
            value /= 1000
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- Rate

_RATE_RE = re.compile(r"\s*" + _NUMBER + r"\s*([kKmMgGtTpP]i?)?(bits?|b|B|bytes?)(ps|/s|/sec)?\s*")
_RATE_HINT = "expected a bandwidth like 50Mbit, 100Mbps, 10MB/s or 1GiB/s (b/bit = bits, B = bytes)"
_MAX_BITS_PER_S = 10**18
# Canonical text prefers decimal bits (how links are sold), then binary bytes (how disks are).
_RATE_UNITS_DESC = (
    ("Tbit/s", 10**12),
    ("Gbit/s", 10**9),
    ("Mbit/s", 10**6),
    ("TiB/s", 8 * 2**40),
    ("GiB/s", 8 * 2**30),
    ("MiB/s", 8 * 2**20),
    ("KiB/s", 8 * 2**10),
    ("kbit/s", 10**3),
)


def _rate_prefix(prefix: str) -> int:
    lowered = prefix.lower()
    return _BINARY_PREFIX[lowered] if lowered.endswith("i") else _DECIMAL_PREFIX[lowered]


@dataclass(frozen=True, slots=True, order=True)
class Rate:
    """A bandwidth, held in bytes per second, quantised to whole bits per second.

    The quantisation happens on construction so that `str()` always parses back equal.
    """

    bytes_per_second: float

    def __post_init__(self) -> None:
        bps = self.bytes_per_second
        if not (bps == bps and 0 < bps <= _MAX_BITS_PER_S / 8):  # rejects NaN and inf too
            raise UnitError(f"a rate must be positive and finite, got {bps} bytes/s")
        bits = round(bps * 8)
        if bits == 0:
            raise UnitError(f"a rate must be at least 1bit/s, got {bps} bytes/s")
        object.__setattr__(self, "bytes_per_second", bits / 8)

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `50Mbit`, `50Mbit/s`, `100Mbps`, `10MB/s`, `1GiB/s`; raise UnitError otherwise."""
        match = _RATE_RE.fullmatch(text)
        if match is None:
            raise UnitError(f"{_quote(text)} is not a rate; {_RATE_HINT}")
        number, prefix, unit, _per_second = match.groups()
        factor = _rate_prefix(prefix or "")
        bits_per_unit = 8 if unit.startswith("B") else 1
        bits = _fraction(number) * factor * bits_per_unit
        if bits > _MAX_BITS_PER_S:
            raise UnitError(f"{_quote(text)} is too large; a rate is at most 1Ebit/s")
        if round(bits) == 0:
            raise UnitError(f"{_quote(text)} is not a usable rate; it must be at least 1bit/s")
        return cls(round(bits) / 8)

    @property
    def bits_per_second(self) -> int:
        return round(self.bytes_per_second * 8)

    def __str__(self) -> str:
        bits = self.bits_per_second
        for unit, factor in _RATE_UNITS_DESC:
            if bits % factor == 0:
                return f"{bits // factor}{unit}"
        return f"{bits}bit/s"


# --------------------------------------------------------------------------- ChangeRate

_CHANGE_RE = re.compile(r"\s*" + _NUMBER + r"\s*%\s*/\s*([a-z]+)\s*")
_CHANGE_PERIODS: dict[str, Fraction] = {
    "h": Fraction(24),
    "hr": Fraction(24),
    "hour": Fraction(24),
    "d": Fraction(1),
    "day": Fraction(1),
    "w": Fraction(1, 7),
    "wk": Fraction(1, 7),
    "week": Fraction(1, 7),
}
_CHANGE_HINT = "expected a percentage per period, like 10%/day, 5%/d, 2%/hour or 30%/week"
# Percent per day is kept to 9 decimals: far below any estimate's precision, and it makes
# the value and its text round-trip exactly.
_CHANGE_DECIMALS = 9
_MAX_PERCENT_PER_DAY = 100_000


def _quantised_percent(percent_per_day: Fraction) -> Fraction:
    return Fraction(round(percent_per_day * 10**_CHANGE_DECIMALS), 10**_CHANGE_DECIMALS)


@dataclass(frozen=True, slots=True, order=True)
class ChangeRate:
    """How much of a source's data changes per day, as a fraction (0.1 = 10 %/day).

    Per-hour and per-week rates scale linearly: rewrites of the same blocks are counted
    again, so estimates built on this are upper bounds.
    """

    fraction_per_day: float

    def __post_init__(self) -> None:
        value = self.fraction_per_day
        if not (value == value and 0 <= value <= _MAX_PERCENT_PER_DAY / 100):
            raise UnitError(f"a change rate must be between 0%/day and 100000%/day, got {value}")
        percent = _quantised_percent(Fraction(value) * 100)
        object.__setattr__(self, "fraction_per_day", float(percent / 100))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `10%/day`, `5%/d`, `2%/hour`, `30%/week`; raise UnitError otherwise."""
        match = _CHANGE_RE.fullmatch(text)
        if match is None:
            raise UnitError(f"{_quote(text)} is not a change rate; {_CHANGE_HINT}")
        number, period = match.groups()
        if period not in _CHANGE_PERIODS:
            raise UnitError(f"{_quote(text)} is not a change rate: unknown period {_quote(period)}; {_CHANGE_HINT}")
        percent = _quantised_percent(_fraction(number) * _CHANGE_PERIODS[period])
        if percent > _MAX_PERCENT_PER_DAY:
            raise UnitError(f"{_quote(text)} is too large; a change rate is at most 100000%/day")
        return cls(float(percent / 100))

    @property
    def percent_per_day(self) -> float:
        return self.fraction_per_day * 100

    def __str__(self) -> str:
        percent = _quantised_percent(Fraction(self.fraction_per_day) * 100)
        whole, rest = divmod(percent, 1)
        if rest == 0:
            return f"{int(whole)}%/day"
        digits = f"{float(percent):.{_CHANGE_DECIMALS}f}".rstrip("0")
        return f"{digits}%/day"


# --------------------------------------------------------------------------- days of the week

# Monday = 0 as in date.weekday(); cron's Sunday = 0 is converted at the cron boundary.
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_NAMES = {name: i for i, name in enumerate(_WEEKDAYS)} | {
    full: i for i, full in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
}
_DAY_SETS = {
    "daily": frozenset(range(7)),
    "everyday": frozenset(range(7)),
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
}
_DAYS_HINT = "expected days like mon-fri, sat,sun, daily, weekdays or weekends"


def _weekday(text: str, whole: str) -> int:
    try:
        return _WEEKDAY_NAMES[text]
    except KeyError:
        raise UnitError(f"{_quote(whole)}: {_quote(text)} is not a day of the week; {_DAYS_HINT}") from None


def _parse_weekdays(text: str, whole: str) -> frozenset[int]:
    """Parse `mon-fri`, `sat,sun`, `mon,wed-fri`, `daily`; ranges may wrap (`fri-mon`)."""
    lowered = text.lower()
    if lowered in _DAY_SETS:
        return _DAY_SETS[lowered]
    days: set[int] = set()
    for item in lowered.split(","):
        first, sep, last = item.partition("-")
        start = _weekday(first.strip(), whole)
        end = _weekday(last.strip(), whole) if sep else start
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return frozenset(days)


def _format_weekdays(days: Iterable[int], names: tuple[str, ...] = _WEEKDAYS, sep: str = "-") -> str:
    """`mon-fri`, `sat,sun`, `mon,wed-fri`: runs of three or more days become ranges."""
    return ",".join(_format_run(names[lo], names[hi], hi - lo, sep) for lo, hi in _runs(sorted(set(days))))


def _format_run(first: str, last: str, length: int, sep: str) -> str:
    """One run of a list: `a`, `a,b` for two values, `a<sep>b` for three or more."""
    if length == 0:
        return first
    return f"{first},{last}" if length == 1 else f"{first}{sep}{last}"


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Group sorted integers into (first, last) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and runs[-1][1] == value - 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


# --------------------------------------------------------------------------- TimeWindow

_CLOCK_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_WINDOW_RE = re.compile(r"\s*(\S+)\s+([0-9]{1,2}:[0-9]{2})\s*-\s*([0-9]{1,2}:[0-9]{2})\s*")
_WINDOW_HINT = 'expected days and hours, like "mon-fri 08:00-18:00", "sat,sun 00:00-24:00" or "daily 22:00-06:00"'


def _clock_minutes(text: str, whole: str, *, allow_24: bool) -> int:
    """Minutes after midnight for `HH:MM`; `24:00` only where it may end a day."""
    match = _CLOCK_RE.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"{_quote(whole)}: {_quote(text)} is not a time of day; expected HH:MM like 08:00")
    hour, minute = int(match.group(1)), int(match.group(2))
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not allow_24)):
        latest = "24:00" if allow_24 else "23:59"
        raise UnitError(f"{_quote(whole)}: {_quote(text)} is not a time of day; expected 00:00 to {latest}")
    return hour * 60 + minute


def _format_clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Recurring hours on some days of the week; a window past midnight ends the next day.

    `days` are the days the window *starts* on (Monday = 0); `start_min`/`end_min` are
    minutes after midnight, `end_min` may be 1440 (24:00).
    """

    days: frozenset[int]
    start_min: int
    end_min: int

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise UnitError(f"a time window needs days of the week 0-6, got {sorted(self.days)}")
        if not (0 <= self.start_min < MINUTES_PER_DAY and 0 <= self.end_min <= MINUTES_PER_DAY):
            raise UnitError("a time window runs from 00:00-23:59 to 00:00-24:00")
        if self.start_min == self.end_min % MINUTES_PER_DAY and self.end_min != MINUTES_PER_DAY:
            raise UnitError("a time window must not be empty; for a whole day write 00:00-24:00")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse `mon-fri 08:00-18:00`, `daily 22:00-06:00`; raise UnitError otherwise."""
        match = _WINDOW_RE.fullmatch(text)
        if match is None:
            raise UnitError(f"{_quote(text)} is not a time window; {_WINDOW_HINT}")
        days_text, start_text, end_text = match.groups()
        days = _parse_weekdays(days_text, text)
        start = _clock_minutes(start_text, text, allow_24=False)
        end = _clock_minutes(end_text, text, allow_24=True)
        if start == end % MINUTES_PER_DAY and end != MINUTES_PER_DAY:
            raise UnitError(f"{_quote(text)} is an empty window; for a whole day write 00:00-24:00")
        return cls(days, start, end)

    @property
    def crosses_midnight(self) -> bool:
        return self.end_min < self.start_min

    def contains(self, dt: datetime) -> bool:
        """Whether `dt` (read as wall-clock time) falls inside the window."""
        minute = dt.hour * 60 + dt.minute + dt.second / 60
        weekday = dt.weekday()
        if not self.crosses_midnight:
            return weekday in self.days and self.start_min <= minute < self.end_min
        # Before midnight it belongs to today's window, after midnight to yesterday's.
        return (weekday in self.days and minute >= self.start_min) or (
            (weekday - 1) % 7 in self.days and minute < self.end_min
        )

    def __str__(self) -> str:
        days = "daily" if len(self.days) == 7 else _format_weekdays(self.days)
        return f"{days} {_format_clock(self.start_min)}-{_format_clock(self.end_min)}"


# --------------------------------------------------------------------------- Schedule: days

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_ALL_MONTHS = frozenset(range(1, 13))
_ALL_DOMS = frozenset(range(1, 32))
_ALL_WEEKDAYS = frozenset(range(7))
# The Gregorian calendar repeats every 400 years (146097 days, a whole number of weeks),
# so enumerating one cycle gives exact gaps even for schedules such as "0 0 29 2 *".
_CYCLE_START = date(2000, 1, 1)
_CYCLE_DAYS = 146_097
_CYCLE_YEARS = 400


@dataclass(frozen=True, slots=True)
class CalendarDays:
    """The days a schedule runs on, with cron's rule for day-of-month and day-of-week.

    As in cron: when both fields are restricted (neither written starting with `*`), a day
    matches if EITHER does; otherwise both must match. Weekdays count Monday = 0.
    """

    months: frozenset[int] = _ALL_MONTHS
    days_of_month: frozenset[int] = _ALL_DOMS
    weekdays: frozenset[int] = _ALL_WEEKDAYS
    dom_star: bool = True
    dow_star: bool = True

    @property
    def either_matches(self) -> bool:
        return not (self.dom_star or self.dow_star)

    def matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days_of_month
        dow_ok = day.weekday() in self.weekdays
        return (dom_ok or dow_ok) if self.either_matches else (dom_ok and dow_ok)

    @property
    def is_weekly(self) -> bool:
        """True when only the day of the week matters, so the pattern repeats every 7 days."""
        return self.months == _ALL_MONTHS and not self.either_matches and self.days_of_month == _ALL_DOMS


def _days_in_month(days: CalendarDays, year: int, month: int) -> list[int]:
    """Days of `year-month` on which `days` matches, fast enough for a 400-year cycle."""
    first_weekday, length = calendar.monthrange(year, month)

    def weekday_ok(day: int) -> bool:
        return (first_weekday + day - 1) % 7 in days.weekdays

    candidates = range(1, length + 1)
    if days.either_matches:
        return [d for d in candidates if d in days.days_of_month or weekday_ok(d)]
    return [d for d in candidates if d in days.days_of_month and weekday_ok(d)]


@cache
def _matching_days(days: CalendarDays) -> tuple[tuple[int, ...], int]:
    """Indices of matching days within one period of the pattern, and the period in days."""
    if days.is_weekly:
        # Index 0 is a Monday, so index i is weekday i.
        return tuple(i for i in range(7) if i in days.weekdays), 7
    found: list[int] = []
    base = _CYCLE_START.toordinal()
    for year in range(_CYCLE_START.year, _CYCLE_START.year + _CYCLE_YEARS):
        for month in sorted(days.months):
            offset = date(year, month, 1).toordinal() - base - 1
            found.extend(offset + d for d in _days_in_month(days, year, month))
    return tuple(found), _CYCLE_DAYS


@dataclass(frozen=True, slots=True)
class _Gaps:
    max_s: int
    min_s: int
    runs_per_day: float


@cache
def _gaps(days: CalendarDays, times: tuple[int, ...]) -> _Gaps:
    """Exact longest and shortest gaps between consecutive runs, and runs per day."""
    day_indices, period = _matching_days(days)
    gaps: list[int] = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Crossing from the last run of one matching day to the first run of the next one.
    span = times[-1] - times[0]
    day_steps = [b - a for a, b in zip(day_indices, day_indices[1:], strict=False)]
    day_steps.append(day_indices[0] + period - day_indices[-1])
    gaps.extend((min(day_steps) * MINUTES_PER_DAY - span, max(day_steps) * MINUTES_PER_DAY - span))
    return _Gaps(
        max_s=max(gaps) * MINUTE,
        min_s=min(gaps) * MINUTE,
        runs_per_day=len(day_indices) * len(times) / period,
    )


# --------------------------------------------------------------------------- Schedule: cron fields


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is value low + i
    example: str = ""


_CRON_FIELDS = (
    _Field("minute", 0, 59, example="*/15"),
    _Field("hour", 0, 23, example="2"),
    _Field("day-of-month", 1, 31, example="1"),
    _Field("month", 1, 12, _MONTHS, example="jan"),
    _Field("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"), example="mon-fri"),
)
_CRON_HINT = "a cron expression has 5 fields: minute hour day-of-month month day-of-week, like */15 * * * *"
_CRON_CHARS = re.compile(r"[0-9*,/\-a-zA-Z]+")


def _cron_value(text: str, spec: _Field, whole: str) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.low + spec.names.index(lowered)
    if _is_number(lowered) and spec.low <= int(lowered) <= spec.high:
        return int(lowered)
    names = f" or a name ({', '.join(spec.names[:3])}, ...)" if spec.names else ""
    raise UnitError(
        f"{_quote(whole)}: {_quote(text)} is not a valid {spec.name}; expected {spec.low}-{spec.high}{names}"
    )


def _cron_item(item: str, spec: _Field, whole: str) -> set[int]:
    """One comma-separated item: `*`, `*/n`, `a`, `a-b`, `a-b/n`."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _is_number(step_text) or int(step_text) == 0:
            raise UnitError(f"{_quote(whole)}: the step in {_quote(item)} must be a positive number, like */15")
        step = int(step_text)
    if base == "*":
        low, high = spec.low, spec.high
    else:
        first, dash, last = base.partition("-")
        low = _cron_value(first, spec, whole)
        high = _cron_value(last, spec, whole) if dash else low
        if slash and not dash:
            raise UnitError(
                f"{_quote(whole)}: {_quote(item)} needs a range before the step, like {first}-{spec.high}/{step}"
            )
        if high < low:
            raise UnitError(
                f"{_quote(whole)}: the range {_quote(base)} in the {spec.name} field runs backwards; "
                f"write it low-high, like {last}-{first}"
            )
    return set(range(low, high + 1, step))


def _cron_field(text: str, spec: _Field, whole: str) -> tuple[frozenset[int], bool]:
    """Values of one cron field, and whether it was written starting with `*`."""
    items = text.split(",")
    if any(not item for item in items):
        raise UnitError(f"{_quote(whole)}: the {spec.name} field {_quote(text)} has an empty list item")
    if len(items) > 1 and any(item.startswith("*") for item in items):
        raise UnitError(
            f"{_quote(whole)}: '*' must stand alone in the {spec.name} field, not in a list like {_quote(text)}"
        )
    values: set[int] = set()
    for item in items:
        values |= _cron_item(item, spec, whole)
    return frozenset(values), text.startswith("*")


def _parse_cron(text: str) -> tuple[CalendarDays, tuple[int, ...]]:
    fields = text.split()
    if len(fields) != 5:
        raise UnitError(f"{_quote(text)} is not a schedule: {_CRON_HINT} (got {len(fields)} fields)")
    minutes, _ = _cron_field(fields[0], _CRON_FIELDS[0], text)
    hours, _ = _cron_field(fields[1], _CRON_FIELDS[1], text)
    doms, dom_star = _cron_field(fields[2], _CRON_FIELDS[2], text)
    months, _ = _cron_field(fields[3], _CRON_FIELDS[3], text)
    cron_dows, dow_star = _cron_field(fields[4], _CRON_FIELDS[4], text)
    # cron counts Sunday as 0 (and 7); we count Monday as 0.
    weekdays = frozenset((d - 1) % 7 for d in cron_dows)
    days = CalendarDays(months, doms, weekdays, dom_star, dow_star)
    times = tuple(sorted(h * 60 + m for h in hours for m in minutes))
    return days, times


def _format_cron_set(values: frozenset[int], low: int, high: int, star: bool) -> str:
    """Render a cron field; `star` keeps the written `*` that cron's day rule depends on."""
    ordered = sorted(values)
    step = ordered[1] - ordered[0] if len(ordered) > 1 else high - low + 1
    progression = ordered[0] == low and ordered == list(range(low, high + 1, step))
    if star or (progression and len(ordered) > 1 and not _is_day_field(low, high)):
        if ordered == list(range(low, high + 1)):
            return "*"
        if progression:
            return f"*/{step}"
    return ",".join(_format_run(str(lo), str(hi), hi - lo, "-") for lo, hi in _runs(ordered))


def _is_day_field(low: int, high: int) -> bool:
    # Day-of-month and day-of-week must not gain a '*' they were not written with.
    return (low, high) in ((1, 31), (0, 6))


# --------------------------------------------------------------------------- Schedule

_TIME_LIST_HINT = "expected times like 20:00 or 08:00,20:00"
_SCHEDULE_HINT = (
    "expected one of: every 15m, hourly, hourly at :30, daily at 20:00, daily at 08:00,20:00, "
    "weekly on sun at 02:00, monthly on 1 at 03:00, or a 5-field cron expression like */15 * * * *"
)
_FRIENDLY_RE = re.compile(
    r"(?P<form>every|hourly|daily|weekly|monthly)"
    # `every 15m`, and as people write it: `every 15 minutes`, `every 1 hour`, `every hour`
    r"(?:\s+(?!on\s|at\s)(?P<every>[0-9.]+\s+[a-z]+|\S+))?"
    r"(?:\s+on\s+(?P<on>\S+))?"
    r"(?:\s+at\s+(?P<at>\S+))?"
)
# Intervals that divide the hour or the day evenly, so every run is the same distance apart.
_VALID_EVERY_MIN = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440)
_MAX_MONTH_DAY = 28


class ScheduleForm(StrEnum):
    EVERY = "every"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    CRON = "cron"


def _every_text(minutes: int) -> str:
    if minutes % MINUTES_PER_DAY == 0:
        return f"{minutes // MINUTES_PER_DAY}d"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def _nearest_every(minutes: float) -> str:
    lower = [v for v in _VALID_EVERY_MIN if v < minutes]
    upper = [v for v in _VALID_EVERY_MIN if v > minutes]
    choices = ([lower[-1]] if lower else []) + ([upper[0]] if upper else [])
    return " or ".join(f"every {_every_text(v)}" for v in choices)


def _parse_every(value: str | None, whole: str) -> tuple[int, ...]:
    if value is None:
        raise UnitError(f"{_quote(whole)} needs an interval, like every 15m or every 2h")
    if value in _DURATION_UNITS:  # `every hour`, `every minute`, `every day`
        value = f"1{value}"
    seconds = _duration_seconds(value)
    minutes = seconds / MINUTE
    if minutes.denominator == 1 and int(minutes) in _VALID_EVERY_MIN:
        return tuple(range(0, MINUTES_PER_DAY, int(minutes)))
    if seconds < MINUTE:
        raise UnitError(f"{_quote(whole)} is too frequent: the shortest interval is every 1m")
    if seconds > DAY:
        raise UnitError(
            f"{_quote(whole)}: intervals longer than a day drift against the calendar; "
            "use weekly on DAY at HH:MM or monthly on N at HH:MM"
        )
    raise UnitError(
        f"{_quote(whole)} does not divide the hour or the day evenly; nearest valid: {_nearest_every(float(minutes))}"
    )


def _parse_times(text: str | None, whole: str) -> tuple[int, ...]:
    if text is None:
        return (0,)
    return tuple(sorted({_clock_minutes(t, whole, allow_24=False) for t in text.split(",")}))


def _parse_minutes_past(text: str | None, whole: str) -> tuple[int, ...]:
    """`hourly at :30` or `hourly at :15,:45`: runs at those minutes of every hour."""
    if text is None:
        return tuple(range(0, MINUTES_PER_DAY, 60))
    minutes: set[int] = set()
    for item in text.split(","):
        if not re.fullmatch(r":[0-9]{2}", item) or int(item[1:]) > 59:
            raise UnitError(f"{_quote(whole)}: {_quote(item)} is not a minute past the hour; expected :00 to :59")
        minutes.add(int(item[1:]))
    return tuple(sorted(h * 60 + m for h in range(24) for m in minutes))


def _parse_month_days(text: str | None, whole: str) -> frozenset[int]:
    if text is None:
        return frozenset({1})
    days: set[int] = set()
    for item in text.split(","):
        if not _is_number(item) or not 1 <= int(item) <= _MAX_MONTH_DAY:
            # Days 29-31 are missing from some months, which would silently skip a run.
            raise UnitError(
                f"{_quote(whole)}: {_quote(item)} is not a usable day of the month; expected 1-28 "
                "(later days are missing from some months)"
            )
        days.add(int(item))
    return frozenset(days)


def _require(group: str | None, allowed: bool, word: str, whole: str) -> None:
    if group is not None and not allowed:
        raise UnitError(f"{_quote(whole)}: {_quote(word)} does not apply here; {_SCHEDULE_HINT}")


def _parse_friendly(match: re.Match[str], whole: str) -> tuple[ScheduleForm, CalendarDays, tuple[int, ...]]:
    form = ScheduleForm(match["form"])
    _require(match["every"], form is ScheduleForm.EVERY, str(match["every"]), whole)
    _require(match["on"], form in (ScheduleForm.WEEKLY, ScheduleForm.MONTHLY), "on", whole)
    _require(match["at"], form is not ScheduleForm.EVERY, "at", whole)
    if form is ScheduleForm.EVERY:
        return form, CalendarDays(), _parse_every(match["every"], whole)
    if form is ScheduleForm.HOURLY:
        return form, CalendarDays(), _parse_minutes_past(match["at"], whole)
    times = _parse_times(match["at"], whole)
    if form is ScheduleForm.DAILY:
        return form, CalendarDays(), times
    if form is ScheduleForm.WEEKLY:
        weekdays = _parse_weekdays(match["on"], whole) if match["on"] else frozenset({6})
        return form, CalendarDays(weekdays=weekdays, dow_star=False), times
    doms = _parse_month_days(match["on"], whole)
    return form, CalendarDays(days_of_month=doms, dom_star=False), times


def _group_times(times: tuple[int, ...]) -> list[tuple[frozenset[int], frozenset[int]]]:
    """Split run times into (hours, minutes) products, fewest first: one per cron line."""
    by_hour: dict[int, set[int]] = {}
    for t in times:
        by_hour.setdefault(t // 60, set()).add(t % 60)
    by_minutes: dict[frozenset[int], set[int]] = {}
    for hour, minutes in by_hour.items():
        by_minutes.setdefault(frozenset(minutes), set()).add(hour)
    return sorted(((frozenset(hours), minutes) for minutes, hours in by_minutes.items()), key=lambda pair: min(pair[0]))


def _calendar_set(values: frozenset[int], low: int, high: int) -> str:
    """A systemd calendar component: `*`, `00/15` (repetition), or `08,20` / `08..10`."""
    ordered = sorted(values)
    if ordered == list(range(low, high + 1)):
        return "*"
    if len(ordered) > 2:
        step = ordered[1] - ordered[0]
        if ordered == list(range(ordered[0], high + 1, step)):
            return f"{ordered[0]:02d}/{step}"
    return ",".join(_format_run(f"{lo:02d}", f"{hi:02d}", hi - lo, "..") for lo, hi in _runs(ordered))


_SYSTEMD_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _calendar_dates(days: CalendarDays) -> list[str]:
    """The date part(s) of OnCalendar: `Sun *-*-*`; two when cron's either-day rule applies."""
    months = _calendar_set(days.months, 1, 12)
    if days.either_matches:
        # OnCalendar ANDs weekday and day; cron's OR becomes two expressions.
        return [
            f"{_format_weekdays(days.weekdays, _SYSTEMD_WEEKDAYS, '..')} *-{months}-*",
            f"*-{months}-{_calendar_set(days.days_of_month, 1, 31)}",
        ]
    weekday = ""
    if days.weekdays != _ALL_WEEKDAYS:
        weekday = _format_weekdays(days.weekdays, _SYSTEMD_WEEKDAYS, "..") + " "
    return [f"{weekday}*-{months}-{_calendar_set(days.days_of_month, 1, 31)}"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a job runs: the days it runs on and the minutes of those days (0-1439).

    `form` remembers how it was written, for canonical text; two schedules are equal when
    they were written the same way and run at the same times.
    """

    form: ScheduleForm
    days: CalendarDays
    times: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.times or list(self.times) != sorted(set(self.times)):
            raise UnitError("a schedule needs sorted, distinct run times")
        if not all(0 <= t < MINUTES_PER_DAY for t in self.times):
            raise UnitError("a schedule's run times must be minutes of the day, 0-1439")
        if not _matching_days(self.days)[0]:
            raise UnitError(f"the schedule {_quote(str(self))} never runs: no date matches its days")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse a friendly form or a 5-field cron expression; raise UnitError otherwise."""
        body = " ".join(text.split())
        match = _FRIENDLY_RE.fullmatch(body.lower())
        if match is not None:
            form, days, times = _parse_friendly(match, text)
        elif body and _CRON_CHARS.fullmatch(body.replace(" ", "")) and not body.split()[0].isalpha():
            form = ScheduleForm.CRON
            days, times = _parse_cron(body)
        else:
            raise UnitError(f"{_quote(text)} is not a schedule; {_SCHEDULE_HINT}")
        return cls(form, days, times)

    # -- canonical text

    def __str__(self) -> str:
        times = ",".join(_format_clock(t) for t in self.times)
        match self.form:
            case ScheduleForm.EVERY:
                step = self.times[1] - self.times[0] if len(self.times) > 1 else MINUTES_PER_DAY
                return f"every {_every_text(step)}"
            case ScheduleForm.HOURLY:
                minutes = sorted({t % 60 for t in self.times})
                return "hourly" if minutes == [0] else "hourly at " + ",".join(f":{m:02d}" for m in minutes)
            case ScheduleForm.DAILY:
                return f"daily at {times}"
            case ScheduleForm.WEEKLY:
                return f"weekly on {_format_weekdays(self.days.weekdays)} at {times}"
            case ScheduleForm.MONTHLY:
                return f"monthly on {','.join(map(str, sorted(self.days.days_of_month)))} at {times}"
            case ScheduleForm.CRON:
                return self.to_cron()

    # -- arithmetic

    def max_interval_s(self) -> int:
        """The longest gap between two consecutive runs, exact over the calendar."""
        return _gaps(self.days, self.times).max_s

    def min_interval_s(self) -> int:
        """The shortest gap between two consecutive runs."""
        return _gaps(self.days, self.times).min_s

    def runs_per_day(self) -> float:
        """Average number of runs per day over the calendar."""
        return _gaps(self.days, self.times).runs_per_day

    # -- rendering

    def cron_lines(self) -> tuple[str, ...]:
        """5-field cron expressions whose runs together are exactly this schedule's."""
        days = self.days
        cron_dows = frozenset((d + 1) % 7 for d in days.weekdays)
        day_fields = " ".join(
            (
                _format_cron_set(days.days_of_month, 1, 31, days.dom_star),
                _format_cron_set(days.months, 1, 12, False),
                _format_cron_set(cron_dows, 0, 6, days.dow_star),
            )
        )
        return tuple(
            f"{_format_cron_set(minutes, 0, 59, False)} {_format_cron_set(hours, 0, 23, False)} {day_fields}"
            for hours, minutes in _group_times(self.times)
        )

    def to_cron(self) -> str:
        """The single cron expression for this schedule; UnitError if it needs several."""
        return _single(self.cron_lines(), "cron", self)

    def on_calendar_lines(self) -> tuple[str, ...]:
        """systemd OnCalendar= expressions whose elapses together are this schedule's runs."""
        return tuple(
            f"{date_part} {_calendar_set(hours, 0, 23)}:{_calendar_set(minutes, 0, 59)}:00"
            for date_part in _calendar_dates(self.days)
            for hours, minutes in _group_times(self.times)
        )

    def to_on_calendar(self) -> str:
        """The single OnCalendar= expression; UnitError if it needs several (use the lines)."""
        return _single(self.on_calendar_lines(), "OnCalendar", self)

    # -- enumeration

    def runs_on(self, day: date) -> tuple[int, ...]:
        """Minutes of `day` at which the schedule runs (empty if it does not run that day)."""
        return self.times if self.days.matches(day) else ()

    def iter_runs(self, after: datetime) -> Iterator[datetime]:
        """Run times strictly after `after`, in order, with its tzinfo (wall-clock)."""
        day = after.date()
        # A run at minute m of the first day is strictly after `after` iff m is past its
        # minute: at the same minute the run is at or before it, whatever the seconds.
        skip = bisect.bisect_right(self.times, after.hour * 60 + after.minute)
        while True:
            midnight = datetime.combine(day, datetime.min.time(), after.tzinfo)
            for minute in self.runs_on(day)[skip:]:
                yield midnight + timedelta(minutes=minute)
            skip = 0
            day += timedelta(days=1)

    def next_after(self, dt: datetime) -> datetime:
        """The first run strictly after `dt`."""
        return next(self.iter_runs(dt))


def _single(lines: tuple[str, ...], what: str, schedule: Schedule) -> str:
    if len(lines) != 1:
        raise UnitError(
            f"the schedule {_quote(str(schedule))} needs {len(lines)} {what} expressions: {', '.join(lines)}"
        )
    return lines[0]


# --------------------------------------------------------------------------- JSON Schema patterns
# Patterns an editor checks while a policy is typed (the JSON Schemas in schemas/). Built from
# the same unit tables the parsers use, in the regex subset JSON Schema shares with Python
# (ECMA-262: no inline flags, so case-insensitive words are spelled as character classes).
# They must never refuse what a parser accepts (tests/unit/test_schema_patterns.py checks it);
# they may accept a little more (e.g. `every 7m`, refused later with the nearest valid interval).


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _alternatives(words: Iterable[str], *, any_case: bool = False) -> str:
    ordered = sorted(set(words), key=lambda w: (-len(w), w))  # longest first: `mins` before `m`
    return "(?:" + "|".join(_any_case(w) if any_case else re.escape(w) for w in ordered) + ")"


_JSON_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_JSON_DURATION_UNIT = _alternatives(_DURATION_UNITS)
_SIZE_UNIT_PATTERN = r"(?:[bB](?:[yY][tT][eE][sS]?)?|[kKmMgGtTpPeE][iI]?[bB])"
_CRON_FIELD = r"[0-9*,/a-zA-Z-]+"


def _schedule_pattern() -> str:
    unit = _alternatives(_DURATION_UNITS, any_case=True)
    every = rf"{_any_case('every')}\s+(?:{_JSON_NUMBER}\s*{unit}|{unit})"
    forms = "|".join([every, *(_any_case(w) for w in ("hourly", "daily", "weekly", "monthly"))])
    friendly = rf"(?:{forms})(?:\s+{_any_case('on')}\s+\S+)?(?:\s+{_any_case('at')}\s+\S+)?"
    cron = rf"[0-9*,/-]{_CRON_FIELD[:-1]}*(?:\s+{_CRON_FIELD}){{4}}"
    return rf"^\s*(?:{friendly}|{cron})\s*$"


JSON_PATTERNS: dict[type, str] = {
    Duration: rf"^\s*(?:0|(?:{_JSON_NUMBER}\s*{_JSON_DURATION_UNIT}\s*)+)\s*$",
    ByteSize: rf"^\s*{_JSON_NUMBER}\s*{_SIZE_UNIT_PATTERN}?\s*$",
    Rate: "^" + _RATE_RE.pattern + "$",
    ChangeRate: rf"^\s*{_JSON_NUMBER}\s*%\s*/\s*{_alternatives(_CHANGE_PERIODS)}\s*$",
    TimeWindow: "^" + _WINDOW_RE.pattern + "$",
    Schedule: _schedule_pattern(),
}
