"""Repository check: is everything every point needs present and intact, and if not, which
points are hurt.

Structure (always): every index object opens and matches its name; every pack an index
names exists and is long enough; every point's trees load and every blob they reference
is indexed. With `read_data`: every pack is read whole, its name re-hashed, its header
opened and every blob decrypted and re-hashed. Damage is reported per pack together with
the points that need it, so an operator knows which recovery points are lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from protectctl.engine.crypto import content_name
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.index import Index, decode_index, verify_directory
from protectctl.engine.pack import TRAILER_SIZE, PackEntry, header_length, open_blob, open_pack_header
from protectctl.engine.repair import read_unindexed
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError
from protectctl.engine.tree import NodeType, decode_tree
from protectctl.errors import CorruptionError, RepositoryError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from protectctl.engine.repository import Repository

_NO_DAMAGE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AffectedPoint:
    """A recovery point damage touches, named the way an operator knows it."""

    id: str
    source: str | None  # None when the manifest itself does not open
    time: datetime | None

    def describe(self) -> str:
        if self.source is None or self.time is None:
            return f"{self.id} (manifest damaged)"
        return f"{self.id} ({self.source} at {self.time.strftime('%Y-%m-%d %H:%M:%SZ')})"


@dataclass(frozen=True, slots=True)
class CheckReport:
    read_data: bool
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    damaged_packs: Mapping[str, tuple[str, ...]]  # pack -> ids of the points that need it
    damaged_points: tuple[str, ...]  # manifests that do not open
    affected_points: tuple[str, ...]  # every point damage touches, damaged manifests included
    affected: tuple[AffectedPoint, ...]  # the same points with their source and time
    points_checked: int
    packs_checked: int
    blobs_checked: int

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(slots=True)
class _Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_packs: set[str] = field(default_factory=set)  # missing, unreadable or failing blobs
    bad_blobs: dict[BlobId, str] = field(default_factory=dict)  # blob -> its pack
    users: dict[str, set[str]] = field(default_factory=dict)  # bad pack -> point ids
    unindexed_needed: set[str] = field(default_factory=set)  # packs a point needs that no index lists
    damaged_points: set[str] = field(default_factory=set)  # manifests that do not open
    named: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # point id -> (source, time)
    blobs_checked: int = 0

    def damage(self, pack: str, message: str) -> None:
        self.bad_packs.add(pack)
        self.errors.append(message)


def check_repository(repo: Repository, *, read_data: bool, progress: Progress | None) -> CheckReport:
    """Check the repository; never raises for damage it can describe."""
    progress = progress or NullProgress()
    found = _Findings()
    index = _check_index(repo, found, progress)
    sizes = {info.name: info.size for info in repo.storage.list(ObjectKind.DATA)}
    _check_pack_presence(index, sizes, found)
    _add_unindexed(repo, index, sizes, found)
    if read_data:
        _read_all_packs(repo, index, sizes, found, progress)
    points = _check_points(repo, index, found, progress)
    _report_unindexed_needed(found)
    affected = sorted({p for users in found.users.values() for p in users} | found.damaged_points)
    return CheckReport(
        read_data=read_data,
        errors=tuple(found.errors),
        warnings=tuple(found.warnings),
        damaged_packs={pack: tuple(sorted(found.users.get(pack, ()))) for pack in sorted(found.bad_packs)},
        damaged_points=tuple(sorted(found.damaged_points)),
        affected_points=tuple(affected),
        affected=tuple(AffectedPoint(p, *found.named.get(p, (None, None))) for p in affected),
        points_checked=points,
        packs_checked=len(sizes),
        blobs_checked=found.blobs_checked,
    )


def _check_index(repo: Repository, found: _Findings, progress: Progress) -> Index:
    progress.start("check: index")
    index = Index()
    for info in repo.storage.list(ObjectKind.INDEX):
        try:
            stored = decode_index(repo.sealer, info.name, repo.storage.get(ObjectKind.INDEX, info.name))
            why = verify_directory(stored)
            if why is not None:
                found.errors.append(
                    f"index/{info.name}: {why} (its tables are sound and checked here without it; "
                    "syncs and restores may miss the blobs it lists)"
                )
                stored = dataclasses.replace(stored, directory=-1)  # its tables, searched through a dict
            index.add_file(info.name, stored)
        except ObjectMissingError:
            continue  # replaced by a concurrent gc
        except CorruptionError as err:
            found.errors.append(
                f"{err.message} (its packs are still found through their own headers; "
                "`protectctl repair index` rebuilds the index from them)"
            )
    progress.finish()
    return index


def _add_unindexed(repo: Repository, index: Index, sizes: Mapping[str, int], found: _Findings) -> None:
    """Blobs of packs no readable index lists, from the packs' headers (a lost or damaged
    index object, or an interrupted write), so a point needing them is told from lost data."""
    recovery = read_unindexed(repo.storage, repo.sealer, index.indexed_packs(), sizes)
    for pack, entries in recovery.packs.items():
        index.add_recovered(pack, entries)
    for why in recovery.unreadable.values():
        found.warnings.append(f"{why} (the pack is in no index; gc keeps it, since what it holds is unknown)")


def _report_unindexed_needed(found: _Findings) -> None:
    for pack in sorted(found.unindexed_needed):
        users = sorted(found.users.get(f"unindexed:{pack}", ()))
        found.errors.append(
            f"pack {pack}: {len(users)} point(s) need blobs that only the pack's own header lists "
            "(an index object is damaged or missing); run `protectctl repair index`"
        )


def _check_pack_presence(index: Index, sizes: Mapping[str, int], found: _Findings) -> None:
    indexed: set[str] = set()
    for pack, entries, _condemned in index.packs():
        indexed.add(pack)
        if pack not in sizes:
            found.damage(pack, f"pack {pack}: missing, but the index lists {len(entries)} blob(s) in it")
        elif any(e.offset + e.length > sizes[pack] - TRAILER_SIZE for e in entries):
            found.damage(pack, f"pack {pack}: shorter than its index entries say (truncated?)")
    unindexed = len(set(sizes) - indexed)
    if unindexed:
        found.warnings.append(
            f"{unindexed} pack(s) are in no readable index (an interrupted write, or an index object "
            "damaged or lost): `protectctl repair index` indexes those that hold data, `protectctl prune` "
            "removes those no point needs"
        )


def _read_all_packs(
    repo: Repository, index: Index, sizes: Mapping[str, int], found: _Findings, progress: Progress
) -> None:
    progress.start("check: read data", total_bytes=sum(sizes.values()))
    by_pack: dict[str, list[PackEntry]] = {pack: entries for pack, entries, _c in index.packs()}
    for pack in sorted(sizes):
        try:
            data = repo.storage.get(ObjectKind.DATA, pack)
        except (ObjectMissingError, RepositoryError) as err:
            found.damage(pack, f"pack {pack}: cannot be read ({err})")
            continue
        _verify_pack(repo, pack, data, by_pack.get(pack, []), found)
        progress.advance(bytes_done=len(data))
    progress.finish()


def _verify_pack(repo: Repository, pack: str, data: bytes, indexed: list[PackEntry], found: _Findings) -> None:
    if content_name(data) != pack:
        found.damage(pack, f"pack {pack}: content does not match its name (damaged on storage)")
    what = f"pack {pack}"
    try:
        length = header_length(data, len(data), what)
        header = open_pack_header(repo.sealer, data[-TRAILER_SIZE - length : -TRAILER_SIZE], len(data), what)
    except CorruptionError as err:
        found.damage(pack, f"{err.message}")
        for entry in indexed:
            found.bad_blobs[entry.blob_id] = pack
        header = []
    for entry in header or indexed:
        found.blobs_checked += 1
        blob_what = f"pack {pack} (blob {short_id(entry.blob_id)})"
        try:
            plain = open_blob(repo.sealer, entry, data[entry.offset : entry.offset + entry.length], blob_what)
            if repo.blob_id(plain) != entry.blob_id:
                raise CorruptionError(f"{blob_what}: content does not match its id")
        except CorruptionError as err:
            found.damage(pack, err.message)
            found.bad_blobs[entry.blob_id] = pack
    if header and {e.blob_id for e in indexed} - {e.blob_id for e in header}:
        found.damage(pack, f"pack {pack}: the index lists blobs its header does not have")


def _check_points(repo: Repository, index: Index, found: _Findings, progress: Progress) -> int:
    # advances by the files of each tree as it is read: every unique tree once, so the count
    # ends at the number of distinct file entries, not points x files
    progress.start("check: points")
    memo: dict[BlobId, frozenset[str]] = {}
    count = 0
    names = sorted(info.name for info in repo.storage.list(ObjectKind.POINTS))
    for name, point in repo.load_points(names):
        if isinstance(point, ObjectMissingError):
            continue
        if isinstance(point, CorruptionError):
            found.errors.append(
                f"{point.message}; this point cannot be read "
                "(forget it with `protectctl repair points --forget-damaged`)"
            )
            found.damaged_points.add(name)
            continue
        count += 1
        found.named[point.id] = (point.source, point.time)
        if point.tree is None:
            continue
        for pack in _damage_under(repo, index, point.tree, memo, found, progress):
            found.users.setdefault(pack, set()).add(point.id)
            if pack.startswith("missing:"):
                found.bad_packs.add(pack)
    progress.finish()
    return count


def _blob_damage(index: Index, blob_id: BlobId, found: _Findings) -> frozenset[str]:
    """The bad packs (or "missing:<id>") reading this blob would hit."""
    located = index.lookup(blob_id)
    if located is None:
        marker = f"missing:{blob_id.hex()}"
        if marker not in found.bad_packs:
            found.errors.append(f"blob {short_id(blob_id)} is referenced but in no index and no pack")
        return frozenset({marker})
    if located.pack in found.bad_packs:
        return frozenset({located.pack})
    if blob_id in found.bad_blobs:
        return frozenset({found.bad_blobs[blob_id]})
    if located.pack in index.recovered:
        found.unindexed_needed.add(located.pack)
        return frozenset({f"unindexed:{located.pack}"})
    return _NO_DAMAGE


def _damage_under(
    repo: Repository,
    index: Index,
    root: BlobId,
    memo: dict[BlobId, frozenset[str]],
    found: _Findings,
    progress: Progress,
) -> frozenset[str]:
    """Every bad pack a restore of the tree `root` would hit (memoised per tree: a tree many
    points share is read once, and memory grows with the unique trees, not points x files)."""
    own: dict[BlobId, frozenset[str]] = {}  # a tree's own damage while its children are walked
    children: dict[BlobId, list[BlobId]] = {}
    stack: list[tuple[BlobId, bool]] = [(root, False)]
    while stack:
        tree_id, expanded = stack.pop()
        if tree_id in memo:
            continue
        if expanded:
            damage = set(own.pop(tree_id))
            for child in children.pop(tree_id):
                damage |= memo.get(child, _NO_DAMAGE)
            memo[tree_id] = frozenset(damage) if damage else _NO_DAMAGE
            continue
        if tree_id in own:
            continue  # a cycle or a shared subtree already being walked
        own[tree_id], children[tree_id] = _load_tree_damage(repo, index, tree_id, found, progress)
        stack.append((tree_id, True))
        stack.extend((child, False) for child in children[tree_id] if child not in memo)
    return memo[root]


def _load_tree_damage(
    repo: Repository, index: Index, tree_id: BlobId, found: _Findings, progress: Progress
) -> tuple[frozenset[str], list[BlobId]]:
    damage = set(_blob_damage(index, tree_id, found))
    if any(not d.startswith("unindexed:") for d in damage):
        return frozenset(damage), []  # cannot be read: what is below it is lost with it
    located = index.lookup(tree_id)
    assert located is not None
    try:
        tree = decode_tree(repo.read_entry(located.pack, located.entry))
    except CorruptionError as err:
        found.damage(located.pack, f"tree {short_id(tree_id)}: {err.message}")
        return frozenset({located.pack}), []
    files = 0
    for node in tree.nodes:
        files += node.type is NodeType.FILE
        for chunk in node.chunks:
            damage |= _blob_damage(index, chunk, found)
    progress.advance(files=files)
    subtrees = [node.subtree for node in tree.nodes if node.subtree is not None]
    return frozenset(damage), subtrees
