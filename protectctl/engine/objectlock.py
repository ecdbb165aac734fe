"""Object-lock retention tied to points: each object a point needs stays locked until the point's
retention ends, extended when a later point reuses it (s3 `objectLock`; run by prune).

An object is locked at write for `retain_s` (engine/storage/s3.py). A point made later may reuse
it (dedup, an unchanged file): it then needs it until `point.time + retain_s`, past its lock.
This pass walks the points newest first, so the first point to reach a pack is its latest user,
and extends the lock of every object whose lock at write ends before its latest user's
retention. Only such objects are asked for their current retention: a fresh object costs nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl.engine.ids import BlobId
from protectctl.engine.index import load_index
from protectctl.engine.marks import BlobSet, mark_tree
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.tree import decode_tree

if TYPE_CHECKING:
    from protectctl.engine.repository import Repository


@dataclass(frozen=True, slots=True)
class LockReport:
    objects: int  # objects some point needs
    extended: int  # whose lock was extended now
    longest: datetime | None  # the latest retention end set or found


class _LatestUser(BlobSet):
    """Marks blobs, giving each pack the retention end of the first point that reaches it."""

    def __init__(self, directory: Path, pack_of: Any) -> None:
        super().__init__(directory)
        self._pack_of = pack_of
        self.until: datetime | None = None
        self.packs: dict[str, datetime] = {}

    def __enter__(self) -> _LatestUser:
        return self

    def add_many(self, ids: Iterable[BlobId]) -> None:
        fresh = [i for i in ids if not self.contains(i)]
        for blob in fresh:
            pack = self._pack_of(blob)
            if pack is not None and self.until is not None:
                self.packs.setdefault(pack, self.until)
        super().add_many(fresh)


def extend_locks(repo: Repository, retain_s: int) -> LockReport:
    """Extend object locks so no object unlocks before the retention of the latest point needing it."""
    storage: Any = repo.storage
    if getattr(storage, "lock", None) is None or not hasattr(storage, "retain"):
        return LockReport(0, 0, None)
    keep = timedelta(seconds=retain_s)
    points = sorted(repo.list_points(), key=lambda p: p.time, reverse=True)
    index = load_index(storage, repo.sealer)

    def pack_of(blob: BlobId) -> str | None:
        located = index.lookup(blob)
        return located.pack if located is not None else None

    def load_tree(tree_id: BlobId) -> Any:
        located = index.lookup(tree_id)
        assert located is not None
        return decode_tree(repo.read_entry(located.pack, located.entry))

    needed: dict[tuple[ObjectKind, str], datetime] = {}
    with tempfile.TemporaryDirectory(prefix="protectctl-lock-") as tmp, _LatestUser(Path(tmp), pack_of) as marks:
        for point in points:
            marks.until = point.time + keep
            needed[(ObjectKind.POINTS, point.id)] = marks.until
            if point.tree is not None:
                mark_tree(point.tree, load_tree, marks)
        needed.update({(ObjectKind.DATA, pack): until for pack, until in marks.packs.items()})
    if points:
        newest = points[0].time + keep  # the repository itself lives as long as its newest point
        needed.update(
            {(kind, info.name): newest for kind in (ObjectKind.CONFIG, ObjectKind.KEYS) for info in storage.list(kind)}
        )
    return _extend(storage, needed, keep)


def _extend(storage: Any, needed: dict[tuple[ObjectKind, str], datetime], keep: timedelta) -> LockReport:
    written = {kind: storage.modified(kind) for kind in {k for k, _ in needed}}
    extended = 0
    for (kind, name), until in needed.items():
        at = written[kind].get(name)
        if at is not None and at + keep >= until:
            continue  # its lock at write already lasts long enough
        current = storage.retained_until(kind, name)
        if current is None or current < until:
            storage.retain(kind, name, until)
            extended += 1
    return LockReport(len(needed), extended, max(needed.values(), default=None))
