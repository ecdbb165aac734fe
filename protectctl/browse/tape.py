"""Browsing the tape copies of a source (`ls`/`cat`/`versions`/`diff`/`find --from tape`).

Which points are on tape, and on which cartridges, comes from the tape catalog alone; a copy's
cartridges are touched only for what the answer needs. A format-2 copy is opened the way a
`restore --from tape --path` opens it (`TapePointReader.read_index`: its header and index
records, located directly); then only the records holding the trees walked (and, for `cat`, the
file's chunks) are read. A format-1 copy has no index and is read whole. Cartridges are mounted
one at a time: a copy's reader gives its cartridge back before another copy is read.

The results are `ops`' own (the same `--json` as from the repository), with `read_from` saying
which cartridges were read. The caller holds the tape lock (`api.tape_session`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from protectctl.browse import contents, ops
from protectctl.browse.paths import Pattern, split_path
from protectctl.browse.service import BrowseSource, source_root
from protectctl.browse.view import FileContent, PointTrees
from protectctl.catalog.timespec import parse_time
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.points import Point
from protectctl.engine.tree import NodeType, Tree, decode_tree
from protectctl.errors import ProtectctlError, TapeCorruptionError, TapeError
from protectctl.humanize import human_bytes
from protectctl.tape.catalog import Copy
from protectctl.tape.reader import TapePointReader
from protectctl.tape.service import TapeService

if TYPE_CHECKING:
    from protectctl.engine.repository import Repository
    from protectctl.policy.load import Policy


class TapeCopies:
    """The copies on tape of some sources, opened on demand: a `BrowseReader` over every copy
    opened so far (trees are content-addressed, so one tree cache serves them all)."""

    def __init__(self, service: TapeService) -> None:
        self.service = service
        self._readers: dict[str, TapePointReader] = {}  # point id -> reader
        self._points: dict[str, Point] = {}
        self._active: TapePointReader | None = None
        self._stack = contextlib.ExitStack()
        self.cartridges: set[str] = set()
        self.skipped: list[str] = []  # copies left unread (a cartridge away), one line each

    # -- the catalog ----------------------------------------------------------------------------

    def copies(self, source: str) -> list[Copy]:
        """The complete copies of `source`, oldest first; TapeError when it has none."""
        found = self.service.copies_of(source)
        if not found:
            raise TapeError(
                f"there is no copy of {source} on tape",
                hint="`protectctl tape list` shows what the cartridges hold; `protectctl run tape GROUP` copies",
            )
        return found

    def pick(self, source: str, when: str, *, now: datetime | None = None) -> Copy:
        """The copy at `when`: a point id (or a prefix of 6+ hex digits), else a TIME (the newest
        copy at or before it)."""
        copies = self.copies(source)
        text = when.strip()
        looks_like_id = len(text) >= 6 and all(c in "0123456789abcdef" for c in text)
        if looks_like_id:
            by_id = [c for c in copies if c.point_id.startswith(text)]
            if len(by_id) == 1:
                return by_id[0]
            if len(by_id) > 1:
                raise ProtectctlError(f"point id {text!r} is ambiguous on tape", hint="give more of the id")
        try:
            when_at = parse_time(text, now=now or datetime.now(UTC))
        except ProtectctlError:
            if looks_like_id:
                raise TapeError(
                    f"point {text} of {source} has no copy on tape",
                    hint="`protectctl tape list` shows the copies",
                ) from None
            raise
        return self.service.choose(source, when_at)

    def away(self, copy: Copy) -> list[str]:
        """The copy's cartridges that are not in their library, with where they are."""
        out = []
        for part in copy.parts:
            cart = self.service.catalog.cartridge(part.barcode)
            where = self.service.location_of(cart)
            if not where.in_library:
                out.append(f"{part.barcode} ({where})")
        return out

    # -- opening copies -------------------------------------------------------------------------

    def point(self, copy: Copy) -> Point:
        """The copy's point (from its header on tape), its reader ready; TapeError when one of its
        cartridges is away."""
        found = self._points.get(copy.point_id)
        if found is not None:
            return found
        away = self.away(copy)
        if away:
            raise TapeError(
                f"the copy of {copy.source} of {copy.point_time:%Y-%m-%d %H:%M:%S}Z is on cartridge(s) "
                f"outside the library: {', '.join(away)}",
                hint="bring them back and run `protectctl tape move BARCODE --to library`",
            )
        self._switch(None)
        reader = self._stack.enter_context(TapePointReader())
        mount = self.service.mount_cartridge
        if copy.index:  # format 2: the header and index only; records on demand
            reader.read_index(copy.point_id, copy.parts, copy.index, mount, copied_at=copy.copied_at)
            self._active = reader
        else:  # format 1: no index, the copy is read whole into the reader's spool
            reader.read_parts(copy.point_id, copy.parts, mount, copied_at=copy.copied_at)
        self.cartridges.update(p.barcode for p in copy.parts)
        self._readers[copy.point_id] = reader
        self._points[copy.point_id] = reader.point
        return reader.point

    def points(self, copies: Sequence[Copy], *, strict: bool = True) -> list[Point]:
        """The points of the copies that can be read, oldest first; a copy whose cartridge is away
        is skipped and named in `skipped`. TapeError when none can be read (`strict`)."""
        out = []
        for copy in copies:
            away = self.away(copy)
            if away:
                self.skipped.append(f"{copy.point_id[:12]} of {copy.point_time:%Y-%m-%d %H:%M:%S}Z: {', '.join(away)}")
                continue
            out.append(self.point(copy))
        if strict and copies and not out:
            raise TapeError(
                f"every tape copy asked for is on cartridges outside the library: {'; '.join(self.skipped)}",
                hint="bring them back and run `protectctl tape move BARCODE --to library`",
            )
        return out

    def _switch(self, reader: TapePointReader | None) -> None:
        if self._active is not None and self._active is not reader:
            self._active.unmount()
        self._active = reader

    # -- BrowseReader -----------------------------------------------------------------------------

    def load_blob(self, blob_id: BlobId) -> bytes:
        active = self._active
        if active is not None and active.holds(blob_id):
            return active.load_blob(blob_id)
        for reader in self._readers.values():
            if reader.holds(blob_id):
                self._switch(reader)
                return reader.load_blob(blob_id)
        raise TapeCorruptionError(f"blob {short_id(blob_id)} is in none of the copies read from tape")

    def load_tree(self, blob_id: BlobId) -> Tree:
        return decode_tree(self.load_blob(blob_id))

    def blob_size(self, blob_id: BlobId) -> int:
        return len(self.load_blob(blob_id))

    # -- results ----------------------------------------------------------------------------------

    def records_read(self) -> int:
        return sum(r.records_read for r in self._readers.values())

    def read_from(self) -> dict[str, object]:
        return {
            "medium": "tape",
            "cartridges": sorted(self.cartridges),
            "copies_read": len(self._readers),
            "skipped": list(self.skipped),
        }

    def close(self) -> None:
        self._active = None
        self._stack.close()

    def __enter__(self) -> TapeCopies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refuse_lister(source: BrowseSource) -> None:
    lister = contents.lister_of(source.provider)
    if lister is not None:
        raise contents.refuse_tape(lister, source.source)


def _root(source: BrowseSource, point: Point) -> str | None:
    return source_root(source.provider or point.tags.get("provider", ""), source.spec, point)


def ls(service: TapeService, source: BrowseSource, path: str, to_time: str) -> ops.Listing:
    _refuse_lister(source)
    with TapeCopies(service) as tapes:
        point = tapes.point(tapes.pick(source.source, to_time))
        root = _root(source, point)
        listing = ops.ls(PointTrees(tapes), source.source, point, split_path(path, root), root)
        return dataclasses.replace(listing, read_from=tapes.read_from())


def versions(service: TapeService, source: BrowseSource, path: str) -> ops.History:
    _refuse_lister(source)
    with TapeCopies(service) as tapes:
        points = tapes.points(tapes.copies(source.source))
        root = _root(source, points[-1])
        history = ops.versions(PointTrees(tapes), source.source, points, split_path(path, root), root)
        return dataclasses.replace(history, read_from=tapes.read_from())


def diff(service: TapeService, source: BrowseSource, before: str, after: str) -> ops.Changes:
    with TapeCopies(service) as tapes:
        a = tapes.point(tapes.pick(source.source, before))
        b = tapes.point(tapes.pick(source.source, after))
        changes = ops.diff(PointTrees(tapes), source.source, a, b, _root(source, b))
        changes.read_from = tapes.read_from()
        return changes


def cat(service: TapeService, source: BrowseSource, path: str, to_time: str, write: Callable[[bytes], object]) -> int:
    """Write one file's content, read from tape, through `write`; the number of bytes written."""
    _refuse_lister(source)
    with TapeCopies(service) as tapes:
        point = tapes.point(tapes.pick(source.source, to_time))
        root = _root(source, point)
        node = ops.locate(PointTrees(tapes), point, split_path(path, root), root)
        if node.type is not NodeType.FILE:
            raise ProtectctlError(
                f"'{path}' is a {node.type.value}, not a file",
                hint=f"`protectctl ls {source.source} {path} --from tape` lists it",
            )
        written = 0
        for piece in FileContent(tapes, node).chunks_in_order():
            write(piece)
            written += len(piece)
        return written


def find(
    service: TapeService,
    sources: Sequence[BrowseSource],
    selector: str,
    pattern_text: str,
    *,
    since: str | None,
    until: str | None,
) -> ops.Found:
    """Matches of the pattern in the tape copies (between `since` and `until`, by the catalog's
    point times) of the sources; sources without a copy on tape are passed over."""
    now = datetime.now(UTC)
    lo, hi = _instant(since, now), _instant(until, now)
    matches: list[tuple[str, ops.Match]] = []
    roots: dict[str, str | None] = {}
    searched = 0
    with TapeCopies(service) as tapes:
        trees = PointTrees(tapes)
        on_tape = [s for s in sources if service.copies_of(s.source)]
        if not on_tape:
            raise TapeError(
                f"there is no copy of {selector} on tape",
                hint="`protectctl tape list` shows what the cartridges hold; `protectctl run tape GROUP` copies",
            )
        for s in on_tape:
            chosen = [
                c
                for c in service.copies_of(s.source)
                if (lo is None or c.point_time >= lo) and (hi is None or c.point_time <= hi)
            ]
            points = tapes.points(chosen, strict=False)  # one source's cartridges away: search the others
            root = _root(s, points[-1]) if points else None
            roots[s.source] = root
            finder = ops.Finder(trees, Pattern.parse(pattern_text, root))
            matches += [(s.source, m) for m in ops.find(finder, points)]
            searched += len(points)
        if not searched and tapes.skipped:
            raise TapeError(
                f"every tape copy asked for is on cartridges outside the library: {'; '.join(tapes.skipped)}",
                hint="bring them back and run `protectctl tape move BARCODE --to library`",
            )
        return ops.Found(
            selector,
            pattern_text,
            searched,
            tuple(sorted(matches, key=lambda sm: (sm[0], sm[1].path))),
            roots,
            tapes.read_from(),
        )


def _instant(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    value = parse_time(text, now=now)
    return now if value == "latest" else value


# -- points list --from tape: the catalog alone -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapePoint:
    copy: Copy
    locations: tuple[str, ...]  # each cartridge of the copy and where it is
    in_library: bool
    in_policy: bool

    def to_json(self) -> dict[str, object]:
        c = self.copy
        return {
            "id": c.point_id,
            "source": c.source,
            "time": c.point_time.isoformat(),
            "kind": c.point_kind,
            "parent": None,
            "complete": c.complete,
            "errors": [],
            "host": "",
            "stats": {
                "files": None,
                "dirs": None,
                "bytes_total": c.bytes_plain,
                "bytes_read": None,
                "bytes_added": None,
                "chunks_new": None,
                "duration_s": None,
            },
            "extra": {},
            "in_policy": self.in_policy,
            "tape": {
                "library": c.library,
                "pool": c.pool,
                "cartridges": list(self.locations),
                "in_library": self.in_library,
                "copied_at": c.copied_at.isoformat(),
                "expires": c.expires.isoformat(),
                "blobs": c.blobs,
                "format": 2 if c.index else 1,
            },
        }


@dataclass(frozen=True, slots=True)
class TapePoints:
    points: tuple[TapePoint, ...]  # oldest first
    removed: tuple[str, ...]  # sources with copies that are no longer in the policy

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": ops.FORMAT_VERSION,
            "points": [p.to_json() for p in self.points],
            "recovery_windows": {},
            "problems": [],
            "removed_sources": list(self.removed),
            "read_from": {"medium": "tape"},
        }

    def rows(self) -> list[tuple[str, ...]]:
        return [
            (
                f"{p.copy.point_time:%Y-%m-%dT%H:%M:%SZ}",
                p.copy.source,
                p.copy.point_kind,
                p.copy.point_id[:8],
                human_bytes(p.copy.bytes_plain),
                p.copy.pool,
                ", ".join(p.locations),
                f"{p.copy.expires:%Y-%m-%d}",
            )
            for p in self.points
        ]


TAPE_POINT_COLUMNS = ["time", "source", "kind", "id", "size", "pool", "cartridges", "expires"]


def _selected(source: str, selector: str | None) -> bool:
    group, _, member = (selector or "").partition("/")
    source_group, _, source_member = source.partition("/")
    return (not group or group == source_group) and (not member or member == source_member)


def policy_sources(policy: Policy) -> set[str]:
    """GROUP/MEMBER of every member of the policy's ProtectionGroups."""
    from protectctl.policy.model import Kind, ProtectionGroupSpec

    out: set[str] = set()
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        if isinstance(doc.spec, ProtectionGroupSpec):
            out |= {f"{doc.name}/{m.name}" for m in doc.spec.members}
    return out


def _no_repository() -> Repository:
    raise ProtectctlError("this source is known from the tape catalog only")


def sources_on_tape(service: TapeService, selector: str) -> list[BrowseSource]:
    """The sources matching GROUP[/MEMBER] the tape catalog holds copies of, for a source the policy
    and its repositories no longer know (its provider comes from each copy's point header)."""
    found = sorted({c.source for c in service.catalog.copies.values() if c.complete and _selected(c.source, selector)})
    return [BrowseSource(s, "", {}, {}, _no_repository, in_policy=False) for s in found]


def points_on_tape(service: TapeService, selector: str | None, policy: Policy) -> TapePoints:
    """The complete copies in the tape catalog of the selected sources (GROUP or GROUP/MEMBER),
    oldest first, with where their cartridges are: no cartridge is read."""
    current = policy_sources(policy)
    out = []
    for copy in sorted(service.catalog.copies.values(), key=lambda c: (c.point_time, c.source)):
        if not copy.complete or not _selected(copy.source, selector):
            continue
        where = []
        inside = True
        for part in copy.parts:
            location = service.location_of(service.catalog.cartridge(part.barcode))
            inside = inside and location.in_library
            where.append(f"{part.barcode} ({location})")
        out.append(TapePoint(copy, tuple(where), inside, copy.source in current))
    if selector and not out:
        raise TapeError(
            f"there is no copy of {selector} on tape",
            hint="`protectctl tape list` shows what the cartridges hold; `protectctl run tape GROUP` copies",
        )
    removed = tuple(sorted({p.copy.source for p in out if not p.in_policy}))
    return TapePoints(tuple(out), removed)
