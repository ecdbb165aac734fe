"""The PostgreSQL recovery catalog and the WAL spool: windows, gaps, refusals, bounded spool."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protectctl.errors import RestoreError
from protectctl.providers.postgresql import wal
from protectctl.providers.postgresql.catalog import build_catalog, describe_windows, plan_restore

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SEG = 16 << 20


@dataclass(frozen=True)
class P:
    id: str
    time: datetime
    kind: str
    extra: Mapping[str, object] = field(default_factory=dict)
    complete: bool = True


def seg(segno: int, first_s: float | None, last_s: float | None, tl: int = 1) -> dict[str, object]:
    name = wal.SegmentName(tl, segno).name(SEG)

    def t(s: float | None) -> str | None:
        return (T0 + timedelta(seconds=s)).isoformat() if s is not None else None

    return {"name": name, "timeline": tl, "segno": segno, "first_xact": t(first_s), "last_xact": t(last_s)}


def base_point(pid: str, at_s: float, start: int, stop: int, wal_files: list[dict[str, object]]) -> P:
    base = {
        "timeline": 1,
        "start_segno": start,
        "stop_segno": stop,
        "start_lsn": start * SEG,
        "stop_lsn": stop * SEG + 100,
        "stop_time": (T0 + timedelta(seconds=at_s + 1)).isoformat(),
        "label": "x",
    }
    return P(pid, T0 + timedelta(seconds=at_s), "full", {"pg": {"base": base, "wal": wal_files}})


def sync_point(
    pid: str,
    at_s: float,
    wal_files: list[dict[str, object]],
    covered_s: float | None = None,
    through: int | None = None,
    dropped: list[dict[str, object]] | None = None,
) -> P:
    pg: dict[str, object] = {"wal": wal_files, "dropped": dropped or []}
    if covered_s is not None:
        pg.update(covered_until=(T0 + timedelta(seconds=covered_s)).isoformat(), covered_through_segno=through)
    return P(pid, T0 + timedelta(seconds=at_s), "sync", {"pg": pg})


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_window_runs_from_consistency_to_the_last_shipped_transaction() -> None:
    points = [
        base_point("b1", 0, 2, 2, [seg(2, 0.5, 0.8)]),
        sync_point("s1", 20, [seg(3, 5, 9), seg(4, 10, 19)]),
        sync_point("s2", 40, [seg(5, 21, 30)], covered_s=39, through=5),
    ]
    catalog = build_catalog(points)
    assert catalog.merged() == [(at(1), at(39))]
    plan = plan_restore(catalog, at(12))
    assert plan.mode == "time" and plan.base.point_id == "b1"
    # through the first segment with a transaction after T, plus the next (a record may span)
    assert [n for n, _ in plan.files] == [wal.SegmentName(1, s).name(SEG) for s in (2, 3, 4, 5)]
    quiet = plan_restore(catalog, at(35))  # no commit after T, but the sync covered until 39
    assert quiet.mode == "end"


def test_refusals_name_the_recoverable_span() -> None:
    catalog = build_catalog([base_point("b1", 0, 2, 2, [seg(2, 0.5, 0.8)]), sync_point("s1", 20, [seg(3, 5, 9)])])
    with pytest.raises(RestoreError, match="before the first base backup"):
        plan_restore(catalog, at(-60))
    with pytest.raises(RestoreError, match="after the last shipped WAL") as late:
        plan_restore(catalog, at(60))
    assert "latest" in (late.value.hint or "")
    assert plan_restore(catalog, "latest").mode == "latest"


def test_a_missing_segment_is_a_gap_that_shrinks_the_window() -> None:
    dropped = [{"name": wal.SegmentName(1, 4).name(SEG), "time": at(15).timestamp(), "reason": "spool full"}]
    catalog = build_catalog(
        [
            base_point("b1", 0, 2, 2, [seg(2, 0.5, 0.8)]),
            sync_point("s1", 20, [seg(3, 5, 9), seg(5, 21, 25)], dropped=dropped),
            base_point("b2", 30, 6, 6, [seg(6, 30.5, 31)]),
            sync_point("s2", 50, [seg(7, 35, 45)]),
        ]
    )
    assert catalog.merged() == [(at(1), at(9)), (at(31), at(45))]
    assert len(catalog.gaps) == 1 and catalog.gaps[0].dropped
    lines = describe_windows(catalog)
    assert any(line.startswith("gap: WAL 000000010000000000000004 dropped") for line in lines)
    assert any(line.startswith("dropped: 000000010000000000000004") for line in lines)
    with pytest.raises(RestoreError, match="gap"):
        plan_restore(catalog, at(20))
    assert plan_restore(catalog, at(40)).base.point_id == "b2"


def test_a_later_timeline_continues_the_run() -> None:
    catalog = build_catalog(
        [
            base_point("b1", 0, 2, 2, [seg(2, 0.5, 0.8)]),
            sync_point("s1", 20, [seg(3, 5, 9), seg(3, 10, 12, tl=2), seg(4, 13, 19, tl=2)]),
        ]
    )
    catalog_history = catalog.history
    assert catalog.merged() == [(at(1), at(19))]
    names = [n for n, _ in plan_restore(catalog, at(15)).files]
    assert "000000020000000000000004" in names and "000000010000000000000003" in names
    assert catalog_history == {}


def test_spool_is_bounded_and_drops_loudly(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    src = tmp_path / "pg_wal"
    src.mkdir()
    for i in (1, 2, 3):
        (src / wal.SegmentName(1, i).name(SEG)).write_bytes(bytes([i]) * 1000)
    assert wal.push(src / "000000010000000000000001", spool, 2500) == (0, "")
    assert wal.push(src / "000000010000000000000001", spool, 2500) == (0, "")  # re-archived: same content
    assert wal.push(src / "000000010000000000000002", spool, 2500) == (0, "")
    status, message = wal.push(src / "000000010000000000000003", spool, 2500)
    assert status == 0 and "DROPPED 000000010000000000000003" in message
    assert [p.name for p in wal.spooled_files(spool)] == ["000000010000000000000001", "000000010000000000000002"]
    drops = wal.read_drops(spool / wal.DROPPED)
    assert drops[0]["name"] == "000000010000000000000003" and "spool full" in str(drops[0]["reason"])
    (src / "000000010000000000000001").write_bytes(b"other")
    assert wal.push(src / "000000010000000000000001", spool, 10**9)[0] == 1  # never overwrite different content


def test_fetch_waits_only_for_announced_names(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / wal.NAMES).write_text("000000010000000000000002\n")
    (staging / wal.FETCHING_MARK).write_text("")
    assert wal.fetch("00000002.history", tmp_path / "x", staging, timeout_s=5)[0] == 1  # not announced: at once
    (staging / "000000010000000000000002").write_bytes(b"wal")
    assert wal.fetch("000000010000000000000002", tmp_path / "y", staging)[0] == 0
    assert (tmp_path / "y").read_bytes() == b"wal"
