"""What `status` says of a PostgreSQL source beyond its points' ages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from protectctl.provider import Point
from protectctl.providers.postgresql import wal as walspool
from protectctl.providers.postgresql.catalog import build_catalog
from protectctl.providers.postgresql.spool import spool_dir


def status_problems(source: str, spec: Mapping[str, object], points: Sequence[Point], state_dir: Path) -> list[str]:
    """What `status` must say of a PostgreSQL source beyond point ages: WAL gaps and drops that
    make part of the retained time unrecoverable, and drops still waiting in the spool."""
    catalog = build_catalog([p for p in points if p.source == source])
    problems = [f"point-in-time recovery gap: {g.describe()}" for g in catalog.gaps]
    problems += [
        f"WAL segment {d.get('name')} was dropped by the full spool ({d.get('reason')})" for d in catalog.drops
    ]
    spool = spool_dir(spec, source, state_dir)
    pending = walspool.read_drops(spool / walspool.DROPPED)
    for f in sorted(spool.glob("dropped.*.draining.jsonl")):
        pending += walspool.read_drops(f)
    if pending:
        problems.append(
            f"{len(pending)} WAL segment(s) dropped by the full spool {spool} since the last sync "
            f"(first {pending[0].get('name')}): recovery has a gap until the next full"
        )
    return problems
