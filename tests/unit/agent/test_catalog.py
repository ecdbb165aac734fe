"""TIME parsing and point selection (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protectctl.catalog import TimeSpecError, parse_time, select_point
from protectctl.errors import RestoreError

NOW = datetime(2026, 8, 20, 12, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


@dataclass(frozen=True)
class P:
    id: str
    time: datetime


def test_relative_forms() -> None:
    assert parse_time("-2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_time("-30m", now=NOW) == NOW - timedelta(minutes=30)
    assert parse_time("-1d12h", now=NOW) == NOW - timedelta(hours=36)
    assert parse_time("latest", now=NOW) == "latest"


def test_iso_with_and_without_zone() -> None:
    assert parse_time("2026-08-01T10:00:00Z", now=NOW) == datetime(2026, 8, 1, 10, tzinfo=UTC)
    assert parse_time("2026-08-01T10:00", now=NOW, local_tz=PLUS2) == datetime(2026, 8, 1, 8, tzinfo=UTC)
    assert parse_time("2026-08-01", now=NOW, local_tz=UTC) == datetime(2026, 8, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "-2", "2h", "-2x", "2026-13-01", ""])
def test_bad_times_are_clear_errors(text: str) -> None:
    with pytest.raises(TimeSpecError) as info:
        parse_time(text, now=NOW)
    assert info.value.hint


@given(st.text(max_size=30))
def test_parse_time_never_raises_other_errors(text: str) -> None:
    try:
        result = parse_time(text, now=NOW, local_tz=UTC)
    except TimeSpecError:
        return
    assert result == "latest" or result.tzinfo is not None


def test_select_point_newest_at_or_before() -> None:
    points = [P("a", NOW - timedelta(hours=3)), P("b", NOW - timedelta(hours=1)), P("c", NOW)]
    assert select_point(points, NOW - timedelta(hours=1)).id == "b"
    assert select_point(points, NOW - timedelta(minutes=90)).id == "a"
    assert select_point(points, "latest").id == "c"
    with pytest.raises(RestoreError, match="earliest"):
        select_point(points, NOW - timedelta(hours=4), source="docs/home")
    with pytest.raises(RestoreError):
        select_point([], "latest")
