"""Capacity and recovery-point arithmetic, including DESIGN's figures exactly."""

from __future__ import annotations

from protectctl.policy.capacity import (
    CapacityEstimate,
    bytes_per_full,
    estimate,
    points_per_snapshot,
    snapshots_retained,
    total_points,
)
from protectctl.units import ByteSize, ChangeRate, Duration, Schedule

EVERY_15M = Schedule.parse("every 15m")
DAILY = Schedule.parse("daily at 20:00")
WEEKLY = Schedule.parse("weekly on sun at 02:00")
GB = 10**9


def test_daily_full_of_100gb_at_10_percent_moves_10gb() -> None:
    assert bytes_per_full(ByteSize.parse("100GB"), ChangeRate.parse("10%/day"), DAILY) == 10 * GB


def test_points_per_snapshot_daily_full() -> None:
    assert points_per_snapshot(EVERY_15M, DAILY) == 97  # 96 syncs + 1 full


def test_points_per_snapshot_weekly_full() -> None:
    assert points_per_snapshot(EVERY_15M, WEEKLY) == 673  # 672 syncs + 1 full


def test_512_snapshots_of_673_points() -> None:
    assert total_points(points_per_snapshot(EVERY_15M, WEEKLY), 512) == 344_576


def test_snapshots_retained_is_retention_over_full_interval() -> None:
    assert snapshots_retained(DAILY, Duration.parse("14d")) == 14
    assert snapshots_retained(WEEKLY, Duration.parse("14d")) == 2
    assert snapshots_retained(WEEKLY, Duration.parse("15d")) == 3  # a partial week still holds a full
    assert snapshots_retained(DAILY, Duration.parse("0s")) == 1  # the latest is always kept


def test_estimate_tier1_quickstart() -> None:
    result = estimate(
        size=ByteSize.parse("100GB"),
        change_rate=ChangeRate.parse("10%/day"),
        sync=EVERY_15M,
        full=DAILY,
        disk_retention=Duration.parse("14d"),
    )
    assert result == CapacityEstimate(
        bytes_per_full=10 * GB,
        points_per_snapshot=97,
        snapshots_retained=14,
        points_total=97 * 14,
        disk_bytes=100 * GB + 14 * 10 * GB,  # first full + 14 days of 10 GB change
        syncs_per_day=96.0,
        fulls_per_day=1.0,
    )


def test_estimate_weekly_full_with_512_snapshots() -> None:
    result = estimate(
        size=None, change_rate=None, sync=EVERY_15M, full=WEEKLY, disk_retention=Duration(512 * 7 * 86400)
    )
    assert (result.points_per_snapshot, result.snapshots_retained, result.points_total) == (673, 512, 344_576)
    assert result.bytes_per_full is None and result.disk_bytes is None


def test_full_moves_at_most_the_whole_source() -> None:
    moved = bytes_per_full(ByteSize.parse("100GB"), ChangeRate.parse("30%/day"), WEEKLY)
    assert moved == 100 * GB


def test_irregular_fulls_count_the_longest_gap() -> None:
    twice_weekly = Schedule.parse("weekly on mon,thu at 01:00")
    assert points_per_snapshot(Schedule.parse("hourly"), twice_weekly) == 4 * 24 + 1
    assert snapshots_retained(twice_weekly, Duration.parse("14d")) == 4
