"""What browsing answers: a point's tree (ls), a file's history (versions), the changes
between two points (diff), which points hold a matching path (find).

Works on values: a `PointTrees` over the repository and the source's points (oldest first).
It reads trees only (never file content) and writes nothing; the CLI renders the results.
Unchanged subtrees are the same blob in every point, so diff skips them by id and find
searches each (subtree, place) once however many points share it.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from protectctl.browse.paths import Pattern, shown_path
from protectctl.browse.view import PointTrees, root_node
from protectctl.engine.ids import BlobId
from protectctl.engine.names import show_name, text_name
from protectctl.engine.points import Point
from protectctl.engine.tree import Node, NodeType
from protectctl.errors import ProtectctlError

FORMAT_VERSION = "1.0"
# Where a result was read from (`read_from` in --json): the repository, or tape (browse/tape.py)
FROM_DISK: dict[str, object] = {"medium": "disk"}


class NotInPointError(ProtectctlError):
    """The path names nothing in the point."""


def point_root(point: Point) -> Node:
    """The DIR node of a point's root; raises ProtectctlError for a point without a tree."""
    if point.tree is None:
        raise ProtectctlError(
            f"point {point.id[:12]} of {point.source} holds no file tree",
            hint="its provider stores something else (e.g. a database)",
        )
    meta = point.extra.get("root")
    return root_node(point.tree, meta if isinstance(meta, dict) else None)


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


def _point_json(point: Point) -> dict[str, object]:
    return {"id": point.id, "time": point.time.isoformat(), "kind": point.kind}


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as `ls` shows it."""

    path: tuple[bytes, ...]
    node: Node

    def to_json(self, root: str | None) -> dict[str, object]:
        n = self.node
        doc: dict[str, object] = {
            "name": show_name(n.name),
            "path": shown_path(self.path, root),
            "type": n.type.value,
            "mode": f"{stat.S_IMODE(n.mode):04o}",
            "uid": n.uid,
            "gid": n.gid,
            "user": n.user,
            "group": n.group,
            "size": n.size,
            "mtime": _time(n.mtime_ns),
        }
        if n.link_target is not None:
            doc["link_target"] = show_name(n.link_target)
        return doc

    def long_line(self) -> str:
        n = self.node
        mode = stat.filemode(TYPE_BITS[n.type] | stat.S_IMODE(n.mode))
        who = f"{n.user or n.uid}:{n.group or n.gid}"
        name = show_name(n.name) + ("/" if n.type is NodeType.DIR else "")
        if n.link_target is not None:
            name += f" -> {show_name(n.link_target)}"
        return f"{mode}  {who:<17} {n.size:>14,}  {_time(n.mtime_ns)}  {name}"

    def short(self) -> str:
        return show_name(self.node.name) + ("/" if self.node.type is NodeType.DIR else "")


TYPE_BITS = {  # a node's type as st_mode's file-type bits (ls -l here, st_mode in the mount)
    NodeType.FILE: stat.S_IFREG,
    NodeType.DIR: stat.S_IFDIR,
    NodeType.SYMLINK: stat.S_IFLNK,
    NodeType.FIFO: stat.S_IFIFO,
    NodeType.CHARDEV: stat.S_IFCHR,
    NodeType.BLOCKDEV: stat.S_IFBLK,
    NodeType.SOCKET: stat.S_IFSOCK,
}


@dataclass(frozen=True, slots=True)
class Listing:
    source: str
    point: Point
    path: tuple[bytes, ...]
    root: str | None  # the source's root as protected, when its provider has one
    entries: tuple[Entry, ...]
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "point": _point_json(self.point),
            "path": shown_path(self.path, self.root),
            "entries": [e.to_json(self.root) for e in self.entries],
            "read_from": self.read_from,
        }

    def lines(self, long: bool) -> list[str]:
        return [e.long_line() if long else e.short() for e in self.entries]


def ls(trees: PointTrees, source: str, point: Point, parts: tuple[bytes, ...], root: str | None) -> Listing:
    """A directory's entries (or the one entry a file path names); raises NotInPointError."""
    node = locate(trees, point, parts, root)
    if node.type is NodeType.DIR:
        entries = tuple(Entry(parts + (c.name,), c) for c in trees.children(node))
    else:
        entries = (Entry(parts, node),)
    return Listing(source, point, parts, root, entries)


def locate(trees: PointTrees, point: Point, parts: tuple[bytes, ...], root: str | None) -> Node:
    node = trees.lookup(point_root(point), parts)
    if node is None:
        where = f"; paths are relative to the source or absolute under {root}" if root else ""
        raise NotInPointError(
            f"'{shown_path(parts, root)}' is not in the point of {point.time:%Y-%m-%d %H:%M:%S}Z of {point.source}",
            hint=f"`protectctl ls {point.source}` lists the point's top level{where}",
        )
    return node


# -- versions --------------------------------------------------------------------------


@dataclass(slots=True)
class Version:
    """One distinct state of a path, over a run of consecutive points that hold it unchanged."""

    node: Node
    first: Point
    last: Point
    points: int = 1

    def to_json(self) -> dict[str, object]:
        n = self.node
        return {
            "type": n.type.value,
            "size": n.size,
            "mtime": _time(n.mtime_ns),
            "mode": f"{stat.S_IMODE(n.mode):04o}",
            "content_hash": n.content_hash.hex() if n.content_hash is not None else None,
            "first_point": _point_json(self.first),
            "last_point": _point_json(self.last),
            "points": self.points,
        }


@dataclass(frozen=True, slots=True)
class History:
    source: str
    path: tuple[bytes, ...]
    root: str | None
    versions: tuple[Version, ...]
    points_searched: int
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "path": shown_path(self.path, self.root),
            "points_searched": self.points_searched,
            "versions": [v.to_json() for v in self.versions],
            "read_from": self.read_from,
        }

    def table(self) -> tuple[list[str], list[tuple[str, ...]]]:
        return (
            ["#", "type", "size", "mtime", "first point", "last point", "points"],
            [
                (
                    str(i),
                    v.node.type.value,
                    f"{v.node.size:,}",
                    _time(v.node.mtime_ns),
                    f"{v.first.time:%Y-%m-%d %H:%M:%S}Z {v.first.id[:8]}",
                    f"{v.last.time:%Y-%m-%d %H:%M:%S}Z {v.last.id[:8]}",
                    str(v.points),
                )
                for i, v in enumerate(self.versions, 1)
            ],
        )


def _content_key(node: Node) -> tuple[object, ...]:
    content: object = node.content_hash or node.chunks or node.subtree
    return (node.type, content, node.size, node.link_target, node.mode, node.uid, node.gid)


def versions(
    trees: PointTrees, source: str, points: Sequence[Point], parts: tuple[bytes, ...], root: str | None
) -> History:
    """Each distinct version of the path, oldest first: a new version starts where the content,
    type, mode or owner changes, or where the path comes back after being absent."""
    out: list[Version] = []
    previous_present = False
    for point in points:
        if point.tree is None:
            continue
        node = trees.lookup(point_root(point), parts)
        if node is None:
            previous_present = False
            continue
        current = out[-1] if out else None
        if previous_present and current is not None and _content_key(current.node) == _content_key(node):
            current.last = point
            current.points += 1
        else:
            out.append(Version(node, point, point))
        previous_present = True
    if not out:
        raise NotInPointError(
            f"'{shown_path(parts, root)}' is in none of the {len(points)} point(s) of {source}",
            hint=f"`protectctl find {source} PATTERN` searches by name",
        )
    return History(source, parts, root, tuple(out), len(points))


# -- diff ------------------------------------------------------------------------------


@dataclass(slots=True)
class Changes:
    source: str
    before: Point
    after: Point
    root: str | None
    added: list[tuple[bytes, ...]] = field(default_factory=list)
    removed: list[tuple[bytes, ...]] = field(default_factory=list)
    modified: list[tuple[tuple[bytes, ...], tuple[str, ...]]] = field(default_factory=list)
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        def shown(parts: tuple[bytes, ...]) -> str:
            return shown_path(parts, self.root)

        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "before": _point_json(self.before),
            "after": _point_json(self.after),
            "added": [shown(p) for p in self.added],
            "removed": [shown(p) for p in self.removed],
            "modified": [{"path": shown(p), "what": list(what)} for p, what in self.modified],
            "read_from": self.read_from,
        }

    def lines(self) -> list[str]:
        rows = [(p, "+", "") for p in self.added] + [(p, "-", "") for p in self.removed]
        rows += [(p, "M", f"  ({', '.join(what)})") for p, what in self.modified]
        return [f"{mark} {shown_path(p, self.root)}{tail}" for p, mark, tail in sorted(rows)]


def diff(trees: PointTrees, source: str, before: Point, after: Point, root: str | None) -> Changes:
    """Paths added, removed and modified from `before` to `after` (every path below an added or
    removed directory is listed too); identical subtrees are skipped by id."""
    changes = Changes(source, before, after, root)
    _diff_dirs(trees, point_root(before).subtree, point_root(after).subtree, (), changes)
    return changes


def _diff_dirs(trees: PointTrees, a: BlobId | None, b: BlobId | None, prefix: tuple[bytes, ...], out: Changes) -> None:
    if a == b:
        return
    old = {n.name: n for n in (trees.tree(a).nodes if a is not None else ())}
    new = {n.name: n for n in (trees.tree(b).nodes if b is not None else ())}
    for name in sorted(old.keys() | new.keys()):
        path = prefix + (name,)
        was, now = old.get(name), new.get(name)
        if was is None and now is not None:
            _all_below(trees, now, path, out.added)
        elif now is None and was is not None:
            _all_below(trees, was, path, out.removed)
        elif was is not None and now is not None:
            if was.type is not now.type:
                _all_below(trees, was, path, out.removed)
                _all_below(trees, now, path, out.added)
                continue
            what = _what_changed(was, now)
            if what:
                out.modified.append((path, what))
            if now.type is NodeType.DIR:
                _diff_dirs(trees, was.subtree, now.subtree, path, out)


def _all_below(trees: PointTrees, node: Node, path: tuple[bytes, ...], into: list[tuple[bytes, ...]]) -> None:
    into.append(path)
    into.extend(parts for parts, _ in trees.walk(node, path))


def _what_changed(was: Node, now: Node) -> tuple[str, ...]:
    what = []
    if was.type is not NodeType.DIR and (
        (was.content_hash or was.chunks) != (now.content_hash or now.chunks)
        or was.size != now.size
        or was.link_target != now.link_target
        or was.rdev != now.rdev
    ):
        what.append("content")
    if stat.S_IMODE(was.mode) != stat.S_IMODE(now.mode):
        what.append("mode")
    if (was.uid, was.gid, was.user, was.group) != (now.uid, now.gid, now.user, now.group):
        what.append("owner")
    if was.type is not NodeType.DIR and was.mtime_ns != now.mtime_ns and not what:
        what.append("mtime")
    return tuple(what)


# -- find ------------------------------------------------------------------------------


@dataclass(slots=True)
class Match:
    path: bytes  # from the point's root, "/"-joined
    type: str
    points: list[Point] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Found:
    selector: str
    pattern: str
    points_searched: int
    matches: tuple[tuple[str, Match], ...]  # (source, match), by source then path
    roots: dict[str, str | None]
    read_from: dict[str, object] = field(default_factory=lambda: dict(FROM_DISK))

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "selector": self.selector,
            "pattern": self.pattern,
            "points_searched": self.points_searched,
            "matches": [
                {
                    "source": source,
                    "path": self._shown(source, m),
                    "type": m.type,
                    "first_point": _point_json(m.points[0]),
                    "last_point": _point_json(m.points[-1]),
                    "points": [p.id for p in m.points],
                }
                for source, m in self.matches
            ],
            "read_from": self.read_from,
        }

    def _shown(self, source: str, m: Match) -> str:
        return shown_path(tuple(m.path.split(b"/")), self.roots.get(source))

    def lines(self) -> list[str]:
        out = []
        for source, m in self.matches:
            first, last = m.points[0].time, m.points[-1].time
            span = f"{first:%Y-%m-%d %H:%M}Z" if first == last else f"{first:%Y-%m-%d %H:%M}Z .. {last:%Y-%m-%d %H:%M}Z"
            suffix = "/" if m.type == NodeType.DIR.value else ""
            out.append(f"{source}  {self._shown(source, m)}{suffix}  {span}  ({len(m.points)} point(s))")
        return out


class Finder:
    """Searches points of one repository; each (subtree, place) is searched once. Paths are
    exact text (`name_text`) until the end, where they become bytes again."""

    def __init__(self, trees: PointTrees, pattern: Pattern) -> None:
        self.trees = trees
        self.pattern = pattern
        self._memo: dict[tuple[bytes, str], list[tuple[str, str]]] = {}  # (subtree hex, path) -> found

    def search(self, tree: BlobId, prefix: str = "") -> list[tuple[str, str]]:
        """(path, type) of every matching entry below `tree`, whose path is `prefix`."""
        found: list[tuple[str, str]] = []
        matches, memo = self.pattern.matches, self._memo
        for name, kind, subtree in self.trees.briefs(tree):
            path = f"{prefix}/{name}" if prefix else name
            if matches(name, path):
                found.append((path, kind))
            if subtree is not None:
                below = memo.get((subtree, path))
                if below is None:
                    below = memo[(subtree, path)] = self.search(BlobId(bytes.fromhex(subtree.decode("ascii"))), path)
                found.extend(below)
        return found


def find(finder: Finder, points: Sequence[Point]) -> list[Match]:
    """Matches in `points` (one source's, oldest first), each with the points that hold it."""
    by_path: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        if point.tree is None:
            continue
        for found in finder.search(point.tree):
            holding = by_path.get(found)
            if holding is None:
                holding = by_path[found] = []
            holding.append(point)
    return sorted(
        (Match(text_name(path), kind, holding) for (path, kind), holding in by_path.items()),
        key=lambda m: (m.path, m.type),
    )
