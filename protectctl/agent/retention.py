"""Which recovery points a retention policy keeps.

Pure: values in, values out; no repository, no clock. Rules, per source:

- the newest point is always kept, and so is the newest *complete* point (a source whose
  recent runs fail never loses its last good copy);
- every point younger than `keep_within_s` (measured from `now`) is kept;
- `daily`/`weekly`/`monthly`/`yearly` = N keeps the newest point of each of the N most recent
  days/ISO weeks/months/years that have points (calendar in `tz`, UTC by default).

A point is forgotten only if no rule keeps it. Sources are planned independently: a
source's decision depends on its own points only, and a source without a spec is untouched.

Sources whose points form a log chain (PostgreSQL: base backups, then WAL points that roll a
base forward) keep what recovery *to any time in the window* needs, not just points in it:

- the calendar rules and "newest complete" pick base backups only (a lone WAL point restores
  nothing; a base backup holds the WAL of its own consistency point);
- the newest base backup at or before the horizon is kept ("window base"), so that the
  window starts at the horizon, not at the first base backup inside it;
- every log point from the window base on is kept ("log of the window"); older log points
  only ever rolled forward bases that are gone, and are forgotten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo


@dataclass(frozen=True, slots=True)
class RetentionSpec:
    """How long a source's points are kept on disk (from the SLA's retention)."""

    keep_within_s: int
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0


@dataclass(frozen=True, slots=True)
class PointRef:
    """What retention needs to know about a point."""

    id: str
    source: str
    time: datetime
    complete: bool = True
    role: str = "point"  # "point" (stands alone), "base" or "log" (a log chain's base backup / log)


@dataclass(frozen=True, slots=True)
class Decision:
    """The fate of one point and the rules that keep it (empty = forget)."""

    point: PointRef
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


_Bucket = Callable[[datetime], tuple[int, ...]]

_BUCKETS: tuple[tuple[str, _Bucket], ...] = (
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)


def plan_source(points: Sequence[PointRef], spec: RetentionSpec, *, now: datetime, tz: tzinfo = UTC) -> list[Decision]:
    """Decide every point of one source; newest first."""
    ordered = sorted(points, key=lambda p: (p.time, p.id), reverse=True)
    reasons: dict[str, list[str]] = {p.id: [] for p in ordered}
    if not ordered:
        return []
    reasons[ordered[0].id].append("newest")
    restorable = [p for p in ordered if p.role != "log"]  # all of them, unless a log chain
    newest_complete = next((p for p in restorable if p.complete), None)
    if newest_complete is not None:
        reasons[newest_complete.id].append("newest complete")
    horizon = now - timedelta(seconds=spec.keep_within_s)
    for point in ordered:
        if point.time >= horizon:
            reasons[point.id].append("within")
    counts = {"daily": spec.daily, "weekly": spec.weekly, "monthly": spec.monthly, "yearly": spec.yearly}
    for rule, bucket_of in _BUCKETS:
        for point in _newest_per_bucket(restorable, bucket_of, counts[rule], tz):
            reasons[point.id].append(rule)
    if len(restorable) < len(ordered):
        _keep_log_chain(ordered, horizon, reasons)
    return [Decision(p, tuple(reasons[p.id])) for p in ordered]


def _keep_log_chain(ordered: Sequence[PointRef], horizon: datetime, reasons: dict[str, list[str]]) -> None:
    """The window base and every log point after it (`ordered` is newest first)."""
    bases = [p for p in ordered if p.role == "base" and p.complete]
    if not bases:
        return  # nothing to roll forward: log points are kept only by the rules above
    anchor = next((b for b in bases if b.time <= horizon), bases[-1])
    if anchor.time <= horizon:
        reasons[anchor.id].append("window base")
    for point in ordered:
        if point.role == "log" and point.time >= anchor.time and "within" not in reasons[point.id]:
            reasons[point.id].append("log of the window")


def _newest_per_bucket(ordered: Sequence[PointRef], bucket_of: _Bucket, count: int, tz: tzinfo) -> list[PointRef]:
    """The newest point of each of the `count` most recent buckets (`ordered` is newest first)."""
    kept: list[PointRef] = []
    last: tuple[int, ...] | None = None
    for point in ordered:
        if len(kept) >= count:
            break
        bucket = bucket_of(point.time.astimezone(tz))
        if bucket != last:
            kept.append(point)
            last = bucket
    return kept


def plan_prune(
    points: Sequence[PointRef],
    specs: Mapping[str, RetentionSpec],
    *,
    now: datetime,
    tz: tzinfo = UTC,
) -> dict[str, list[Decision]]:
    """Decide the points of every source that has a spec; other sources are left out entirely."""
    by_source: dict[str, list[PointRef]] = defaultdict(list)
    for point in points:
        if point.source in specs:
            by_source[point.source].append(point)
    return {source: plan_source(by_source.get(source, []), spec, now=now, tz=tz) for source, spec in specs.items()}
