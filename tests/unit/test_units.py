"""Parsed-once value types: examples, messages, and hypothesis round trips and fuzzing."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.errors import ProtectctlError
from protectctl.units import (
    ByteSize,
    ChangeRate,
    Duration,
    Rate,
    Schedule,
    ScheduleForm,
    TimeWindow,
    UnitError,
)

# ----------------------------------------------------------------- Duration


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("30s", 30, "30s"),
        ("15m", 900, "15m"),
        ("1h", 3600, "1h"),
        ("14d", 14 * 86400, "14d"),
        ("2w", 14 * 86400, "14d"),
        ("6mo", 180 * 86400, "180d"),
        ("7y", 7 * 365 * 86400, "7y"),
        ("1h30m", 5400, "1h30m"),
        ("1h 30m", 5400, "1h30m"),
        ("1.5h", 5400, "1h30m"),
        ("1d2h", 93600, "1d2h"),
        ("0", 0, "0s"),
        ("90 minutes", 5400, "1h30m"),
    ],
)
def test_duration_parses(text: str, seconds: int, canonical: str) -> None:
    value = Duration.parse(text)
    assert value.seconds == seconds
    assert str(value) == canonical


def test_duration_orders_and_counts_days() -> None:
    assert Duration.parse("1d") < Duration.parse("25h") < Duration.parse("2d")
    assert Duration.parse("36h").days == 1.5


def test_duration_error_says_what_is_right() -> None:
    with pytest.raises(UnitError) as err:
        Duration.parse("15x")
    message = str(err.value)
    assert '"15x"' in message and "15m" in message and "mo" in message


@pytest.mark.parametrize("text", ["", "m", "15", "-5m", "1.5s.", "1e3s", "15M", "0.5s", "1001y"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(UnitError):
        Duration.parse(text)


def test_unit_error_is_a_value_error_and_a_protectctl_error() -> None:
    with pytest.raises(ValueError):
        Duration.parse("soon")
    with pytest.raises(ProtectctlError):
        Duration.parse("soon")


# ----------------------------------------------------------------- ByteSize


@pytest.mark.parametrize(
    ("text", "size", "canonical"),
    [
        ("100GB", 100 * 10**9, "100GB"),
        ("100GiB", 100 * 2**30, "100GiB"),
        ("512MB", 512 * 10**6, "512MB"),
        ("1.5TB", 15 * 10**11, "1500GB"),
        ("18TB", 18 * 10**12, "18TB"),
        ("0", 0, "0B"),
        ("1024", 1024, "1KiB"),
        ("1000", 1000, "1kB"),
        ("7", 7, "7B"),
        ("100 gb", 100 * 10**9, "100GB"),
    ],
)
def test_size_parses(text: str, size: int, canonical: str) -> None:
    value = ByteSize.parse(text)
    assert value.bytes == size
    assert str(value) == canonical


def test_size_ambiguous_prefix_names_both_choices() -> None:
    with pytest.raises(UnitError, match=r"100GB .* 100GiB"):
        ByteSize.parse("100G")


def test_size_human() -> None:
    assert ByteSize.parse("10GB").human() == "10 GB"
    assert ByteSize.parse("1.5TB").human() == "1.5 TB"
    assert ByteSize.parse("12").human() == "12 B"


# ----------------------------------------------------------------- Rate


@pytest.mark.parametrize(
    ("text", "bytes_per_second", "canonical"),
    [
        ("50Mbit", 50e6 / 8, "50Mbit/s"),
        ("50Mbit/s", 50e6 / 8, "50Mbit/s"),
        ("100Mbps", 100e6 / 8, "100Mbit/s"),
        ("10MB/s", 10e6, "80Mbit/s"),
        ("1GiB/s", 2**30, "1GiB/s"),
        ("1Gbit", 1e9 / 8, "1Gbit/s"),
    ],
)
def test_rate_parses(text: str, bytes_per_second: float, canonical: str) -> None:
    value = Rate.parse(text)
    assert value.bytes_per_second == bytes_per_second
    assert str(value) == canonical


@pytest.mark.parametrize("text", ["0Mbit", "fast", "50Mb/h", "50", ""])
def test_rate_rejects(text: str) -> None:
    with pytest.raises(UnitError):
        Rate.parse(text)


# ----------------------------------------------------------------- ChangeRate


@pytest.mark.parametrize(
    ("text", "fraction", "canonical"),
    [
        ("10%/day", 0.10, "10%/day"),
        ("5%/d", 0.05, "5%/day"),
        ("2%/hour", 0.48, "48%/day"),
        ("30%/week", 0.04285714286, "4.285714286%/day"),
        ("0.5%/day", 0.005, "0.5%/day"),
    ],
)
def test_change_rate_parses(text: str, fraction: float, canonical: str) -> None:
    value = ChangeRate.parse(text)
    assert value.fraction_per_day == pytest.approx(fraction)
    assert str(value) == canonical


def test_change_rate_rejects_unknown_period() -> None:
    with pytest.raises(UnitError, match="10%/day"):
        ChangeRate.parse("10%/fortnight")


# ----------------------------------------------------------------- TimeWindow

_MON = datetime(2024, 3, 4)  # a Monday


def test_window_weekdays() -> None:
    window = TimeWindow.parse("mon-fri 08:00-18:00")
    assert window.contains(_MON.replace(hour=8))
    assert window.contains(_MON.replace(hour=17, minute=59))
    assert not window.contains(_MON.replace(hour=18))
    assert not window.contains(_MON.replace(hour=7, minute=59))
    assert not window.contains((_MON + timedelta(days=5)).replace(hour=12))  # Saturday


def test_window_whole_weekend() -> None:
    window = TimeWindow.parse("sat,sun 00:00-24:00")
    sunday = _MON + timedelta(days=6)
    assert window.contains(sunday.replace(hour=23, minute=59, second=59))
    assert not window.contains(_MON)
    assert str(window) == "sat,sun 00:00-24:00"


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    window = TimeWindow.parse("fri 22:00-06:00")
    friday = _MON + timedelta(days=4)
    assert window.contains(friday.replace(hour=23))
    assert window.contains((friday + timedelta(days=1)).replace(hour=5))  # Saturday morning
    assert not window.contains(friday.replace(hour=5))  # Friday morning: Thursday's window
    assert TimeWindow.parse("daily 22:00-06:00").contains(_MON.replace(hour=3))


@pytest.mark.parametrize("text", ["mon 08:00-08:00", "funday 08:00-09:00", "mon 25:00-26:00", "mon 8-9"])
def test_window_rejects(text: str) -> None:
    with pytest.raises(UnitError):
        TimeWindow.parse(text)


# ----------------------------------------------------------------- Schedule


@pytest.mark.parametrize(
    ("text", "on_calendar", "cron", "max_s", "runs_per_day"),
    [
        ("every 15m", "*-*-* *:00/15:00", "*/15 * * * *", 900, 96),
        ("every 2h", "*-*-* 00/2:00:00", "0 */2 * * *", 7200, 12),
        ("every 1d", "*-*-* 00:00:00", "0 0 * * *", 86400, 1),
        ("hourly", "*-*-* *:00:00", "0 * * * *", 3600, 24),
        ("hourly at :30", "*-*-* *:30:00", "30 * * * *", 3600, 24),
        ("daily at 20:00", "*-*-* 20:00:00", "0 20 * * *", 86400, 1),
        ("daily at 08:00,20:00", "*-*-* 08,20:00:00", "0 8,20 * * *", 43200, 2),
        ("weekly on sun at 02:00", "Sun *-*-* 02:00:00", "0 2 * * 0", 7 * 86400, 1 / 7),
        ("weekly on mon,thu at 01:30", "Mon,Thu *-*-* 01:30:00", "30 1 * * 1,4", 4 * 86400, 2 / 7),
        ("monthly on 1 at 03:00", "*-*-01 03:00:00", "0 3 1 * *", 31 * 86400, 12 / 365.2425),
        ("*/15 * * * *", "*-*-* *:00/15:00", "*/15 * * * *", 900, 96),
        ("0 2 * * mon-fri", "Mon..Fri *-*-* 02:00:00", "0 2 * * 1-5", 3 * 86400, 5 / 7),
    ],
)
def test_schedule_forms(text: str, on_calendar: str, cron: str, max_s: int, runs_per_day: float) -> None:
    schedule = Schedule.parse(text)
    assert schedule.to_on_calendar() == on_calendar
    assert schedule.to_cron() == cron
    assert schedule.max_interval_s() == max_s
    assert schedule.runs_per_day() == pytest.approx(runs_per_day)
    assert Schedule.parse(str(schedule)) == schedule


def test_schedule_min_interval() -> None:
    assert Schedule.parse("weekly on mon,thu at 01:30").min_interval_s() == 3 * 86400
    assert Schedule.parse("monthly on 1 at 03:00").min_interval_s() == 28 * 86400
    assert Schedule.parse("daily at 08:00,20:30").min_interval_s() == 11.5 * 3600


def test_schedule_cron_leap_day_is_exact_over_the_400_year_cycle() -> None:
    leap = Schedule.parse("0 0 29 2 *")
    # 2096 -> 2104: 2100 is not a leap year.
    assert leap.max_interval_s() == (date(2104, 2, 29) - date(2096, 2, 29)).days * 86400
    assert leap.min_interval_s() == (date(2004, 2, 29) - date(2000, 2, 29)).days * 86400


def test_schedule_cron_day_of_month_or_day_of_week() -> None:
    # cron runs when EITHER restricted day field matches: the 1st, and every Monday.
    schedule = Schedule.parse("0 0 1 * mon")
    assert schedule.on_calendar_lines() == ("Mon *-*-* 00:00:00", "*-*-01 00:00:00")
    assert schedule.runs_on(date(2024, 3, 1)) == (0,)  # a Friday, the 1st
    assert schedule.runs_on(date(2024, 3, 4)) == (0,)  # a Monday
    assert schedule.runs_on(date(2024, 3, 5)) == ()
    # A '*'-led field means both must match: odd days that are weekdays.
    both = Schedule.parse("0 0 */2 * 1-5")
    assert both.runs_on(date(2024, 3, 5)) == (0,)  # Tuesday the 5th
    assert both.runs_on(date(2024, 3, 4)) == ()  # Monday the 4th


def test_schedule_needing_several_expressions() -> None:
    schedule = Schedule.parse("daily at 08:00,20:30")
    assert schedule.cron_lines() == ("0 8 * * *", "30 20 * * *")
    assert schedule.on_calendar_lines() == ("*-*-* 08:00:00", "*-*-* 20:30:00")
    with pytest.raises(UnitError, match="needs 2"):
        schedule.to_cron()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every 90m", r"nearest valid: every 1h or every 2h"),
        ("every 7m", r"nearest valid: every 6m or every 10m"),
        ("every 25h", r"weekly on"),
        ("every 30s", r"every 1m"),
        ("0 0 31 2 *", r"never runs"),
        ("61 * * * *", r"0-59"),
        ("* * * *", r"5 fields"),
        ("5-1 * * * *", r"1-5"),
        ("monthly on 31 at 00:00", r"1-28"),
        ("weekly on funday at 01:00", r"mon-fri"),
        ("daily at 24:00", r"23:59"),
        ("soon", r"every 15m"),
        ("*,5 * * * *", r"stand alone"),
        ("*/0 * * * *", r"positive"),
    ],
)
def test_schedule_errors_say_what_would_be_right(text: str, message: str) -> None:
    with pytest.raises(UnitError, match=message):
        Schedule.parse(text)


def test_schedule_defaults_and_equality() -> None:
    assert str(Schedule.parse("daily")) == "daily at 00:00"
    assert str(Schedule.parse("weekly")) == "weekly on sun at 00:00"
    assert Schedule.parse("every 24h") == Schedule.parse("every 1d")
    assert Schedule.parse("Every  15m") == Schedule.parse("every 15m")
    assert Schedule.parse("every 1d") != Schedule.parse("daily at 00:00")
    assert Schedule.parse("*/15 * * * *").form is ScheduleForm.CRON


def test_next_after() -> None:
    utc = UTC
    schedule = Schedule.parse("weekly on sun at 02:00")
    assert schedule.next_after(datetime(2024, 3, 4, 12, tzinfo=utc)) == datetime(2024, 3, 10, 2, tzinfo=utc)
    # Strictly after: a run at exactly `dt` is not the next one.
    assert schedule.next_after(datetime(2024, 3, 10, 2, tzinfo=utc)) == datetime(2024, 3, 17, 2, tzinfo=utc)
    every = Schedule.parse("every 15m")
    assert every.next_after(datetime(2024, 3, 4, 23, 59, 30)) == datetime(2024, 3, 5, 0, 0)
    assert every.next_after(datetime(2024, 3, 4, 10, 15, 0, 1)) == datetime(2024, 3, 4, 10, 30)


# ----------------------------------------------------------------- hypothesis: round trips

_durations = st.builds(Duration, st.integers(0, 1000 * 365 * 86400))
_sizes = st.builds(ByteSize, st.integers(0, 10**21))
_rates = st.builds(Rate, st.integers(1, 10**18).map(lambda bits: bits / 8))
_change_rates = st.builds(ChangeRate, st.floats(0, 1000, allow_nan=False))


def _cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    values = st.integers(low, high)
    single = values.map(str)
    ranged = st.tuples(values, values).map(lambda ab: f"{min(ab)}-{max(ab)}")
    stepped = st.tuples(ranged, st.integers(1, high - low + 1)).map(lambda rs: f"{rs[0]}/{rs[1]}")
    item = st.one_of(single, ranged, stepped)
    listed = st.lists(item, min_size=1, max_size=4).map(",".join)
    star = st.one_of(st.just("*"), st.integers(1, high - low + 1).map(lambda n: f"*/{n}"))
    return st.one_of(star, listed)


cron_texts = st.tuples(
    _cron_field(0, 59), _cron_field(0, 23), _cron_field(1, 31), _cron_field(1, 12), _cron_field(0, 7)
).map(" ".join)

_clock = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")
_clocks = st.lists(_clock, min_size=1, max_size=3).map(",".join)
_days = st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1, max_size=3)
friendly_texts = st.one_of(
    st.sampled_from([1, 2, 3, 5, 10, 15, 30, 60, 120, 360, 720, 1440]).map(lambda m: f"every {m}m"),
    st.lists(st.integers(0, 59), min_size=1, max_size=3).map(
        lambda ms: "hourly at " + ",".join(f":{m:02d}" for m in ms)
    ),
    _clocks.map(lambda c: f"daily at {c}"),
    st.tuples(_days, _clocks).map(lambda dc: f"weekly on {','.join(dc[0])} at {dc[1]}"),
    st.tuples(st.lists(st.integers(1, 28), min_size=1, max_size=3), _clocks).map(
        lambda dc: f"monthly on {','.join(map(str, dc[0]))} at {dc[1]}"
    ),
)


def _parse_or_none(text: str) -> Schedule | None:
    try:
        return Schedule.parse(text)
    except UnitError:
        return None  # e.g. a cron day that never exists, like 31 in February only


schedules = st.one_of(friendly_texts, cron_texts).map(_parse_or_none).filter(lambda s: s is not None)


@given(_durations)
def test_duration_round_trips(value: Duration) -> None:
    assert Duration.parse(str(value)) == value


@given(_sizes)
def test_size_round_trips(value: ByteSize) -> None:
    assert ByteSize.parse(str(value)) == value


@given(_rates)
def test_rate_round_trips(value: Rate) -> None:
    assert Rate.parse(str(value)) == value


@given(_change_rates)
def test_change_rate_round_trips(value: ChangeRate) -> None:
    assert ChangeRate.parse(str(value)) == value


@given(st.frozensets(st.integers(0, 6), min_size=1), st.integers(0, 1439), st.integers(1, 1440))
def test_window_round_trips(days: frozenset[int], start: int, end: int) -> None:
    try:
        window = TimeWindow(days, start, end)
    except UnitError:
        assert start == end
        return
    assert TimeWindow.parse(str(window)) == window


@settings(max_examples=150, deadline=None)
@given(schedules)
def test_schedule_round_trips(schedule: Schedule | None) -> None:
    assert schedule is not None
    assert Schedule.parse(str(schedule)) == schedule


# ----------------------------------------------------------------- hypothesis: fuzzing

_UNIT_ALPHABET = st.sampled_from(
    [*"0123456789 .:-,*/%smhdwoyKMGTiBbitpsaunorfe²١\n\t", "mo", "GiB", "at", "on", "every", "daily"]
)
_unit_like = st.lists(_UNIT_ALPHABET, max_size=20).map("".join)
_PARSERS: list[Callable[[str], object]] = [
    Duration.parse,
    ByteSize.parse,
    Rate.parse,
    ChangeRate.parse,
    TimeWindow.parse,
    Schedule.parse,
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), _unit_like, cron_texts, friendly_texts), st.sampled_from(_PARSERS))
def test_any_text_parses_or_raises_unit_error(text: str, parse: Callable[[str], object]) -> None:
    try:
        parse(text)
    except UnitError as err:
        assert str(err)  # a message, never empty


# ----------------------------------------------------------------- hypothesis: schedule semantics


def _brute_force_gaps(schedule: Schedule, start: datetime, days: int) -> tuple[int, int]:
    """Max and min gap between runs, walking the runs for `days` days."""
    end = start + timedelta(days=days)
    runs = list(itertools.takewhile(lambda run: run < end, schedule.iter_runs(start)))
    gaps = [int((b - a).total_seconds()) for a, b in itertools.pairwise(runs)]
    return max(gaps), min(gaps)


_weekly_schedules = st.one_of(
    friendly_texts.filter(lambda t: not t.startswith("monthly")),
    st.tuples(_cron_field(0, 59), _cron_field(0, 23), _cron_field(0, 7)).map(lambda f: f"{f[0]} {f[1]} * * {f[2]}"),
).map(Schedule.parse)


@settings(max_examples=60, deadline=None)
@given(_weekly_schedules)
def test_gaps_match_enumeration(schedule: Schedule) -> None:
    # Two weeks of runs contain every gap of a pattern that repeats weekly.
    assert _brute_force_gaps(schedule, datetime(2024, 3, 4), 15) == (
        schedule.max_interval_s(),
        schedule.min_interval_s(),
    )


def test_monthly_gaps_match_enumeration() -> None:
    schedule = Schedule.parse("monthly on 1,15 at 03:00")
    max_s, min_s = _brute_force_gaps(schedule, datetime(2024, 1, 1), 800)
    assert (max_s, min_s) == (schedule.max_interval_s(), schedule.min_interval_s())


# A minimal OnCalendar evaluator, independent of units.py, for the forms systemd documents
# in systemd.time(7): "[WEEKDAYS ]Y-M-D H:M:S" with '*', lists, 'a..b' ranges and 'a/b' repetition.
_SYSTEMD_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _calendar_values(component: str, low: int, high: int) -> set[int]:
    if component == "*":
        return set(range(low, high + 1))
    values: set[int] = set()
    for item in component.split(","):
        if "/" in item:
            start, step = item.split("/")
            values.update(range(int(start), high + 1, int(step)))
        elif ".." in item:
            first, last = item.split("..")
            values.update(range(int(first), int(last) + 1))
        else:
            values.add(int(item))
    return values


def _calendar_weekdays(text: str) -> set[int]:
    days: set[int] = set()
    for item in text.split(","):
        first, _, last = item.partition("..")
        a = _SYSTEMD_DAYS.index(first)
        b = _SYSTEMD_DAYS.index(last) if last else a
        days.update(range(a, b + 1))
    return days


def oncalendar_minutes(expression: str, day: date) -> set[int]:
    """Minutes of `day` at which the OnCalendar expression elapses."""
    parts = expression.split(" ")
    weekdays = _calendar_weekdays(parts[0]) if len(parts) == 3 else set(range(7))
    year, month, dom = parts[-2].split("-")
    hour, minute, second = parts[-1].split(":")
    assert year == "*" and second == "00"
    if (
        day.weekday() not in weekdays
        or day.month not in _calendar_values(month, 1, 12)
        or day.day not in _calendar_values(dom, 1, 31)
    ):
        return set()
    return {h * 60 + m for h in _calendar_values(hour, 0, 23) for m in _calendar_values(minute, 0, 59)}


# A leap-year week across Feb/Mar, a year end and a mid-month Saturday.
_SAMPLE_DAYS = [date(2024, 2, 26) + timedelta(days=i) for i in range(9)] + [
    date(2023, 12, 31),
    date(2024, 6, 15),
]


@settings(max_examples=200, deadline=None)
@given(schedules)
def test_cron_and_on_calendar_agree(schedule: Schedule | None) -> None:
    assert schedule is not None
    cron_schedules = [Schedule.parse(line) for line in schedule.cron_lines()]
    for expression in schedule.on_calendar_lines():
        assert re.fullmatch(r"(\S+ )?\*-\S+-\S+ \S+:\S+:00", expression)
    for day in _SAMPLE_DAYS:
        expected = set(schedule.runs_on(day))
        from_cron = set().union(*(s.runs_on(day) for s in cron_schedules))
        from_calendar = set().union(*(oncalendar_minutes(e, day) for e in schedule.on_calendar_lines()))
        assert from_cron == expected, day
        assert from_calendar == expected, day


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("every 15 minutes", "every 15m"),
        ("every 1 hour", "every 1h"),
        ("every 2 hours", "every 2h"),
        ("every hour", "every 1h"),
        ("every minute", "every 1m"),
        ("every day", "every 1d"),
        ("every 30min", "every 30m"),
        ("Every 15 Minutes", "every 15m"),
    ],
)
def test_schedule_accepts_natural_spellings(text: str, canonical: str) -> None:
    """The spellings people write are accepted consistently (`14 days` always was; `every 15
    minutes` was refused while `every 30min` passed)."""
    assert str(Schedule.parse(text)) == canonical
    assert Schedule.parse(text) == Schedule.parse(canonical)


@pytest.mark.parametrize(("text", "canonical"), [("14 days", "14d"), ("1 hour 30 minutes", "1h30m"), ("7 years", "7y")])
def test_duration_accepts_natural_spellings(text: str, canonical: str) -> None:
    assert str(Duration.parse(text)) == canonical
