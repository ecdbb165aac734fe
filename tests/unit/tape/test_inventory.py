"""Copies from scanned segments, pure: chains across cartridges, what a rebuild keeps, leftovers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from protectctl.engine.points import Point, PointStats
from protectctl.tape.catalog import Cartridge, CartridgeState, Catalog, Copy, Part, PartialKind
from protectctl.tape.format import RecordType, SegmentHeader, Trailer
from protectctl.tape.inventory import ScanResult, Segment, confirm, merge_scans, whole_copies

T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


def _cart(barcode: str) -> Cartridge:
    return Cartridge(barcode, "lib1", "monthly", CartridgeState.FULL, "k", f"vid-{barcode}", T0, 1000)


def _seg(
    file_no: int,
    point_id: str,
    part: int,
    copied_at: datetime,
    closing: RecordType | None,
    previous: str | None = None,
    parts: int = 1,
    terminated: bool = True,
) -> Segment:
    point = Point(point_id, "docs/home", T0, "full", None, None, PointStats(), True, host="h")
    header = SegmentHeader(point, part, "repo", bytes(32), 86400, copied_at, previous)
    trailer = Trailer(point_id, parts, 2 * parts, 10) if closing is RecordType.TRAILER else None
    fault = None if terminated else PartialKind.UNTERMINATED
    return Segment(file_no, 0, header, blobs=2, closing=closing, trailer=trailer, terminated=terminated, fault=fault)


def _scan(barcode: str, *segments: Segment) -> ScanResult:
    return ScanResult(_cart(barcode), list(segments))


def test_a_copy_spanning_two_cartridges_and_the_newest_of_two_runs() -> None:
    a = _scan("A", _seg(1, "p1", 1, T0, RecordType.TRAILER), _seg(2, "p2", 1, T0, RecordType.END_OF_VOLUME))
    b = _scan(
        "B", _seg(1, "p2", 2, T0, RecordType.TRAILER, previous="A", parts=2), _seg(2, "p1", 1, T1, RecordType.TRAILER)
    )  # p1 again, by a later run
    copies = whole_copies([a, b])
    assert [(p.barcode, p.file, p.part) for p in copies["p2"].parts] == [("A", 2, 1), ("B", 1, 2)]
    assert copies["p1"].parts == [Part("B", 2, 1)] and copies["p1"].copied_at == T1


def test_broken_spans_and_unterminated_segments_are_no_copies() -> None:
    a = _scan(
        "A", _seg(1, "p2", 1, T0, RecordType.END_OF_VOLUME), _seg(2, "p3", 1, T0, RecordType.TRAILER, terminated=False)
    )
    b = _scan("B", _seg(1, "p2", 2, T0, RecordType.TRAILER, previous="Z", parts=2))  # names another cartridge
    assert whole_copies([a, b]) == {}
    catalog, dropped = merge_scans([a, b], Catalog())
    assert catalog.copies == {} and dropped == []
    kinds = {(p.file, p.kind) for p in catalog.cartridges["A"].partial}
    assert kinds == {(1, PartialKind.UNUSED), (2, PartialKind.UNTERMINATED)}


def test_a_rebuild_keeps_confirmed_copies_and_those_on_unscanned_cartridges() -> None:
    old = Catalog()
    old.cartridges = {b: _cart(b) for b in ("A", "V")}
    offsite = Copy("p9", "docs/home", T0, "full", "monthly", "lib1", 86400, T0, [Part("V", 1, 1)], True)
    kept = Copy("p1", "docs/home", T0, "full", "monthly", "lib1", 86400, T0, [Part("A", 1, 1)], True)
    wrong = Copy("p2", "docs/home", T0, "full", "monthly", "lib1", 86400, T0, [Part("A", 2, 1)], True)
    old.copies = {c.point_id: c for c in (offsite, kept, wrong)}
    a = _scan("A", _seg(1, "p1", 1, T0, RecordType.TRAILER), _seg(2, "p2", 1, T1, RecordType.TRAILER))
    assert confirm(kept, {"A": a}) is None
    assert "copied at" in (confirm(wrong, {"A": a}) or "")  # another run's segment is at that place
    catalog, dropped = merge_scans([a], old)
    assert set(catalog.copies) == {"p9", "p1", "p2"}
    assert catalog.copies["p2"].copied_at == T1  # replaced by what the tape holds
    assert len(dropped) == 1 and "p2" in dropped[0]
    assert catalog.cartridges["V"] is old.cartridges["V"]
