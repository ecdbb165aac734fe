"""`ls` and `versions` of a source whose provider lists items other than files (`ListsContents`,
e.g. the databases of a database cluster and the windows they can be restored to).

The provider answers from the points alone (their recorded facts): no tree or content is read.
The results have the same `--json` envelope as a file listing and a file's history (`ops`), the
file-only fields null, so a reader of one reads the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from protectctl.browse.ops import FORMAT_VERSION, FROM_DISK, NotInPointError
from protectctl.catalog.timespec import parse_time
from protectctl.engine.points import Point
from protectctl.errors import ProtectctlError
from protectctl.provider import ContentItem, ContentListing, ContentWindow, ListsContents, load_provider


def lister_of(kind: str) -> ListsContents | None:
    """The provider of `kind` when it lists items other than files, else None."""
    try:
        provider = load_provider(kind)
    except ProtectctlError:
        return None  # a provider no longer installed: its points browse as files
    return provider if isinstance(provider, ListsContents) else None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _point_json(point: Point) -> dict[str, object]:
    return {"id": point.id, "time": point.time.isoformat(), "kind": point.kind}


def _item_json(item: ContentItem, kind: str) -> dict[str, object]:
    return {
        "name": item.name,
        "path": item.name,
        "type": kind,
        "mode": None,
        "uid": None,
        "gid": None,
        "user": None,
        "group": None,
        "size": item.size,
        "mtime": None,
        "details": dict(item.details),
    }


def _size(size: int | None) -> str:
    return f"{size:,}" if size is not None else "?"


@dataclass(frozen=True, slots=True)
class Listing:
    """The items a restore to the time asked would hold."""

    source: str
    kind: str  # what an item is ("database")
    path: str  # "" or the one item asked for
    listing: ContentListing
    items: tuple[ContentItem, ...]
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "point": _point_json(self.listing.base),
            "path": self.path or ".",
            "entries": [_item_json(i, self.kind) for i in self.items],
            "window": {"start": _iso(self.listing.start), "end": _iso(self.listing.end)},
            "notes": list(self.listing.notes),
            "read_from": self.read_from,
        }

    def lines(self, long: bool) -> list[str]:
        if not long:
            return [i.name for i in self.items]
        return [f"{self.kind:<10} {_size(i.size):>16}  {i.name}" for i in self.items]

    def heading(self) -> str:
        base = self.listing.base
        return (
            f"{self.kind}s of {self.source} in the base point {base.id[:8]} of {base.time:%Y-%m-%d %H:%M:%S}Z "
            f"(recoverable {self.listing.start:%Y-%m-%d %H:%M:%S}Z to {self.listing.end:%Y-%m-%d %H:%M:%S}Z)"
        )


@dataclass(frozen=True, slots=True)
class History:
    """The windows an item can be restored to, oldest first."""

    source: str
    kind: str
    name: str
    windows: tuple[ContentWindow, ...]
    points_searched: int
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "path": self.name,
            "points_searched": self.points_searched,
            "versions": [
                {
                    "type": self.kind,
                    "size": w.item.size,
                    "mtime": None,
                    "mode": None,
                    "content_hash": None,
                    "first_point": _point_json(w.base),
                    "last_point": _point_json(w.last),
                    "points": w.points,
                    "recoverable_from": _iso(w.start),
                    "recoverable_to": _iso(w.end),
                }
                for w in self.windows
            ],
            "read_from": self.read_from,
        }

    def table(self) -> tuple[list[str], list[tuple[str, ...]]]:
        return (
            ["#", "type", "size", "recoverable from", "recoverable to", "base point", "points"],
            [
                (
                    str(i),
                    self.kind,
                    _size(w.item.size),
                    f"{w.start:%Y-%m-%d %H:%M:%S}Z",
                    f"{w.end:%Y-%m-%d %H:%M:%S}Z",
                    f"{w.base.time:%Y-%m-%d %H:%M:%S}Z {w.base.id[:8]}",
                    str(w.points),
                )
                for i, w in enumerate(self.windows, 1)
            ],
        )


def _when(points: Sequence[Point], text: str, source: str) -> datetime | Literal["latest"]:
    """`--to-time` as the provider takes it: a point id (or prefix) stands for that point's time."""
    value = text.strip()
    if len(value) >= 6 and all(c in "0123456789abcdef" for c in value):
        by_id = [p for p in points if p.id.startswith(value)]
        if len(by_id) == 1:
            return by_id[0].time
        if len(by_id) > 1:
            raise ProtectctlError(f"point id {value!r} is ambiguous in {source}", hint="give more of the id")
    return parse_time(value, now=datetime.now(UTC))


def ls(lister: ListsContents, source: str, points: Sequence[Point], path: str, to_time: str) -> Listing:
    when = _when(points, to_time, source)
    listing = lister.list_contents(points, when)
    name = path.strip().strip("/")
    items = listing.items
    if name:
        items = tuple(i for i in items if i.name == name)
        if not items:
            raise NotInPointError(
                f"{lister.content_type} {name!r} is not in the base point {listing.base.id[:8]} of "
                f"{listing.base.time:%Y-%m-%d %H:%M:%S}Z of {source}",
                hint=f"`protectctl ls {source}` lists its {lister.content_type}s",
            )
    return Listing(source, lister.content_type, name, listing, items)


def versions(lister: ListsContents, source: str, points: Sequence[Point], path: str) -> History:
    name = path.strip().strip("/")
    windows = lister.content_windows(name, points)
    if not windows:
        raise NotInPointError(
            f"{lister.content_type} {name!r} is in no recoverable window of {source} ({len(points)} point(s))",
            hint=f"`protectctl ls {source}` lists its {lister.content_type}s; `protectctl points list {source}` "
            "its windows",
        )
    return History(source, lister.content_type, name, tuple(windows), len(points))


def refuse_cat(lister: ListsContents, source: str, path: str) -> ProtectctlError:
    name = path.strip().strip("/") or "NAME"
    return ProtectctlError(
        f"{source} holds {lister.content_type}s, not files: `cat` has nothing to read",
        hint=lister.content_hint.format(source=source, name=name),
    )


def refuse_tape(lister: ListsContents, source: str) -> ProtectctlError:
    return ProtectctlError(
        f"{source} holds {lister.content_type}s: browsing them reads the repository, not tape",
        hint=f"drop --from tape; `protectctl restore {source} --from tape --to-time TIME` restores a copy on tape",
    )
