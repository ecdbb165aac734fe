"""Containing and repairing damage: the index rebuilt from the packs' own headers.

Every pack ends with a sealed header listing its blobs (`engine/pack.py`), so the index is
derived data: when an index object fails authentication or is gone, the packs it listed
are found again by reading their headers. `recover_unindexed` does that in memory (what a
reader needs, nothing written); `rebuild_index` writes the recovered entries as new live
index objects. Neither ever deletes a pack; `rebuild_index` deletes damaged index objects
only when asked (the explicit `protectctl repair index`) and only after the index that
replaces them is stored. The caller holds the repository's exclusive lock for a rebuild:
no writer can be between uploading a pack and indexing it, and no gc is judging packs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protectctl.engine.crypto import Sealer
from protectctl.engine.index import Index, IndexFile, encode_index, load_index
from protectctl.engine.pack import TRAILER_SIZE, PackEntry, header_length, open_pack_header
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend
from protectctl.errors import CorruptionError, RepositoryError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from protectctl.engine.repository import Repository

# Index objects written by a rebuild (and gc) hold at most this many entries (~48 MB sealed):
# a million blobs in one object, searched in place through its directory (engine/index.py), so
# a lookup that misses costs one binary search, not one per 65,536 blobs as it did.
ENTRIES_PER_INDEX = 1 << 20


def read_pack_header(storage: StorageBackend, sealer: Sealer, pack: str, size: int) -> list[PackEntry]:
    """A pack's own entry table (two range reads); raises CorruptionError if it cannot be read."""
    what = f"pack {pack}"
    try:
        tail = storage.get(ObjectKind.DATA, pack, max(size - TRAILER_SIZE, 0), TRAILER_SIZE)
        length = header_length(tail, size, what)
        sealed = storage.get(ObjectKind.DATA, pack, size - TRAILER_SIZE - length, length)
    except ObjectMissingError as err:
        raise CorruptionError(f"{what}: vanished while its header was read") from err
    except CorruptionError:
        raise
    except RepositoryError as err:
        raise CorruptionError(f"{what}: cannot be read ({err.message})") from err
    return open_pack_header(sealer, sealed, size, what)


@dataclass(slots=True)
class Recovery:
    """Packs no readable index object lists, read through their headers."""

    packs: dict[str, list[PackEntry]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # pack -> why its header did not open


def read_unindexed(
    storage: StorageBackend, sealer: Sealer, indexed: Iterable[str], sizes: Mapping[str, int] | None = None
) -> Recovery:
    """Headers of every stored pack that `indexed` does not name."""
    known = set(indexed)
    if sizes is None:
        sizes = {info.name: info.size for info in storage.list(ObjectKind.DATA)}
    found = Recovery()
    for pack, size in sorted(sizes.items()):
        if pack in known:
            continue
        try:
            found.packs[pack] = read_pack_header(storage, sealer, pack, size)
        except CorruptionError as err:
            found.unreadable[pack] = err.message
    return found


def recover_unindexed(storage: StorageBackend, sealer: Sealer, index: Index) -> Recovery:
    """Add every unindexed pack's blobs to `index` in memory, readable but not for dedup."""
    found = read_unindexed(storage, sealer, index.indexed_packs() | index.recovered)
    for pack, entries in found.packs.items():
        index.add_recovered(pack, entries)
    return found


@dataclass(frozen=True, slots=True)
class IndexRepair:
    """What a rebuild found and did."""

    damaged_index: Mapping[str, str]  # index object -> why it could not be read
    packs_reindexed: int  # unindexed packs whose headers were written into new index objects
    blobs_reindexed: int
    unreadable_packs: Mapping[str, str]  # pack -> why its header did not open (kept, not indexed)
    index_written: tuple[str, ...]
    index_removed: tuple[str, ...]  # damaged index objects deleted (explicit repair only)

    @property
    def changed(self) -> bool:
        return bool(self.index_written or self.index_removed)


def rebuild_index(repo: Repository, *, remove_damaged: bool, progress: Progress | None = None) -> IndexRepair:
    """Index every pack no readable index object lists, from its own header.

    The caller holds the exclusive lock. Packs are never deleted; damaged index objects are
    deleted only with `remove_damaged`, after the new index objects are stored (a crash in
    between leaves both, which is harmless: duplicates are allowed, live wins).
    """
    progress = progress or NullProgress()
    progress.start("repair: index")
    index = load_index(repo.storage, repo.sealer)
    found = read_unindexed(repo.storage, repo.sealer, index.indexed_packs())
    written = write_index_objects(repo, found.packs, condemned=False, locks=())
    removed: list[str] = []
    if remove_damaged:
        for name in sorted(index.damaged):
            with contextlib.suppress(ObjectMissingError):
                repo.storage.delete(ObjectKind.INDEX, name)
            removed.append(name)
    repo.invalidate_index()
    progress.finish()
    return IndexRepair(
        damaged_index=dict(index.damaged),
        packs_reindexed=len(found.packs),
        blobs_reindexed=sum(len(entries) for entries in found.packs.values()),
        unreadable_packs=dict(found.unreadable),
        index_written=tuple(sorted(written)),
        index_removed=tuple(removed),
    )


def write_index_objects(
    repo: Repository, packs: Mapping[str, list[PackEntry]], *, condemned: bool, locks: tuple[str, ...]
) -> set[str]:
    """Store `packs` as index objects of at most ENTRIES_PER_INDEX entries; their names."""
    names: set[str] = set()
    batch = IndexFile(condemned=condemned, locks=locks)
    count = 0
    for pack, entries in sorted(packs.items()):
        batch.packs[pack] = entries
        count += len(entries)
        if count >= ENTRIES_PER_INDEX:
            names.add(_put_index(repo, batch))
            batch, count = IndexFile(condemned=condemned, locks=locks), 0
    if batch.packs:
        names.add(_put_index(repo, batch))
    return names


def _put_index(repo: Repository, index: IndexFile) -> str:
    name, stored = encode_index(repo.sealer, index)
    repo.storage.put(ObjectKind.INDEX, name, stored)
    return name
