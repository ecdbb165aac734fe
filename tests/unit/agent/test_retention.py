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
