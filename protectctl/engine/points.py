"""Recovery-point manifests: `Point`, `PointStats` and their sealed JSON form.

A point is stored as POINTS/<id>, sealed with aad("point", id) so a manifest cannot be
renamed into another point. Points are written last by a backup (after its index), so a
crash never publishes a point whose data is not indexed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from protectctl.engine.crypto import Sealer, aad
from protectctl.engine.ids import BlobId, blob_id_from_hex
from protectctl.engine.names import show_text
from protectctl.errors import CorruptionError

POINT_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PointStats:
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_added: int = 0  # new bytes stored, after compression and encryption
    chunks_new: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    source: str  # "group/member"
    time: datetime  # UTC-aware
    kind: str  # "sync" | "full" | ... free string
    parent: str | None
    tree: BlobId | None
    stats: PointStats
    complete: bool
    errors: tuple[str, ...] = ()
    host: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)  # JSON-serialisable, for providers


@dataclass(frozen=True, slots=True)
class DamagedPoint:
    """A manifest that did not open: its object name and why (it is skipped, never guessed at)."""

    id: str
    problem: str


@dataclass(frozen=True, slots=True)
class PointScan:
    points: list[Point]  # oldest first
    damaged: tuple[DamagedPoint, ...]


def new_point_id() -> str:
    """A fresh random point id (32 hex digits)."""
    return os.urandom(16).hex()


def valid_point_id(point_id: str) -> bool:
    return 8 <= len(point_id) <= 64 and all(c in "0123456789abcdef" for c in point_id)


def encode_point(sealer: Sealer, point: Point) -> bytes:
    """Sealed JSON; raises ValueError for a naive time or a bad id."""
    if point.time.tzinfo is None or point.time.utcoffset() is None:
        raise ValueError("Point.time must be timezone-aware")
    if not valid_point_id(point.id):
        raise ValueError(f"point id {point.id!r} must be 8-64 lowercase hex digits")
    document = {"v": POINT_FORMAT_VERSION, **point_to_json(point)}
    plain = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return sealer.seal(plain, aad("point", point.id.encode()))


def decode_point(sealer: Sealer, point_id: str, stored: bytes) -> Point:
    """Open and validate a stored point; raises CorruptionError."""
    what = f"points/{point_id}"
    plain = sealer.open(stored, aad("point", point_id.encode()), what)
    try:
        d = json.loads(plain)
        if d["v"] != POINT_FORMAT_VERSION or d["id"] != point_id:
            raise ValueError("unknown version or mismatched id")
        return point_from_json(d)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CorruptionError(f"{what}: malformed manifest ({err})") from err


def point_to_json(point: Point) -> dict[str, object]:
    """A point as JSON values: its manifest in the repository (sealed, with a version) and its
    header on tape (tape/format.py) are both this."""
    return {
        "id": point.id,
        "source": point.source,
        "time": point.time.astimezone(UTC).isoformat(),
        "kind": point.kind,
        "parent": point.parent,
        "tree": point.tree.hex() if point.tree is not None else None,
        "stats": asdict(point.stats),
        "complete": point.complete,
        "errors": list(point.errors),
        "host": point.host,
        "tags": dict(point.tags),
        "extra": dict(point.extra),
    }


def point_from_json(d: Mapping[str, Any]) -> Point:
    """The Point `point_to_json` made; ValueError, KeyError, TypeError or AttributeError when the
    values are not a point's."""
    return Point(
        id=str(d["id"]),
        source=str(d["source"]),
        time=_utc(str(d["time"])),
        kind=str(d["kind"]),
        parent=str(d["parent"]) if d["parent"] is not None else None,
        tree=blob_id_from_hex(d["tree"]) if d["tree"] is not None else None,
        stats=PointStats(**d["stats"]),
        complete=bool(d["complete"]),
        # Points of earlier releases may name files with lone surrogates: printable here.
        errors=tuple(show_text(str(e)) for e in d["errors"]),
        host=str(d["host"]),
        tags={str(k): str(v) for k, v in d["tags"].items()},
        extra=dict(d["extra"]),
    )


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("time without a zone")
    return value.astimezone(UTC)
