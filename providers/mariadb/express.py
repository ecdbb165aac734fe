"""Express fulls: whether the next `run full` copies only the pages changed since the last full.

An express full is ``mariadb-backup --backup --incremental-lsn=<the previous full's to_lsn>``:
mariadb-backup still reads every page, but streams only those newer than that LSN (plus the
redo log and the non-InnoDB files), so the repository gets the changes only. It records its
base (`express_of`); a restore applies the chain in order: the real full, then each express
full's delta (catalog.py `Base.chain`, restore_server.py).

Pure: the catalog, the previous points and the server's facts in, the decision out. A real
full is taken, with the reason said, when there is no usable previous full of the same server
and data directory, when its chain is not whole in the repository (a point forgotten or
damaged), when the chain is long enough (`expressFulls`), or when its deltas together hold
`expressMaxPercent` of the real full's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protectctl.providers._common import PointLike
from protectctl.providers.mariadb.catalog import Base, Catalog

DEFAULT_FULLS = 6  # express fulls between two real ones
DEFAULT_MAX_PERCENT = 50  # of the real full's stream, the chain's deltas together


@dataclass(frozen=True, slots=True)
class Choice:
    base: Base | None  # the full an express full builds on; None: a real full
    why_real: str = ""  # why not express (empty for the very first full)


def settings(spec: Mapping[str, object]) -> tuple[int, int]:
    """(expressFulls, expressMaxPercent) of a member spec (snake_case)."""
    fulls, percent = spec.get("express_fulls"), spec.get("express_max_percent")
    return (
        fulls if isinstance(fulls, int) else DEFAULT_FULLS,
        percent if isinstance(percent, int) else DEFAULT_MAX_PERCENT,
    )


def choose(
    points: Sequence[PointLike],
    catalog: Catalog,
    identity: Mapping[str, object],
    server_lsn: int | None,
    *,
    spec: Mapping[str, object],
    forced_real: bool = False,
    tree_present: Callable[[str], bool] = lambda point_id: True,
) -> Choice:
    """The base of an express full now, or why the full must be a real one."""
    fulls = [p for p in points if p.complete and _is_full(p)]
    if not fulls:
        return Choice(None)
    max_fulls, max_percent = settings(spec)
    if forced_real:
        return Choice(None, "a real full was asked for (--no-express)")
    if max_fulls <= 0:
        return Choice(None, "express fulls are off (expressFulls: 0)")
    newest = max(fulls, key=lambda p: p.time)
    orphan = dict(catalog.orphans).get(newest.id)
    if orphan is not None:
        return Choice(
            None, f"the previous full {newest.id[:12]} needs full {orphan[:12]}, which is not in the repository"
        )
    previous = catalog.base(newest.id)
    if previous is None:
        return Choice(None, f"the previous full {newest.id[:12]} is not a MariaDB full")
    if previous.to_lsn is None or previous.identity is None:
        return Choice(None, f"the previous full {newest.id[:12]} records no LSN (taken before express fulls)")
    changed = [k for k in sorted({*identity, *previous.identity}) if identity.get(k) != previous.identity.get(k)]
    if changed:
        said = ", ".join(f"{k} {previous.identity.get(k)} -> {identity.get(k)}" for k in changed)
        return Choice(None, f"the previous full {newest.id[:12]} is of another server or data directory ({said})")
    if server_lsn is not None and server_lsn < previous.to_lsn:
        return Choice(
            None,
            f"the server's LSN {server_lsn} is behind the previous full's {previous.to_lsn} "
            "(its data directory was restored or replaced)",
        )
    for point_id in previous.parts:
        if not tree_present(point_id):
            return Choice(None, f"full {point_id[:12]} of the chain is damaged (its content is not in the repository)")
    if len(previous.parts) - 1 >= max_fulls:
        return Choice(
            None,
            f"{len(previous.parts) - 1} express full(s) since the real full {previous.parts[0][:12]} "
            f"(expressFulls: {max_fulls})",
        )
    sizes = {b.point_id: b.stream_bytes for b in catalog.bases}
    root = sizes.get(previous.parts[0], 0)
    deltas = sum(sizes.get(p, 0) for p in previous.parts[1:])
    if root and deltas * 100 >= max_percent * root:
        return Choice(
            None,
            f"the express fulls since the real full {previous.parts[0][:12]} hold {deltas * 100 // root} % of its "
            f"size (expressMaxPercent: {max_percent})",
        )
    return Choice(previous)


def plan_note(spec: Mapping[str, object]) -> str:
    """The plan's word on what `run full` takes (from the spec alone)."""
    fulls, percent = settings(spec)
    if fulls <= 0:
        return "run full: a real full every time (expressFulls: 0)"
    return (
        "run full: an express full (only the pages changed since the previous full of the same server and data "
        f"directory, on it) while the chain holds fewer than {fulls} and their changes less than {percent} % of "
        "the real full; else, or with `run full --no-express`, a real full (`points list` names each express "
        "full and its base)"
    )


def _is_full(point: PointLike) -> bool:
    facts = point.extra.get("mariadb")
    return isinstance(facts, Mapping) and isinstance(facts.get("base"), Mapping)


def describe(catalog: Catalog) -> list[str]:
    """Lines for `points list`: each express full and the chain a restore from it applies."""
    lines = [
        f"express full {b.point_id[:12]}: changed pages on full {b.chain[-2][:12]} "
        f"(restore applies {' <- '.join(p[:12] for p in b.chain)})"
        for b in catalog.bases
        if b.express
    ]
    lines += [
        f"express full {point[:12]} cannot be restored: its base {base[:12]} is not in the repository"
        for point, base in catalog.orphans
    ]
    return lines
