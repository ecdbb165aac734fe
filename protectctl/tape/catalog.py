"""The tape catalog: what each cartridge holds and where it is; a cache of the cartridges.

Stored as JSON (`DIR/tape/catalog.json` beside the state file) through `fsutil.atomic_write`.
Everything in it except vault names and location history can be rebuilt from the
cartridges alone (`tape inventory --rebuild`); the cartridges are the truth. Expiry and
recycling decisions are pure functions of the catalog values (`expiry_of`, `recyclable`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from protectctl.errors import TapeError
from protectctl.fsutil import atomic_write
from protectctl.tape.format import IndexRun

# 1.1: cartridges list their partial segments (1.0 catalogs read as none)
# 1.2: copies name their index records (tape format 2; older catalogs read as none)
CATALOG_FORMAT = "1.2"


class CartridgeState(StrEnum):
    SCRATCH = "scratch"  # labelled, holds nothing: free for its pool
    FILLING = "filling"  # holds points, room left: the pool appends here
    FULL = "full"  # end of media reached


class LocationKind(StrEnum):
    SLOT = "slot"
    DRIVE = "drive"
    VAULT = "vault"
    TRANSIT = "in-transit"


@dataclass(frozen=True, slots=True)
class Location:
    kind: LocationKind
    name: str = ""  # slot/drive number, vault name

    def __str__(self) -> str:
        if self.kind is LocationKind.TRANSIT:
            return f"in-transit to {self.name}" if self.name else "in-transit"
        return f"{self.kind.value} {self.name}".strip()

    @property
    def in_library(self) -> bool:
        return self.kind in (LocationKind.SLOT, LocationKind.DRIVE)

    @staticmethod
    def parse(text: str) -> Location:
        """`vault-east`, `vault:east`, `in-transit[:vault-east]`, `library`/`slot`."""
        head, _, rest = text.partition(":")
        if head in ("library", "slot"):
            return Location(LocationKind.SLOT, rest)
        if head in ("in-transit", "transit"):
            return Location(LocationKind.TRANSIT, rest)
        if head == "vault":
            if not rest:
                raise TapeError("a vault needs a name: --to vault-east or --to vault:east")
            return Location(LocationKind.VAULT, rest)
        return Location(LocationKind.VAULT, text)


class PartialKind(StrEnum):
    """Why a segment on a cartridge holds no usable copy."""

    WRITING = "writing"  # marked before a run writes it; still there only if that run died
    UNTERMINATED = "unterminated"  # read back without a filemark: its run stopped mid-write
    ABANDONED = "abandoned"  # another header follows in the same tape file (pre-fix appends)
    UNUSED = "unused"  # closed, but no complete copy uses it (unrecorded, or its span is broken)
    DAMAGED = "damaged"  # a record failed authentication or is malformed


@dataclass(frozen=True, slots=True)
class PartialSegment:
    """A tape file (or part of one) on a cartridge that no copy counts on."""

    file: int
    kind: PartialKind
    point_id: str  # "" when no header could be read
    part: int
    detail: str = ""

    def describe(self, barcode: str) -> str:
        point = f" of point {self.point_id[:12]} part {self.part}" if self.point_id else ""
        why = {
            PartialKind.WRITING: "was being written when its run stopped; the next append replaces it",
            PartialKind.UNTERMINATED: "has no filemark (its run stopped mid-write); the next append replaces it",
            PartialKind.ABANDONED: "is an abandoned attempt followed by another segment in the same tape file",
            PartialKind.UNUSED: "is closed but no complete copy uses it",
            PartialKind.DAMAGED: "is damaged",
        }[self.kind]
        return f"{barcode} file {self.file}: partial segment{point} {why}" + (
            f" ({self.detail})" if self.detail else ""
        )

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "kind": self.kind.value,
            "point_id": self.point_id,
            "part": self.part,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Move:
    time: datetime
    location: str
    note: str = ""


@dataclass(slots=True)
class Cartridge:
    barcode: str
    library: str
    pool: str
    state: CartridgeState
    key_id: str
    vid: str
    labelled_at: datetime
    capacity_bytes: int
    bytes_used: int = 0
    files: int = 0  # closed tape files after the label the catalog accounts for (1..files)
    location: Location = field(default_factory=lambda: Location(LocationKind.SLOT))
    history: list[Move] = field(default_factory=list)
    partial: list[PartialSegment] = field(default_factory=list)  # segments no copy counts on

    def moved(self, location: Location, now: datetime, note: str = "") -> None:
        if location != self.location or note:
            self.location = location
            self.history.append(Move(now, str(location), note))


@dataclass(frozen=True, slots=True)
class Part:
    barcode: str
    file: int
    part: int


@dataclass(slots=True)
class Copy:
    """One recovery point on tape (possibly spanning cartridges)."""

    point_id: str
    source: str
    point_time: datetime
    point_kind: str
    pool: str
    library: str
    retention_s: int
    copied_at: datetime
    parts: list[Part] = field(default_factory=list)
    complete: bool = False  # the trailer was written
    bytes_plain: int = 0
    blobs: int = 0
    index: list[IndexRun] = field(default_factory=list)  # tape format 2: where its `I` records are

    @property
    def expires(self) -> datetime:
        from datetime import timedelta

        return self.point_time + timedelta(seconds=self.retention_s)


@dataclass(slots=True)
class Catalog:
    cartridges: dict[str, Cartridge] = field(default_factory=dict)
    copies: dict[str, Copy] = field(default_factory=dict)  # by point id

    def copies_on(self, barcode: str) -> list[Copy]:
        return [c for c in self.copies.values() if any(p.barcode == barcode for p in c.parts)]

    def cartridge(self, barcode: str) -> Cartridge:
        found = self.cartridges.get(barcode)
        if found is None:
            known = ", ".join(sorted(self.cartridges)) or "none"
            raise TapeError(f"no cartridge {barcode!r} in the tape catalog", hint=f"cartridges: {known}")
        return found


# -- pure decisions -----------------------------------------------------------------------------


def expiry_of(copies: Iterable[Copy]) -> datetime | None:
    """A cartridge expires when the last thing it holds does (None: holds nothing)."""
    ends = [c.expires for c in copies]
    return max(ends) if ends else None


def recyclable(catalog: Catalog, now: datetime) -> list[str]:
    """Barcodes whose every copy has expired (cartridges that hold something)."""
    out = []
    for barcode, cart in sorted(catalog.cartridges.items()):
        if cart.state is CartridgeState.SCRATCH:
            continue
        expires = expiry_of(catalog.copies_on(barcode))
        if expires is not None and expires <= now:
            out.append(barcode)
    return out


# -- JSON -----------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _dt(value: Any) -> datetime:
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def catalog_to_json(catalog: Catalog) -> dict[str, object]:
    carts = {}
    for b, c in sorted(catalog.cartridges.items()):
        carts[b] = {
            "barcode": c.barcode,
            "library": c.library,
            "pool": c.pool,
            "state": c.state.value,
            "key_id": c.key_id,
            "vid": c.vid,
            "labelled_at": _iso(c.labelled_at),
            "capacity_bytes": c.capacity_bytes,
            "bytes_used": c.bytes_used,
            "files": c.files,
            "location": {"kind": c.location.kind.value, "name": c.location.name},
            "history": [{"time": _iso(m.time), "location": m.location, "note": m.note} for m in c.history],
            "partial": [p.to_json() for p in c.partial],
        }
    copies = []
    for cp in sorted(catalog.copies.values(), key=lambda c: (c.source, c.point_time, c.point_id)):
        copies.append(
            {
                "point_id": cp.point_id,
                "source": cp.source,
                "point_time": _iso(cp.point_time),
                "point_kind": cp.point_kind,
                "pool": cp.pool,
                "library": cp.library,
                "retention_s": cp.retention_s,
                "expires": _iso(cp.expires),
                "copied_at": _iso(cp.copied_at),
                "complete": cp.complete,
                "bytes_plain": cp.bytes_plain,
                "blobs": cp.blobs,
                "parts": [{"barcode": p.barcode, "file": p.file, "part": p.part} for p in cp.parts],
                **({"index": [[r.part, r.record, r.count] for r in cp.index]} if cp.index else {}),
            }
        )
    return {"format_version": CATALOG_FORMAT, "cartridges": carts, "copies": copies}


def catalog_from_json(doc: dict[str, Any]) -> Catalog:
    catalog = Catalog()
    for b, c in doc["cartridges"].items():
        catalog.cartridges[b] = Cartridge(
            barcode=c["barcode"],
            library=c["library"],
            pool=c["pool"],
            state=CartridgeState(c["state"]),
            key_id=c["key_id"],
            vid=c["vid"],
            labelled_at=_dt(c["labelled_at"]),
            capacity_bytes=int(c["capacity_bytes"]),
            bytes_used=int(c["bytes_used"]),
            files=int(c["files"]),
            location=Location(LocationKind(c["location"]["kind"]), str(c["location"]["name"])),
            history=[Move(_dt(m["time"]), str(m["location"]), str(m["note"])) for m in c["history"]],
            partial=[
                PartialSegment(
                    int(p["file"]), PartialKind(p["kind"]), str(p["point_id"]), int(p["part"]), str(p.get("detail", ""))
                )
                for p in c.get("partial", [])
            ],
        )
    for cp in doc["copies"]:
        catalog.copies[cp["point_id"]] = Copy(
            point_id=cp["point_id"],
            source=cp["source"],
            point_time=_dt(cp["point_time"]),
            point_kind=cp["point_kind"],
            pool=cp["pool"],
            library=cp["library"],
            retention_s=int(cp["retention_s"]),
            copied_at=_dt(cp["copied_at"]),
            parts=[Part(p["barcode"], int(p["file"]), int(p["part"])) for p in cp["parts"]],
            complete=bool(cp["complete"]),
            bytes_plain=int(cp["bytes_plain"]),
            blobs=int(cp["blobs"]),
            index=[IndexRun(int(p), int(r), int(n)) for p, r, n in cp.get("index", [])],
        )
    return catalog


def load_catalog(path: Path) -> Catalog:
    """The catalog at `path` (empty when there is none); TapeError when it is damaged."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Catalog()
    except OSError as err:
        raise TapeError(f"reading tape catalog {path}: {err.strerror}") from err
    try:
        doc = json.loads(raw)
        if str(doc["format_version"]).split(".")[0] != CATALOG_FORMAT.split(".")[0]:
            raise ValueError(f"format {doc['format_version']}")
        return catalog_from_json(doc)
    except (ValueError, KeyError, TypeError) as err:
        raise TapeError(
            f"tape catalog {path} is damaged ({err})",
            hint="rebuild it from the cartridges with `protectctl tape inventory --rebuild`",
        ) from err


def save_catalog(path: Path, catalog: Catalog) -> None:
    try:
        atomic_write(path, json.dumps(catalog_to_json(catalog), indent=1, sort_keys=True).encode() + b"\n", mode=0o600)
    except OSError as err:
        raise TapeError(f"writing tape catalog {path}: {err.strerror}") from err


def sorted_cartridges(catalog: Catalog, pool: str | None = None) -> Sequence[Cartridge]:
    return [c for _, c in sorted(catalog.cartridges.items()) if pool is None or c.pool == pool]
