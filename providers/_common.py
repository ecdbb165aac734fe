"""Logic the database providers (postgresql, mariadb) share: what a recovery catalog reads of a
point, and the primary/standby pair's spec handling (`nodes`, perHost).

Pure: no I/O, no server access. It imports nothing of protectctl but the provider seam's pure
modules, like a provider (tests/unit/test_architecture.py).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from protectctl.errors import ProviderError
from protectctl.provider import ContentItem, ContentListing, ContentWindow

if TYPE_CHECKING:
    from protectctl.provider import Point

# -- recovery catalogs --------------------------------------------------------------------


class PointLike(Protocol):
    """What a catalog reads of a recovery point."""

    @property
    def id(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def extra(self) -> Mapping[str, object]: ...
    @property
    def complete(self) -> bool: ...


def iso_time(value: object) -> datetime | None:
    """An ISO 8601 string of a point's facts as a datetime; None for anything else."""
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def maps(value: object) -> list[Mapping[str, object]]:
    """The mappings of a list of a point's facts (anything else: none)."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def merged_spans(spans: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The recoverable time spans (start, end), overlapping ones merged, oldest first."""
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans, key=lambda s: s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# -- databases, for `ls` and `versions` (ListsContents) -------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """A recoverable window as browsing sees it: its base point, its times, the points it uses."""

    base_id: str
    start: datetime
    end: datetime
    point_ids: frozenset[str]


def recorded_databases(point: PointLike, facts_key: str) -> tuple[ContentItem, ...] | None:
    """The databases a base point recorded (`extra[facts_key]["base"]["databases"]`: name, size,
    more facts), by name; None when it recorded none (made before protectctl recorded them)."""
    facts = point.extra.get(facts_key)
    base = facts.get("base") if isinstance(facts, Mapping) else None
    found = base.get("databases") if isinstance(base, Mapping) else None
    if not isinstance(found, list):
        return None
    items = []
    for entry in maps(found):
        size = entry.get("size")
        details = {k: v for k, v in entry.items() if k not in ("name", "size")}
        items.append(ContentItem(str(entry.get("name")), size if isinstance(size, int) else None, details))
    return tuple(sorted(items, key=lambda i: i.name))


_NOT_RECORDED = (
    "this base backup did not record its databases (made before protectctl recorded them, or they "
    "could not be read then): the next full backup will"
)


def database_listing(points: Sequence[Point], span: Span, facts_key: str) -> ContentListing:
    """The databases of the span's base point: what a restore into that window starts from."""
    base = next(p for p in points if p.id == span.base_id)
    items = recorded_databases(base, facts_key)
    return ContentListing(base, span.start, span.end, items or (), () if items is not None else (_NOT_RECORDED,))


def database_windows(name: str, points: Sequence[Point], spans: Sequence[Span], facts_key: str) -> list[ContentWindow]:
    """The windows whose base point holds database `name`, oldest first."""
    by_id = {p.id: p for p in points}
    out = []
    for span in sorted(spans, key=lambda s: s.start):
        base = by_id[span.base_id]
        item = next((i for i in recorded_databases(base, facts_key) or () if i.name == name), None)
        if item is None:
            continue
        used = [by_id[i] for i in span.point_ids | {span.base_id} if i in by_id]
        last = max(used, key=lambda p: p.time)
        out.append(ContentWindow(item, span.start, span.end, base, last, len(used)))
    return out


# -- primary/standby pairs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    spec: dict[str, object]  # one server's spec, as the provider's other code takes it
    state_dir: Path | None


def is_pair(spec: Mapping[str, object]) -> bool:
    return isinstance(spec.get("nodes"), list) and bool(spec.get("nodes"))


def pair_nodes(spec: Mapping[str, object], node_keys: Sequence[str], *, mark: bool = False) -> list[Node]:
    """The pair's nodes, each with its own single-server spec: the member's values with the
    node's `node_keys` over them (and `pair_node`: the host, where `mark`)."""
    raw = spec.get("nodes")
    base = {k: v for k, v in spec.items() if k not in ("nodes", "node")}
    out = []
    for entry in raw if isinstance(raw, list) else []:
        if not isinstance(entry, Mapping):
            continue
        own = dict(base)
        for key in node_keys:
            if entry.get(key) is not None:
                own[key] = entry[key]
        if mark:
            own["pair_node"] = str(entry["host"])
        state = entry.get("state_dir")
        out.append(Node(str(entry["host"]), own, Path(str(state)) if state else None))
    return out


def pair_node_spec(spec: Mapping[str, object], node_keys: Sequence[str], *, mark: bool = False) -> Mapping[str, object]:
    """The spec of the node a host's source config names (apply's prepare); else `spec` itself."""
    here = spec.get("node")
    if not is_pair(spec) or here is None:
        return spec
    for node in pair_nodes(spec, node_keys, mark=mark):
        if node.host == here:
            return node.spec
    raise ProviderError(f"host {here!r} is not one of the pair's hosts")


def pair_source_spec(
    spec: Mapping[str, object],
    hosts: Mapping[str, str] | None,
    node_keys: Sequence[str],
    *,
    state_dir_first: bool = False,
) -> dict[str, object]:
    """A pair's spec gets `nodes`: each host's server (member defaults + perHost's `node_keys`)
    and where its agent keeps state. `state_dir_first` keeps a provider's key order."""
    out = dict(spec)
    per_host = out.pop("per_host", None)
    if hosts is None:
        return out
    overrides = per_host if isinstance(per_host, Mapping) else {}
    nodes: list[dict[str, object]] = []
    for host, state_dir in hosts.items():
        own = overrides.get(host)
        own = own if isinstance(own, Mapping) else {}
        node: dict[str, object] = {"host": host, "state_dir": state_dir} if state_dir_first else {"host": host}
        for key in node_keys:
            value = own.get(key)
            node[key] = value if value is not None else out.get(key)
        node["state_dir"] = state_dir
        nodes.append(node)
    out["nodes"] = nodes
    return out


def data_dir_identity(spec: Mapping[str, object], host: str) -> str:
    """A source's identity on `host`: its data directory (perHost's, else the member's)."""
    per_host = spec.get("per_host")
    node = per_host.get(host) if isinstance(per_host, Mapping) else None
    data_dir = node.get("data_dir") if isinstance(node, Mapping) else None
    return posixpath.normpath(str(data_dir or spec.get("data_dir") or ""))
