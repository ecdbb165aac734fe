"""The PostgreSQL recovery catalog: base backups, shipped WAL, recoverable windows, gaps.

Pure: recovery points in (anything with `id`, `time`, `kind`, `extra`), values out. The
facts come from each point's `extra["pg"]` (written by backup.py):

    base            a base backup: start/stop LSN and WAL segment, timeline, label, stop time
    wal             WAL segments stored in this point: name, timeline, segno, first/last
                    transaction (commit or abort) time found in it by pg_waldump
    history         timeline history files stored in this point
    dropped         segments the bounded spool dropped (name, time, reason)
    covered_until / covered_through
                    every transaction committed before `covered_until` is in segments up to
                    `covered_through` (the sync switched the WAL and waited for the archiver)

A base backup B is usable from its stop time (the consistency point) for as long as the
WAL is continuous from B's start segment: the recoverable window is [B.stop, end], end the
last transaction time (or coverage time) in that continuous run. A missing segment ends
the run, so a gap is never hidden: it shrinks the window and is reported with its times.
Timelines are followed by segment number: a segment number is present when a file of any
timeline not older than the backup's holds it, and PostgreSQL picks the right file with
`recovery_target_timeline = latest` and the shipped history files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from protectctl.errors import RestoreError
from protectctl.providers._common import PointLike, Span, merged_spans
from protectctl.providers._common import iso_time as _dt
from protectctl.providers._common import maps as _maps

DEFAULT_SEGMENT_SIZE = 16 << 20


@dataclass(frozen=True, slots=True)
class WalFile:
    name: str
    timeline: int
    segno: int
    first_xact: datetime | None
    last_xact: datetime | None
    point_id: str


@dataclass(frozen=True, slots=True)
class BaseBackup:
    point_id: str
    point_time: datetime
    label: str
    timeline: int
    start_segno: int
    stop_segno: int
    start_lsn: int
    stop_lsn: int
    stop_time: datetime


@dataclass(frozen=True, slots=True)
class Window:
    base: BaseBackup
    start: datetime  # the base backup's consistency point
    end: datetime  # the last transaction (or covered instant) of the continuous WAL run
    last_segno: int  # the last segment number of that run

    def contains(self, when: datetime) -> bool:
        return self.start <= when <= self.end


@dataclass(frozen=True, slots=True)
class Gap:
    first_missing: str  # segment name (timeline of the segment before it)
    last_missing: str
    after: datetime | None  # last transaction time before the gap
    before: datetime | None  # first transaction time after it
    dropped: bool  # the spool dropped (some of) these segments

    def describe(self) -> str:
        what = "dropped by the full spool" if self.dropped else "missing"
        span = (
            self.first_missing
            if self.first_missing == self.last_missing
            else f"{self.first_missing}..{self.last_missing}"
        )
        times = f" (transactions from {_t(self.after)} to {_t(self.before)} cannot be replayed)"
        return f"WAL {span} {what}{times}"


@dataclass(frozen=True, slots=True)
class Catalog:
    segment_size: int
    bases: tuple[BaseBackup, ...]
    files: Mapping[int, tuple[WalFile, ...]]  # segno → files (timelines)
    history: Mapping[str, str]  # history file name → point id
    windows: tuple[Window, ...]  # one per usable base backup, oldest first
    gaps: tuple[Gap, ...]
    drops: tuple[Mapping[str, object], ...]
    unusable: tuple[str, ...]  # base backups whose own WAL is incomplete, said in a sentence

    def merged(self) -> list[tuple[datetime, datetime]]:
        """The recoverable time spans, overlapping windows merged."""
        return merged_spans([(w.start, w.end) for w in self.windows])

    def wal_point_of(self, name: str) -> str | None:
        for files in self.files.values():
            for f in files:
                if f.name == name:
                    return f.point_id
        return self.history.get(name)


@dataclass(frozen=True, slots=True)
class RestorePlan:
    base: BaseBackup
    window: Window
    mode: Literal["time", "end", "latest"]  # time: recovery_target_time; end/latest: replay all
    target: datetime | None
    files: tuple[tuple[str, str], ...]  # (WAL file name, point id holding it) to stage, in order
    note: str = ""
    extra_names: tuple[str, ...] = field(default=())


def _t(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if value is not None else "?"


def _pg(point: PointLike) -> Mapping[str, object] | None:
    pg = point.extra.get("pg")
    return pg if isinstance(pg, Mapping) else None


def build_catalog(points: Iterable[PointLike]) -> Catalog:
    """The catalog of one PostgreSQL source from its points (any order)."""
    ordered = sorted(points, key=lambda p: p.time)
    segment_size = DEFAULT_SEGMENT_SIZE
    bases: list[BaseBackup] = []
    files: dict[int, dict[str, WalFile]] = {}
    history: dict[str, str] = {}
    drops: list[Mapping[str, object]] = []
    coverage: list[tuple[int, datetime]] = []
    for point in ordered:
        pg = _pg(point)
        if pg is None or not point.complete:
            continue
        segment_size = int(str(pg.get("wal_segment_size", segment_size)))
        base = pg.get("base")
        if isinstance(base, Mapping):
            bases.append(_base(point, base))
        for raw in _maps(pg.get("wal")):
            f = WalFile(
                str(raw["name"]),
                int(str(raw["timeline"])),
                int(str(raw["segno"])),
                _dt(raw.get("first_xact")),
                _dt(raw.get("last_xact")),
                point.id,
            )
            files.setdefault(f.segno, {})[f.name] = f  # a later copy of the same name wins
        names = pg.get("history")
        for name in names if isinstance(names, list) else []:
            history[str(name)] = point.id
        drops += _maps(pg.get("dropped"))
        until, through = _dt(pg.get("covered_until")), pg.get("covered_through_segno")
        if until is not None and isinstance(through, int):
            coverage.append((through, until))
    by_segno = {s: tuple(sorted(v.values(), key=lambda f: f.timeline)) for s, v in files.items()}
    windows, unusable = [], []
    for base in bases:
        window = _window(base, by_segno, coverage)
        if window is None:
            unusable.append(f"base backup {base.point_id[:12]} ({_t(base.stop_time)}): its WAL is incomplete")
        else:
            windows.append(window)
    dropped_names = {str(d.get("name")) for d in drops}
    return Catalog(
        segment_size,
        tuple(bases),
        by_segno,
        history,
        tuple(windows),
        tuple(_gaps(by_segno, bases, segment_size, dropped_names)),
        tuple(drops),
        tuple(unusable),
    )


def _base(point: PointLike, base: Mapping[str, object]) -> BaseBackup:
    stop = _dt(base.get("stop_time")) or point.time
    return BaseBackup(
        point.id,
        point.time,
        str(base.get("label", "")),
        int(str(base["timeline"])),
        int(str(base["start_segno"])),
        int(str(base["stop_segno"])),
        int(str(base["start_lsn"])),
        int(str(base["stop_lsn"])),
        stop,
    )


def _window(
    base: BaseBackup, files: Mapping[int, Sequence[WalFile]], coverage: Sequence[tuple[int, datetime]]
) -> Window | None:
    segno = base.start_segno
    end = base.stop_time
    while any(f.timeline >= base.timeline for f in files.get(segno, ())):
        for f in files[segno]:
            if f.last_xact is not None and f.last_xact > end:
                end = f.last_xact
        segno += 1
    last = segno - 1
    if last < base.stop_segno:
        return None
    for through, until in coverage:
        if through <= last and until > end:
            end = until
    return Window(base, base.stop_time, end, last)


def _gaps(
    files: Mapping[int, Sequence[WalFile]], bases: Sequence[BaseBackup], segment_size: int, dropped: set[str]
) -> list[Gap]:
    if not files or not bases:
        return []
    first = min(b.start_segno for b in bases)
    present = sorted(s for s in files if s >= first)
    gaps = []
    for before, after in zip(present, present[1:], strict=False):
        if after == before + 1:
            continue
        tl = files[before][-1].timeline
        missing = [_name(tl, s, segment_size) for s in range(before + 1, after)]
        gaps.append(
            Gap(
                missing[0],
                missing[-1],
                _last_xact(files, before, down=True),
                _last_xact(files, after, down=False),
                any(m in dropped for m in missing),
            )
        )
    return gaps


def _last_xact(files: Mapping[int, Sequence[WalFile]], segno: int, *, down: bool) -> datetime | None:
    step = -1 if down else 1
    keys = set(files)
    while segno in keys:
        times = [f.last_xact if down else f.first_xact for f in files[segno]]
        found = [t for t in times if t is not None]
        if found:
            return max(found) if down else min(found)
        segno += step
    return None


def _name(timeline: int, segno: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


# -- choosing what a restore needs ---------------------------------------------------------


def plan_restore(catalog: Catalog, to_time: datetime | Literal["latest"], *, source: str = "") -> RestorePlan:
    """The base backup and WAL for a restore to `to_time`; RestoreError says why not."""
    what = f" of {source}" if source else ""
    if not catalog.windows:
        why = "; ".join(catalog.unusable) or "there is no base backup yet"
        raise RestoreError(f"nothing{what} can be restored: {why}", hint="run `protectctl run full` first")
    if to_time == "latest":
        window = max(catalog.windows, key=lambda w: (w.base.stop_time, w.end))
        return RestorePlan(window.base, window, "latest", None, _files(catalog, window, window.last_segno))
    candidates = [w for w in catalog.windows if w.contains(to_time)]
    if not candidates:
        raise _refusal(catalog, to_time, what)
    window = max(candidates, key=lambda w: w.base.stop_time)
    stop_at = _segment_after(catalog, window, to_time)
    if stop_at is None:
        note = (
            f"no transaction committed between the last shipped one and {_t(to_time)}: "
            "replaying all shipped WAL of this window"
        )
        return RestorePlan(window.base, window, "end", to_time, _files(catalog, window, window.last_segno), note)
    last = min(stop_at + 1, window.last_segno)  # the commit record may continue into the next segment
    return RestorePlan(window.base, window, "time", to_time, _files(catalog, window, last))


def _refusal(catalog: Catalog, to_time: datetime, what: str) -> RestoreError:
    spans = catalog.merged()
    listed = ", ".join(f"{_t(a)} to {_t(b)}" for a, b in spans)
    first = spans[0][0]
    if to_time < first:
        return RestoreError(
            f"{_t(to_time)} is before the first base backup{what} was consistent ({_t(first)})",
            hint=f"recoverable: {listed}",
        )
    if to_time > spans[-1][1]:
        return RestoreError(
            f"{_t(to_time)} is after the last shipped WAL{what}: the newest recoverable instant is {_t(spans[-1][1])}",
            hint="restore to a time up to then, run `protectctl run sync` first, or use `--to-time latest` "
            "to also roll forward the WAL still on the source host",
        )
    gaps = "; ".join(g.describe() for g in catalog.gaps)
    return RestoreError(
        f"{_t(to_time)} falls in a gap of the shipped WAL{what}" + (f": {gaps}" if gaps else ""),
        hint=f"recoverable: {listed}",
    )


def _segment_after(catalog: Catalog, window: Window, to_time: datetime) -> int | None:
    """The first segment of the window's run holding a transaction after `to_time`."""
    for segno in range(window.base.start_segno, window.last_segno + 1):
        for f in catalog.files.get(segno, ()):
            if f.last_xact is not None and f.last_xact > to_time:
                return segno
    return None


def _files(catalog: Catalog, window: Window, last: int) -> tuple[tuple[str, str], ...]:
    out = [(name, point) for name, point in sorted(catalog.history.items())]
    for segno in range(window.base.start_segno, last + 1):
        out += [(f.name, f.point_id) for f in catalog.files.get(segno, ()) if f.timeline >= window.base.timeline]
    return tuple(out)


def spans(catalog: Catalog) -> list[Span]:
    """The windows as browsing sees them: base, times, the points holding their WAL."""
    return [span_of(catalog, w) for w in catalog.windows]


def span_of(catalog: Catalog, window: Window) -> Span:
    used = frozenset(point for _name, point in _files(catalog, window, window.last_segno))
    return Span(window.base.point_id, window.start, window.end, used)


def describe_windows(catalog: Catalog) -> list[str]:
    """Lines for `points list` and `status`: the recoverable spans, then every gap and drop."""
    lines = [f"recoverable from {_t(a)} to {_t(b)}" for a, b in catalog.merged()]
    lines += [f"gap: {g.describe()}" for g in catalog.gaps]
    lines += [f"dropped: {d.get('name')} at {_t(_epoch(d.get('time')))} ({d.get('reason')})" for d in catalog.drops]
    lines += catalog.unusable
    return lines


def _epoch(value: object) -> datetime | None:
    from datetime import UTC

    return datetime.fromtimestamp(float(str(value)), UTC) if isinstance(value, int | float) else None
