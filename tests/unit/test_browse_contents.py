"""`ls`/`versions` of a source whose provider lists databases (ListsContents): the shared helpers
the database providers use (providers/_common.py) and the results browse renders (browse/contents.py),
over points in memory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from protectctl.browse import contents
from protectctl.browse.ops import NotInPointError
from protectctl.engine.points import Point, PointStats
from protectctl.errors import ProtectctlError
from protectctl.provider import ContentListing, ContentWindow, ListsContents
from protectctl.providers._common import Span, database_listing, database_windows

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def point(pid: str, hours: int, kind: str, databases: list[dict[str, object]] | None = None) -> Point:
    base = {"base": {"databases": databases}} if databases is not None else {"base": {}}
    extra = {"pg": base} if kind == "full" else {"pg": {}}
    return Point(pid * 8, "db/pg", T0 + timedelta(hours=hours), kind, None, None, PointStats(), True, extra=extra)


OLD = point("a", 0, "full")  # made before databases were recorded
B1 = point("b", 10, "full", [{"name": "shop", "oid": 16384, "size": 9_000_000}, {"name": "postgres", "size": None}])
S1 = point("c", 11, "sync")
B2 = point("d", 20, "full", [{"name": "postgres", "size": 7_000_000}])  # shop dropped
S2 = point("e", 21, "sync")
POINTS = [OLD, B1, S1, B2, S2]
SPANS = [
    Span(OLD.id, OLD.time, B1.time, frozenset()),
    Span(B1.id, B1.time, S1.time, frozenset({S1.id})),
    Span(B2.id, B2.time, S2.time, frozenset({S2.id})),
]


class Lister:
    content_type = "database"
    content_hint = "protectctl restore {source} --database {name} --as NEW_NAME"

    def list_contents(self, points: Sequence[Point], to_time: datetime | Literal["latest"]) -> ContentListing:
        span = SPANS[-1] if to_time == "latest" else [s for s in SPANS if s.start <= to_time][-1]
        return database_listing(points, span, "pg")

    def content_windows(self, name: str, points: Sequence[Point]) -> list[ContentWindow]:
        return database_windows(name, points, SPANS, "pg")


def test_windows_hold_a_database_from_the_bases_that_recorded_it() -> None:
    (shop,) = database_windows("shop", POINTS, SPANS, "pg")
    assert (shop.base, shop.last, shop.points, shop.item.size) == (B1, S1, 2, 9_000_000)
    assert shop.item.details == {"oid": 16384}
    assert [w.base for w in database_windows("postgres", POINTS, SPANS, "pg")] == [B1, B2]
    assert database_windows("nope", POINTS, SPANS, "pg") == []
    old = database_listing(POINTS, SPANS[0], "pg")
    assert old.items == () and "did not record its databases" in old.notes[0]


def test_ls_and_versions_render_the_file_envelope() -> None:
    lister = Lister()
    assert isinstance(lister, ListsContents)
    listing = contents.ls(lister, "db/pg", POINTS, "", S1.id[:8])  # a point id stands for its time
    doc = listing.to_json()
    assert doc["point"] == {"id": B1.id, "time": B1.time.isoformat(), "kind": "full"}
    assert [e["name"] for e in doc["entries"]] == ["postgres", "shop"]  # type: ignore[attr-defined]
    assert {"format_version", "source", "point", "path", "entries", "read_from"} <= doc.keys()
    assert listing.lines(long=True)[1] == "database          9,000,000  shop"
    assert listing.lines(long=False) == ["postgres", "shop"]
    with pytest.raises(NotInPointError, match="'shop' is not in the base point dddddddd"):
        contents.ls(lister, "db/pg", POINTS, "shop", "latest")
    history = contents.versions(lister, "db/pg", POINTS, "/postgres/").to_json()
    assert [v["first_point"]["id"] for v in history["versions"]] == [B1.id, B2.id]  # type: ignore[attr-defined]
    assert history["versions"][0]["recoverable_to"] == S1.time.isoformat()  # type: ignore[index]
    with pytest.raises(NotInPointError, match="in no recoverable window"):
        contents.versions(lister, "db/pg", POINTS, "nope")
    refused = contents.refuse_cat(lister, "db/pg", "shop")
    assert (
        isinstance(refused, ProtectctlError)
        and refused.hint == "protectctl restore db/pg --database shop --as NEW_NAME"
    )
