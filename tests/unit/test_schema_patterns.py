"""The JSON Schema patterns (what an editor checks while a policy is typed) never refuse what a
parser accepts, and refuse the nonsense the issue found editors accepting (`every fortnight`)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.units import JSON_PATTERNS, ByteSize, ChangeRate, Duration, Rate, Schedule, TimeWindow, UnitError
from tests.unit.test_units import _change_rates, _durations, _rates, _sizes, cron_texts, friendly_texts

ACCEPTED = {
    Duration: ["15m", "14d", "7y", "1h30m", "0", "14 days", "1 hour 30 minutes", "6mo", " 2w ", "1.5h"],
    ByteSize: ["100GB", "100GiB", "512MB", "0", "1.5TB", "10 kB", "1024", "7 bytes", "3PiB"],
    Rate: ["50Mbit", "100Mbps", "10MB/s", "1GiB/s", "8bit", "1.5Gbit/s"],
    ChangeRate: ["10%/day", "5%/d", "2%/hour", "30%/week", "0.5 % / day"],
    TimeWindow: ["mon-fri 08:00-18:00", "sat,sun 00:00-24:00", "daily 22:00-06:00"],
    Schedule: [
        "every 15m",
        "every 15 minutes",
        "every 1 hour",
        "every hour",
        "hourly",
        "hourly at :30",
        "daily at 20:00",
        "Daily at 08:00,20:00",
        "weekly on sun at 02:00",
        "monthly on 1 at 03:00",
        "*/15 * * * *",
        "0 4 * * mon",
        "30 2 1 * *",
    ],
}
REFUSED = {
    Duration: ["fortnight", "14 fortnights", "15", "m15", "1h 30"],
    ByteSize: ["100 gigs", "lots", "10GB/s"],
    Rate: ["fast", "10 MB per second"],
    ChangeRate: ["10%", "10%/month", "ten%/day"],
    TimeWindow: ["08:00-18:00", "weekdays"],
    Schedule: ["every fortnight", "sometimes", "every", "*/15 * * *", "fortnightly at 02:00"],
}


@pytest.mark.parametrize("cls", list(ACCEPTED), ids=lambda c: c.__name__)
def test_every_accepted_example_matches_its_pattern(cls: type) -> None:
    pattern = re.compile(JSON_PATTERNS[cls])
    for text in ACCEPTED[cls]:
        cls.parse(text)  # type: ignore[attr-defined]  # the parser does accept it
        assert pattern.match(text), f"{cls.__name__} pattern refuses {text!r}, which the parser accepts"


@pytest.mark.parametrize("cls", list(REFUSED), ids=lambda c: c.__name__)
def test_nonsense_is_refused_by_pattern_and_parser(cls: type) -> None:
    pattern = re.compile(JSON_PATTERNS[cls])
    for text in REFUSED[cls]:
        with pytest.raises(UnitError):
            cls.parse(text)  # type: ignore[attr-defined]
        assert not pattern.match(text), f"{cls.__name__} pattern accepts {text!r}"


@settings(derandomize=True, max_examples=300)
@given(st.one_of(_durations, _sizes, _rates, _change_rates))
def test_canonical_texts_match(value: Duration | ByteSize | Rate | ChangeRate) -> None:
    assert re.match(JSON_PATTERNS[type(value)], str(value)), str(value)


@settings(derandomize=True, max_examples=300)
@given(st.one_of(friendly_texts, cron_texts))
def test_schedule_texts_the_parser_accepts_match(text: str) -> None:
    try:
        Schedule.parse(text)
    except UnitError:
        return
    assert re.match(JSON_PATTERNS[Schedule], text), text
