"""Browsing a source's points: open its repository, pick points by time, run an operation.

The api resolves GROUP[/MEMBER] to `BrowseSource`s (from the policy, or from the points of a
group removed from it); this module opens their repositories read-only (no lock is taken, so
it works with read access alone; see docs/browsing.md) and hands `ops` the trees and points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protectctl.browse import contents, ops
from protectctl.browse.paths import Pattern, split_path
from protectctl.browse.view import FileContent, PointTrees
from protectctl.catalog.select import select_point
from protectctl.catalog.timespec import parse_time
from protectctl.engine.points import Point
from protectctl.engine.repository import Repository
from protectctl.engine.tree import NodeType
from protectctl.errors import ProtectctlError


@dataclass(frozen=True, slots=True)
class BrowseSource:
    """A source as browsing needs it: its name, provider kind and spec, and its storage."""

    source: str  # group/member
    provider: str
    spec: Mapping[str, object]
    storage: Mapping[str, Any]  # storage inputs (what `api.open_storage` opens)
    open_repository: Callable[[], Repository]
    in_policy: bool = True


def source_root(kind: str, spec: Mapping[str, object], point: Point | None) -> str | None:
    """The absolute place the source's tree stood for (SourceRoot), or None."""
    from protectctl.provider import SourceRoot, load_provider

    try:
        provider = load_provider(kind)
    except ProtectctlError:
        return None  # a provider no longer installed: paths relative to the source still work
    return provider.source_root(spec, point) if isinstance(provider, SourceRoot) else None


@dataclass(slots=True)
class Opened:
    source: BrowseSource
    repo: Repository
    trees: PointTrees
    points: list[Point]  # oldest first

    def root(self, point: Point | None) -> str | None:
        return source_root(self.source.provider, self.source.spec, point)

    def pick(self, when: str, *, now: datetime | None = None) -> Point:
        """The point at `when`: a TIME (newest at or before it) or a point id (or its prefix)."""
        return pick_point(self.points, when, source=self.source.source, now=now)


def pick_point(points: Sequence[Point], when: str, *, source: str, now: datetime | None = None) -> Point:
    text = when.strip()
    if len(text) >= 6 and all(c in "0123456789abcdef" for c in text):
        by_id = [p for p in points if p.id.startswith(text)]
        if len(by_id) == 1:
            return by_id[0]
        if len(by_id) > 1:
            raise ProtectctlError(f"point id {text!r} is ambiguous in {source}", hint="give more of the id")
    if not [p for p in points if p.tree is not None]:
        raise ProtectctlError(
            f"{source} has no recovery point with a file tree",
            hint="run a sync first; database sources are browsed with `points list`",
        )
    return select_point(
        [p for p in points if p.tree is not None], parse_time(text, now=now or datetime.now(UTC)), source=source
    )


@contextlib.contextmanager
def opened(source: BrowseSource) -> Iterator[Opened]:
    with source.open_repository() as repo:
        scan = repo.scan_points(source.source)
        yield Opened(source, repo, PointTrees(repo), scan.points)


def one_source(sources: Sequence[BrowseSource], selector: str) -> BrowseSource:
    if len(sources) != 1:
        names = ", ".join(s.source for s in sources)
        raise ProtectctlError(f"{selector!r} names {len(sources)} sources ({names}); give GROUP/MEMBER")
    return sources[0]


def ls(source: BrowseSource, path: str, to_time: str) -> ops.Listing | contents.Listing:
    lister = contents.lister_of(source.provider)
    with opened(source) as o:
        if lister is not None:  # e.g. databases: what the provider lists, not the stored files
            return contents.ls(lister, source.source, o.points, path, to_time)
        point = o.pick(to_time)
        root = o.root(point)
        return ops.ls(o.trees, source.source, point, split_path(path, root), root)


def versions(source: BrowseSource, path: str) -> ops.History | contents.History:
    lister = contents.lister_of(source.provider)
    with opened(source) as o:
        if lister is not None:
            return contents.versions(lister, source.source, o.points, path)
        root = o.root(o.points[-1] if o.points else None)
        return ops.versions(o.trees, source.source, o.points, split_path(path, root), root)


def diff(source: BrowseSource, before: str, after: str) -> ops.Changes:
    with opened(source) as o:
        a, b = o.pick(before), o.pick(after)
        return ops.diff(o.trees, source.source, a, b, o.root(b))


def cat(source: BrowseSource, path: str, to_time: str, write: Callable[[bytes], object]) -> int:
    """Write one file's content through `write`; the number of bytes written."""
    lister = contents.lister_of(source.provider)
    if lister is not None:
        raise contents.refuse_cat(lister, source.source, path)
    with opened(source) as o:
        point = o.pick(to_time)
        root = o.root(point)
        parts = split_path(path, root)
        node = ops.locate(o.trees, point, parts, root)
        if node.type is not NodeType.FILE:
            raise ProtectctlError(
                f"'{path}' is a {node.type.value}, not a file", hint=f"`protectctl ls {source.source} {path}` lists it"
            )
        written = 0
        for piece in FileContent(o.repo, node).chunks_in_order():
            write(piece)
            written += len(piece)
        return written


def find(
    sources: Sequence[BrowseSource], selector: str, pattern_text: str, *, since: str | None, until: str | None
) -> ops.Found:
    """Matches of the pattern in every point (between `since` and `until`) of the sources."""
    now = datetime.now(UTC)
    lo = _instant(since, now)
    hi = _instant(until, now)
    matches: list[tuple[str, ops.Match]] = []
    roots: dict[str, str | None] = {}
    searched = 0
    by_storage: dict[str, list[BrowseSource]] = {}
    for s in sources:
        by_storage.setdefault(repr(sorted(s.storage.items())), []).append(s)
    for group in by_storage.values():
        with group[0].open_repository() as repo:
            scan = repo.scan_points()
            trees = PointTrees(repo)
            for s in group:
                points = [
                    p
                    for p in scan.points
                    if p.source == s.source
                    and p.tree is not None
                    and (lo is None or p.time >= lo)
                    and (hi is None or p.time <= hi)
                ]
                root = source_root(s.provider, s.spec, points[-1] if points else None)
                roots[s.source] = root
                finder = ops.Finder(trees, Pattern.parse(pattern_text, root))
                matches += [(s.source, m) for m in ops.find(finder, points)]
                searched += len(points)
    return ops.Found(
        selector, pattern_text, searched, tuple(sorted(matches, key=lambda sm: (sm[0], sm[1].path))), roots
    )


def _instant(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    value = parse_time(text, now=now)
    return now if value == "latest" else value
