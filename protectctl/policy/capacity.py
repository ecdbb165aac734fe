"""Capacity and recovery-point arithmetic shown by `plan` for each protection group.

Pure: values in, values out; no I/O, no clock.

The model (deliberately simple, and an upper bound: compression and deduplication are
ignored, and every changed byte is assumed to be a distinct byte):

- A *snapshot* is one full ("express full") plus the syncs until the next full, so it holds
  `syncs between fulls + 1` recovery points. Fulls can be irregular (`weekly on mon,thu`), so
  the syncs are counted over the LONGEST gap between fulls.
- Data moved per express full = size x change rate x days between fulls (again the longest
  gap), capped at the size itself: a full can at most move every block once.
- Snapshots retained = ceil(disk retention / average full interval), at least one.
- Recovery points retained = points per snapshot x snapshots retained.
- Disk use over retention = the first full (the whole size) + change per day x retention days.

Figures this must reproduce (DESIGN): 100 GB at 10 %/day with a daily full moves 10 GB per
full; 15-minute syncs make 97 points per snapshot with a daily full and 673 with a weekly
one; 512 snapshots of 673 points are 344,576 recovery points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from protectctl.units import DAY, ByteSize, ChangeRate, Duration, Schedule

__all__ = [
    "CapacityEstimate",
    "bytes_per_full",
    "disk_bytes",
    "estimate",
    "points_per_snapshot",
    "snapshots_retained",
    "total_points",
]

# Run counts are floats averaged over the calendar; trimming float noise before ceil()
# keeps 96.00000000000001 syncs from becoming 97.
_FLOAT_DIGITS = 9


@dataclass(frozen=True, slots=True)
class CapacityEstimate:
    """What a protection group costs; byte figures are None when size or change rate is unknown."""

    bytes_per_full: int | None
    points_per_snapshot: int
    snapshots_retained: int
    points_total: int
    disk_bytes: int | None
    syncs_per_day: float
    fulls_per_day: float


def _ceil(value: float) -> int:
    return math.ceil(round(value, _FLOAT_DIGITS))


def points_per_snapshot(sync: Schedule, full: Schedule) -> int:
    """Recovery points in one snapshot: the syncs in the longest gap between fulls, plus the full."""
    longest_full_gap_days = full.max_interval_s() / DAY
    return _ceil(longest_full_gap_days * sync.runs_per_day()) + 1


def total_points(points_per_snapshot: int, snapshots: int) -> int:
    """Recovery points kept when `snapshots` snapshots of `points_per_snapshot` points are kept."""
    return points_per_snapshot * snapshots


def snapshots_retained(full: Schedule, disk_retention: Duration) -> int:
    """Snapshots kept on disk: one per full within the retention period, and at least the latest."""
    return max(1, _ceil(disk_retention.days * full.runs_per_day()))


def bytes_per_full(size: ByteSize, change_rate: ChangeRate, full: Schedule) -> int:
    """Data moved by one express full over the longest gap between fulls, at most the whole size."""
    days = Fraction(full.max_interval_s(), DAY)
    moved = Fraction(size.bytes) * Fraction(change_rate.fraction_per_day) * days
    return min(size.bytes, round(moved))


def disk_bytes(size: ByteSize, change_rate: ChangeRate, disk_retention: Duration) -> int:
    """Disk used over retention: the first full plus every day's change for the retention period."""
    days = Fraction(disk_retention.seconds, DAY)
    return size.bytes + round(Fraction(size.bytes) * Fraction(change_rate.fraction_per_day) * days)


def estimate(
    *,
    size: ByteSize | None,
    change_rate: ChangeRate | None,
    sync: Schedule,
    full: Schedule,
    disk_retention: Duration,
    long_term: int = 0,
) -> CapacityEstimate:
    """Everything `plan` reports for one group; byte figures need both size and change rate.

    `long_term` snapshots (the retention's weekly/monthly/yearly counts) are kept beyond the
    disk retention one point each: they add to the snapshots, not whole snapshots of syncs.
    """
    per_snapshot = points_per_snapshot(sync, full)
    within = snapshots_retained(full, disk_retention)
    snapshots = within + long_term
    moved: int | None = None
    disk: int | None = None
    if size is not None and change_rate is not None:
        moved = bytes_per_full(size, change_rate, full)
        disk = disk_bytes(size, change_rate, disk_retention)
    return CapacityEstimate(
        bytes_per_full=moved,
        points_per_snapshot=per_snapshot,
        snapshots_retained=snapshots,
        points_total=total_points(per_snapshot, within) + long_term,
        disk_bytes=disk,
        syncs_per_day=sync.runs_per_day(),
        fulls_per_day=full.runs_per_day(),
    )
