"""Garbage collection: delete packs no surviving point needs, safely beside live writers.

Safety protocol (see docs/repository-format.md, "gc"): gc never deletes a pack it did not
list at its start, and deletes a pack only after it has been *condemned*: removed from
the live index and recorded in a condemned index together with the writer locks alive at
that moment. Writers dedup only against the live index, so once those writers are gone no
one can newly reference a condemned pack; the next gc re-marks, resurrects any condemned
pack a point turned out to need, and deletes the rest. When no writer was active at all
during a run, the pack can go in the same run. Partly used packs are kept whole (no
repacking yet): a pack is deleted only when none of its blobs is referenced.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.index import Index, load_index
from protectctl.engine.locks import LeaseLock, is_stale, read_locks
from protectctl.engine.marks import BlobSet, mark_refs
from protectctl.engine.pack import PackEntry
from protectctl.engine.points import Point
from protectctl.engine.repair import Recovery, read_unindexed, write_index_objects
from protectctl.engine.storage.base import ObjectKind, ObjectLockedError, ObjectMissingError
from protectctl.engine.tree import TreeRefs, tree_refs
from protectctl.errors import CorruptionError, LockedError, RepositoryError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from protectctl.engine.repository import Repository


@dataclass(frozen=True, slots=True)
class GcReport:
    dry_run: bool
    points: int
    packs_before: int
    packs_deleted: int
    bytes_deleted: int
    packs_condemned: int  # unreferenced, kept until the writers that might see them are gone
    packs_resurrected: int  # condemned earlier, then found referenced again
    packs_partly_used: int  # kept whole; their unused blobs stay until the pack is wholly unused
    blobs_referenced: int
    index_files_replaced: int
    deferred_because: str | None = None
    unreadable_packs: int = 0  # in no index and their header does not open: kept, check reports them
    damaged: bool = False  # gc deleted nothing because of damage (deferred_because says which)


@dataclass(slots=True)
class _Plan:
    live: dict[str, list[PackEntry]] = field(default_factory=dict)
    # condemned packs kept for later, grouped by the lock set recorded with them
    condemned: dict[tuple[str, ...], dict[str, list[PackEntry]]] = field(default_factory=dict)
    new_condemned: dict[str, list[PackEntry]] = field(default_factory=dict)
    sweep: dict[str, list[PackEntry]] = field(default_factory=dict)
    resurrected: int = 0
    partly_used: int = 0
    dropped_condemned: int = 0
    unreadable: int = 0


def collect_garbage(repo: Repository, *, dry_run: bool, progress: Progress | None) -> GcReport:
    """Run one gc; raises LockedError if another gc runs.

    Damage (a manifest or index object that does not open, a tree that cannot be read)
    makes gc delete nothing and say why in `deferred_because`; `damaged` is then true.
    """
    progress = progress or NullProgress()
    own_lease = _gc_lease(repo)
    try:
        return _collect(repo, own_lease.name, dry_run, progress)
    finally:
        own_lease.release()


def _gc_lease(repo: Repository) -> LeaseLock:
    """A shared lock named "gc"; two gcs at once would each trust the other's index rewrite."""
    lease = LeaseLock(repo.storage, repo.sealer, exclusive=False, command="gc", lease_s=repo.lock_lease_s)
    mine = repo.held_exclusive_locks()
    lease.acquire(ignore=mine)
    for other in read_locks(repo.storage, repo.sealer):
        if other.name != lease.name and other.command == "gc" and not is_stale(other):
            lease.release()
            raise LockedError(f"{repo.storage.describe()}: another gc is running ({other.describe()})")
    return lease


def _foreign_locks(repo: Repository, own_lease: str) -> dict[str, str]:
    """Live locks of other processes: name -> the command holding it."""
    ignore = repo.held_exclusive_locks() | {own_lease}
    return {
        r.name: r.command for r in read_locks(repo.storage, repo.sealer) if not is_stale(r) and r.name not in ignore
    }


def _users(commands: Iterable[str]) -> str:
    """Why condemned data waits, naming what held the repository (a restore is not a writer)."""
    shown = sorted(set(commands))
    return (
        f"other processes used the repository during gc ({', '.join(shown)}); unreferenced data goes at a later prune"
    )


def _collect(repo: Repository, own_lease: str, dry_run: bool, progress: Progress) -> GcReport:
    storage = repo.storage
    # Order matters: locks first, so a writer missing from this list started after it and
    # will read an index at least as new as the one gc reads next.
    locks_start = _foreign_locks(repo, own_lease)
    points_start = {info.name for info in storage.list(ObjectKind.POINTS)}
    # The index is listed again: the repository's cached copy (prune's damage checks read it)
    # may predate the locks listed above. Objects it already read are taken from it, not read
    # twice (their names are their content's hash), and it is dropped: one index in memory.
    known = repo.index_objects()
    repo.invalidate_index()
    index = load_index(storage, repo.sealer, known=known)
    packs_start = {info.name: info.size for info in storage.list(ObjectKind.DATA)}
    points, damaged = _load_points(repo, points_start)
    unverified = _unverified(index, damaged)
    if unverified is not None:
        # What a damaged manifest needs is unknown, and a damaged index object hides which
        # packs it listed: deleting anything could delete what a surviving point needs.
        return _refused(len(points_start), len(packs_start), unverified, dry_run)
    # Unindexed packs (crash garbage, a running writer's, or an index lost): their headers
    # classify them, and marking finds trees in them, so a lost index object stops nothing.
    unindexed = read_unindexed(storage, repo.sealer, index.indexed_packs(), packs_start)
    for pack, entries in unindexed.packs.items():
        index.add_recovered(pack, entries)
    with tempfile.TemporaryDirectory(prefix="protectctl-gc-") as tmp, BlobSet(Path(tmp)) as marks:
        try:
            _mark(repo, index, points, marks, progress)
        except RepositoryError as err:
            return _refused(len(points_start), len(packs_start), err.message, dry_run)
        plan = _classify(index, unindexed, packs_start, marks, set(locks_start))
        referenced = marks.count()
    stats = _Stats(len(points_start), len(packs_start), referenced)
    if dry_run:
        return _dry_report(plan, packs_start, locks_start, stats)
    if not _needs_rewrite(index, plan):
        return _report(plan, stats, deleted=0, freed=0, replaced=0, deferred=None)
    return _apply(repo, own_lease, index, plan, packs_start, points_start, locks_start, progress, stats)


def _load_points(repo: Repository, point_ids: Iterable[str]) -> tuple[list[Point], dict[str, str]]:
    """The listed points, and the manifests that did not open (id -> why)."""
    points: list[Point] = []
    damaged: dict[str, str] = {}
    for point_id, point in repo.load_points(sorted(point_ids)):
        if isinstance(point, CorruptionError):
            damaged[point_id] = point.message
        elif not isinstance(point, ObjectMissingError):  # missing: forgotten meanwhile, its data may go
            points.append(point)
    return points, damaged


def _unverified(index: Index, damaged_points: dict[str, str]) -> str | None:
    """Why gc may not delete anything now, or None."""
    if damaged_points:
        names = ", ".join(f"points/{p}" for p in sorted(damaged_points))
        return (
            f"damaged point manifest(s) {names}: what they need is unknown, so nothing is deleted; "
            "forget them with `protectctl repair points --forget-damaged` (or restore the objects)"
        )
    if index.damaged:
        names = ", ".join(f"index/{name}" for name in sorted(index.damaged))
        return (
            f"damaged index object(s) {names}: the index cannot be fully verified, so nothing is "
            "deleted; run `protectctl repair index`"
        )
    return None


def _refused(points: int, packs: int, why: str, dry_run: bool) -> GcReport:
    return GcReport(
        dry_run=dry_run,
        points=points,
        packs_before=packs,
        packs_deleted=0,
        bytes_deleted=0,
        packs_condemned=0,
        packs_resurrected=0,
        packs_partly_used=0,
        blobs_referenced=0,
        index_files_replaced=0,
        deferred_because=why,
        damaged=True,
    )


@dataclass(frozen=True, slots=True)
class _Stats:
    points: int
    packs_before: int
    blobs_referenced: int


def _report(plan: _Plan, stats: _Stats, *, deleted: int, freed: int, replaced: int, deferred: str | None) -> GcReport:
    return GcReport(
        dry_run=False,
        points=stats.points,
        packs_before=stats.packs_before,
        packs_deleted=deleted,
        bytes_deleted=freed,
        packs_condemned=sum(len(group) for group in plan.condemned.values()),
        packs_resurrected=plan.resurrected,
        packs_partly_used=plan.partly_used,
        blobs_referenced=stats.blobs_referenced,
        index_files_replaced=replaced,
        deferred_because=deferred,
        unreadable_packs=plan.unreadable,
    )


def _dry_report(plan: _Plan, packs_start: dict[str, int], locks_start: dict[str, str], stats: _Stats) -> GcReport:
    doomed = set(plan.sweep) | (set() if locks_start else set(plan.new_condemned))
    waiting = sum(len(group) for group in plan.condemned.values()) + (len(plan.new_condemned) if locks_start else 0)
    return GcReport(
        dry_run=True,
        points=stats.points,
        packs_before=stats.packs_before,
        packs_deleted=len(doomed),
        bytes_deleted=sum(packs_start.get(pack, 0) for pack in doomed),
        packs_condemned=waiting,
        packs_resurrected=plan.resurrected,
        packs_partly_used=plan.partly_used,
        blobs_referenced=stats.blobs_referenced,
        index_files_replaced=0,
        deferred_because=_users(locks_start.values()) if locks_start and plan.new_condemned else None,
        unreadable_packs=plan.unreadable,
    )


def _needs_rewrite(index: Index, plan: _Plan) -> bool:
    """Skip the index rewrite when gc would change nothing (and there is nothing to merge)."""
    changed = plan.new_condemned or plan.sweep or plan.resurrected or plan.dropped_condemned
    live_files = sum(1 for f in index.files.values() if not f.condemned)
    return bool(changed) or live_files > 1


def _mark(repo: Repository, index: Index, points: Iterable[Point], marks: BlobSet, progress: Progress) -> None:
    progress.start("gc: mark", total_files=None)

    def load_refs(tree_id: BlobId) -> TreeRefs:
        located = index.lookup(tree_id)
        if located is None:
            raise RepositoryError(
                f"tree {short_id(tree_id)} needed by a point is not in the index; gc stopped, nothing deleted",
                hint="run `protectctl check` to see which points are damaged",
            )
        return tree_refs(repo.read_entry(located.pack, located.entry))  # only the ids: ~4x less CPU

    for point in points:
        if point.tree is not None:
            try:
                mark_refs(point.tree, load_refs, marks, progress)
            except CorruptionError as err:
                raise RepositoryError(f"point {point.id}: {err.message}; gc stopped, nothing deleted") from err
    progress.finish()


def _classify(
    index: Index, unindexed: Recovery, packs_start: dict[str, int], marks: BlobSet, locks_start: set[str]
) -> _Plan:
    plan = _Plan()
    condemned_locks = index.condemned_packs()
    for pack, entries, condemned in index.packs():
        present = marks.present([e.blob_id for e in entries])
        used = [e.blob_id in present for e in entries]
        if pack not in packs_start:
            if condemned:
                plan.dropped_condemned += 1  # deleted by an earlier, interrupted gc
            else:
                plan.live[pack] = entries  # damage: keep it visible to check, never hide it
            continue
        if any(used):
            plan.live[pack] = entries
            plan.resurrected += int(condemned)
            plan.partly_used += int(not all(used))
        elif not condemned:
            plan.new_condemned[pack] = entries
        elif not set(condemned_locks[pack]) & locks_start:
            plan.sweep[pack] = entries  # every writer that could have seen it is gone
        else:
            plan.condemned.setdefault(condemned_locks[pack], {})[pack] = entries
    # A pack whose header does not open may hold blobs a point needs (a damaged header says
    # nothing about its records): never deleted, left unindexed for check to report.
    plan.unreadable = len(unindexed.unreadable)
    for pack, entries in unindexed.packs.items():
        if marks.any_of(e.blob_id for e in entries):
            plan.live[pack] = entries
            plan.resurrected += 1
        else:
            plan.new_condemned[pack] = entries  # unindexed: a crashed writer's, or a running one's
    return plan


def _apply(
    repo: Repository,
    own_lease: str,
    index: Index,
    plan: _Plan,
    packs_start: dict[str, int],
    points_start: set[str],
    locks_start: dict[str, str],
    progress: Progress,
    stats: _Stats,
) -> GcReport:
    storage = repo.storage
    progress.start("gc: sweep")
    written = write_index_objects(repo, plan.live, condemned=False, locks=())
    for name in index.files:
        if name not in written:
            with contextlib.suppress(ObjectMissingError):
                storage.delete(ObjectKind.INDEX, name)
    # Locks listed only now, after the old index objects are gone: any writer not in this
    # list reads the new index, which no longer offers the condemned packs for dedup.
    locks_now = _foreign_locks(repo, own_lease)
    points_now = {info.name for info in storage.list(ObjectKind.POINTS)}
    quiet = not locks_start and not locks_now and points_now <= points_start
    if quiet:
        plan.sweep.update(plan.new_condemned)
    else:
        plan.condemned.setdefault(tuple(sorted(set(locks_now) | set(locks_start))), {}).update(plan.new_condemned)
    for locks, packs in plan.condemned.items():
        written |= write_index_objects(repo, packs, condemned=True, locks=locks)
    _protect_newly_indexed(repo, set(index.files) | written, plan)
    deleted, freed = _delete_packs(repo, plan.sweep, packs_start, progress)
    repo.invalidate_index()
    progress.finish()
    deferred = None if quiet or not plan.new_condemned else _users([*locks_start.values(), *locks_now.values()])
    return _report(plan, stats, deleted=deleted, freed=freed, replaced=len(index.files), deferred=deferred)


def _protect_newly_indexed(repo: Repository, known: set[str], plan: _Plan) -> None:
    """A writer may have indexed a pack gc saw unindexed; never delete such a pack."""
    fresh = [info.name for info in repo.storage.list(ObjectKind.INDEX) if info.name not in known]
    if not fresh:
        return
    newer = load_index(repo.storage, repo.sealer, fresh)
    if newer.damaged:
        plan.sweep.clear()  # cannot tell which packs it names: delete nothing this time
        return
    for pack in newer.live_packs:
        plan.sweep.pop(pack, None)


def _delete_packs(
    repo: Repository, doomed: dict[str, list[PackEntry]], sizes: dict[str, int], progress: Progress
) -> tuple[int, int]:
    deleted = freed = 0
    for pack in sorted(doomed):
        try:
            repo.storage.delete(ObjectKind.DATA, pack)
        except (ObjectMissingError, ObjectLockedError):
            continue  # locked (s3 objectLock): a later prune deletes it once its retention ends
        deleted += 1
        freed += sizes.get(pack, 0)
        progress.advance(bytes_done=sizes.get(pack, 0))
    return deleted, freed
