"""Retention selection: fixed cases and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from protectctl.agent.retention import PointRef, RetentionSpec, plan_prune, plan_source

NOW = datetime(2026, 8, 20, 12, 0, tzinfo=UTC)
DAY = 86400


def _points(source: str, hours_ago: list[int]) -> list[PointRef]:
    return [PointRef(f"{source}-{h}", source, NOW - timedelta(hours=h)) for h in hours_ago]


def _kept(decisions: list) -> set[str]:  # type: ignore[type-arg]
    return {d.point.id for d in decisions if d.keep}


def test_keep_within_keeps_young_and_newest_only() -> None:
    points = _points("a/b", [1, 5, 30, 50, 100])
    decisions = plan_source(points, RetentionSpec(keep_within_s=2 * DAY), now=NOW)
    assert _kept(decisions) == {"a/b-1", "a/b-5", "a/b-30"}


def test_daily_keeps_newest_of_each_day() -> None:
    # Every 6 hours for 5 days; keep 3 days: the newest of the 3 latest days.
    points = _points("a/b", [h for h in range(0, 120, 6)])
    decisions = plan_source(points, RetentionSpec(keep_within_s=0, daily=3), now=NOW)
    kept = sorted((d.point.time for d in decisions if d.keep), reverse=True)
    assert len(kept) == 3
    assert [t.date() for t in kept] == [NOW.date() - timedelta(days=i) for i in range(3)]


def test_newest_always_kept_even_if_old() -> None:
    points = _points("a/b", [1000, 2000])
    decisions = plan_source(points, RetentionSpec(keep_within_s=DAY), now=NOW)
    assert _kept(decisions) == {"a/b-1000"}


def test_newest_complete_kept_when_newest_incomplete() -> None:
    points = [
        PointRef("new", "a/b", NOW - timedelta(days=3), complete=False),
        PointRef("good", "a/b", NOW - timedelta(days=4)),
        PointRef("old", "a/b", NOW - timedelta(days=5)),
    ]
    decisions = plan_source(points, RetentionSpec(keep_within_s=DAY), now=NOW)
    assert _kept(decisions) == {"new", "good"}


def test_other_sources_untouched() -> None:
    points = _points("a/b", [100, 200]) + _points("c/d", [100, 200])
    plan = plan_prune(points, {"a/b": RetentionSpec(keep_within_s=0)}, now=NOW)
    assert set(plan) == {"a/b"}
    assert all(d.point.source == "a/b" for d in plan["a/b"])


_hours = st.lists(st.integers(min_value=-5, max_value=24 * 800), max_size=40, unique=True)
_specs = st.builds(
    RetentionSpec,
    keep_within_s=st.integers(min_value=0, max_value=60 * DAY),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 14),
    yearly=st.integers(0, 3),
)


@given(_hours, _specs)
def test_newest_always_kept(hours: list[int], spec: RetentionSpec) -> None:
    points = _points("a/b", hours)
    decisions = plan_source(points, spec, now=NOW)
    assert len(decisions) == len(points)
    if points:
        newest = max(points, key=lambda p: p.time)
        assert newest.id in _kept(decisions)


@given(_hours, _hours, _specs)
def test_decision_depends_only_on_own_points(mine: list[int], theirs: list[int], spec: RetentionSpec) -> None:
    alone = plan_prune(_points("a/b", mine), {"a/b": spec}, now=NOW)
    mixed_points = _points("a/b", mine) + _points("x/y", theirs)
    mixed = plan_prune(mixed_points, {"a/b": spec, "x/y": RetentionSpec(keep_within_s=0)}, now=NOW)
    assert _kept(alone["a/b"]) == _kept(mixed["a/b"])
    assert all(d.point.source == "x/y" for d in mixed["x/y"])


@given(_hours, _specs)
def test_bucket_counts_bound_kept_outside_within(hours: list[int], spec: RetentionSpec) -> None:
    decisions = plan_source(_points("a/b", hours), spec, now=NOW)
    outside = [d for d in decisions if d.keep and "within" not in d.reasons]
    assert len(outside) <= 2 + spec.daily + spec.weekly + spec.monthly + spec.yearly


def _chain(days: int) -> list[PointRef]:
    """A base backup at 01:00 every day and a WAL point every 6 hours, for `days` days."""
    out = []
    for d in range(days):
        day = datetime(2026, 8, 20, tzinfo=UTC) - timedelta(days=d)
        out.append(PointRef(f"base-{d}", "db/pg", day + timedelta(hours=1), role="base"))
        out += [PointRef(f"wal-{d}-{h}", "db/pg", day + timedelta(hours=h), role="log") for h in (6, 12, 18)]
    return [p for p in out if p.time <= NOW]


def test_log_chain_keeps_what_recovery_to_any_time_in_the_window_needs() -> None:
    points = _chain(10)
    decisions = plan_source(points, RetentionSpec(keep_within_s=3 * DAY, daily=6), now=NOW)
    kept = _kept(decisions)
    horizon = NOW - timedelta(days=3)
    by_id = {p.id: p for p in points}
    # the window base: the newest base at or before the horizon (3 days ago at noon -> 01:00 that day)
    (anchor,) = [d.point.id for d in decisions if "window base" in d.reasons]
    assert by_id[anchor].time == datetime(2026, 8, 17, 1, 0, tzinfo=UTC) <= horizon
    # every WAL point from the window base on: replay from it reaches any instant of the window
    logs = {p.id for p in points if p.role == "log" and p.time >= by_id[anchor].time}
    assert logs <= kept
    # older WAL points roll forward only bases that are gone: forgotten, daily rule or not
    assert not {p.id for p in points if p.role == "log" and p.time < by_id[anchor].time} & kept
    # the daily rule picks base backups, one for each of the 6 newest days
    daily = {d.point.id for d in decisions if "daily" in d.reasons}
    assert daily == {f"base-{d}" for d in range(6)}


def test_log_chain_without_a_base_before_the_horizon_keeps_the_oldest_base_and_its_logs() -> None:
    points = _chain(2)
    decisions = plan_source(points, RetentionSpec(keep_within_s=7 * DAY), now=NOW)
    assert _kept(decisions) == {p.id for p in points}
    assert not any("window base" in d.reasons for d in decisions)


@given(st.lists(st.tuples(st.integers(0, 24 * 20), st.booleans()), min_size=1, max_size=40), st.integers(1, 10))
def test_log_chain_window_is_always_replayable(raw: list[tuple[int, bool]], keep_days: int) -> None:
    """Property: for any mix of base and WAL points, every instant between the window base and
    now can be reached from a kept base by kept WAL points only (no kept log precedes a needed
    log that was forgotten)."""
    points = [
        PointRef(f"p{i}", "s", NOW - timedelta(hours=h), role="base" if is_base else "log")
        for i, (h, is_base) in enumerate(raw)
    ]
    decisions = plan_source(points, RetentionSpec(keep_within_s=keep_days * DAY), now=NOW)
    kept = _kept(decisions)
    bases = sorted((p for p in points if p.role == "base"), key=lambda p: (p.time, p.id))  # ties: by id
    horizon = NOW - timedelta(days=keep_days)
    before = [b for b in bases if b.time <= horizon]
    start = before[-1] if before else (bases[0] if bases else None)
    if start is None or not any(p.role == "log" for p in points):
        return  # nothing to roll forward: the ordinary rules apply
    assert start.id in kept
    for p in points:
        if p.role == "log" and p.time >= start.time:
            assert p.id in kept, (p, start)
