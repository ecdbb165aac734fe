"""`Repository`: the one entry point to an encrypted, deduplicated backup repository.

Owns opening and creating repositories (config + key files), blob ids, the chunker with
the repository's parameters, write sessions, reading blobs, trees and points, locks, and
delegates gc and check to `engine.gc` and `engine.check`. The format is documented in
docs/repository-format.md. Concurrency contract: a process that writes blobs and saves a
point holds a shared lock from before it reads the index until after `save_point`
(`writer()` takes one implicitly when none is held); gc relies on those locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING

import blake3

from protectctl.engine.buffers import BlobScratch
from protectctl.engine.chunker import Chunker, ChunkerParams
from protectctl.engine.crypto import (
    DEFAULT_KDF_N,
    KdfParams,
    MasterKeys,
    Sealer,
    keyed_hasher,
    unwrap_keys,
    wrap_keys,
)
from protectctl.engine.ids import BlobId, short_id
from protectctl.engine.index import Index, IndexEntry, IndexFile, StoredIndex, load_index
from protectctl.engine.locks import DEFAULT_LEASE_S, LeaseLock
from protectctl.engine.pack import BlobKind, PackEntry, open_blob, open_blob_into, open_body
from protectctl.engine.points import (
    DamagedPoint,
    Point,
    PointScan,
    PointStats,
    decode_point,
    encode_point,
    new_point_id,
    valid_point_id,
)
from protectctl.engine.prefetch import fetch_in_order
from protectctl.engine.readahead import PackReadAhead
from protectctl.engine.repair import IndexRepair, rebuild_index, recover_unindexed
from protectctl.engine.storage.base import ObjectKind, ObjectLockedError, ObjectMissingError, StorageBackend
from protectctl.engine.storage.cache import evict_cached
from protectctl.engine.tree import Tree, decode_tree, encode_tree
from protectctl.engine.writer import DEFAULT_PACK_SIZE, BlobWriter
from protectctl.errors import CorruptionError, LockedError, RepositoryError, WrongKeyError
from protectctl.progress import Progress

if TYPE_CHECKING:
    from protectctl.engine.check import CheckReport
    from protectctl.engine.gc import GcReport
    from protectctl.engine.keycache import DerivedKeyCache

__all__ = [
    "BlobKind",
    "BlobWriter",
    "DamagedPoint",
    "Point",
    "PointScan",
    "PointStats",
    "Repository",
    "new_point_id",
]

CONFIG_NAME = "config"
FORMAT_NAME = "protectctl-repository"
FORMAT_VERSION = 1


class Repository:
    """An opened repository; thread-safe for concurrent writers and readers."""

    def __init__(
        self, storage: StorageBackend, repo_id: str, keys: MasterKeys, chunker: ChunkerParams, pack_size: int
    ) -> None:
        self.storage = storage
        self.id = repo_id
        self.chunker_params = chunker
        self.pack_size = pack_size
        self.lock_lease_s = DEFAULT_LEASE_S
        self._keys = keys
        self.sealer = Sealer(keys.encryption)
        self._mutex = threading.RLock()
        self._index: Index | None = None
        self._recovered = False  # unindexed packs' headers already added to self._index
        self._pending: set[BlobId] = set()  # claimed by active writers, not yet indexed
        self._stored: dict[BlobId, IndexEntry] = {}  # uploaded by active writers, not yet indexed
        self._sessions = 0
        self._held: list[LeaseLock] = []
        self._implicit: LeaseLock | None = None
        self._ahead: PackReadAhead | None = None  # remote stores only (engine/readahead.py)
        self._blob_ends: dict[str, list[int]] = {}
        self._blob_ends_of: Index | None = None

    # -- creating and opening -------------------------------------------------------------

    @staticmethod
    def exists(storage: StorageBackend) -> bool:
        return storage.exists(ObjectKind.CONFIG, CONFIG_NAME)

    @classmethod
    def init(
        cls,
        storage: StorageBackend,
        passphrase: bytes,
        *,
        kdf_n: int = DEFAULT_KDF_N,
        chunker: ChunkerParams | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> Repository:
        """Create a repository; raises RepositoryError if one exists there."""
        if cls.exists(storage):
            raise RepositoryError(f"{storage.describe()} already holds a repository")
        repo_id = os.urandom(16).hex()
        keys = MasterKeys.generate()
        params = chunker or ChunkerParams()
        key_name = os.urandom(16).hex()
        # Key first, config last: a crash in between leaves no repository, only an orphan
        # key that no later config's id can open (the id is in the key's AAD).
        storage.put(ObjectKind.KEYS, key_name, wrap_keys(keys, passphrase, repo_id, key_name, KdfParams.fresh(kdf_n)))
        storage.put(ObjectKind.CONFIG, CONFIG_NAME, _encode_config(repo_id, params, pack_size))
        return cls(storage, repo_id, keys, params, pack_size)

    @classmethod
    def open(
        cls, storage: StorageBackend, passphrase: bytes, *, key_cache: DerivedKeyCache | None = None
    ) -> Repository:
        """Open with a passphrase; WrongKeyError if no key file opens, RepositoryError if none.
        `key_cache`: an agent's cache of derived keys (engine/keycache.py), to skip scrypt."""
        try:
            config = storage.get(ObjectKind.CONFIG, CONFIG_NAME)
        except ObjectMissingError as err:
            raise RepositoryError(
                f"{storage.describe()} holds no repository", hint="create it with `protectctl apply`"
            ) from err
        repo_id, params, pack_size = _decode_config(config, storage.describe())
        keys = _unlock(storage, passphrase, repo_id, key_cache)
        return cls(storage, repo_id, keys, params, pack_size)

    def close(self) -> None:
        """Release any lock `writer()` took implicitly."""
        with self._mutex:
            implicit, self._implicit = self._implicit, None
        if implicit is not None:
            implicit.release()

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- ids and chunking -------------------------------------------------------------------

    def blob_id(self, data: bytes | bytearray | memoryview) -> BlobId:
        """Keyed BLAKE3 of `data`: equal content, equal id; ids reveal nothing without the key."""
        hasher = keyed_hasher(self._keys.id_key)
        hasher.update(data)
        return BlobId(hasher.digest())

    def content_hasher(self) -> blake3.blake3:
        """A keyed BLAKE3 hasher for `Node.content_hash` (whole-file content, restore verification)."""
        return keyed_hasher(self._keys.id_key)

    def id_key(self) -> bytes:
        """The secret id key, for self-contained copies (tape) that must verify ids and file hashes."""
        return self._keys.id_key

    def encryption_key(self) -> bytes:
        """The secret encryption key, for restore worker processes that read packs themselves
        (restore/workers.py: sent through a pipe, never argv, the environment or a file)."""
        return self._keys.encryption

    def chunker(self) -> Chunker:
        return Chunker(self.chunker_params, self._keys.chunker_seed)

    # -- the index --------------------------------------------------------------------------

    def _loaded_index(self) -> Index:
        with self._mutex:
            if self._index is None:
                self._index, self._recovered = load_index(self.storage, self.sealer), False
                if self._index.damaged:
                    self._recover_unindexed()  # the damaged objects' packs, through their headers
            return self._index

    def _recover_unindexed(self) -> None:
        """Find blobs of packs no readable index object lists, in memory (nothing written)."""
        with self._mutex:
            if self._index is not None and not self._recovered:
                recover_unindexed(self.storage, self.sealer, self._index)
                self._recovered = True

    def index_objects(self) -> dict[str, StoredIndex]:
        """The index objects the cached index read (name -> content), none when not loaded."""
        with self._mutex:
            return dict(self._index.files) if self._index is not None else {}

    def invalidate_index(self) -> None:
        """Forget the cached index; it is re-read on next use."""
        with self._mutex:
            self._index = None

    def index_damage(self) -> dict[str, str]:
        """Index objects that did not open (name -> why); their packs are read through their headers."""
        return dict(self._loaded_index().damaged)

    def index_incomplete(self, points: Iterable[Point]) -> bool:
        """Whether the index is damaged, or misses the tree of one of `points` (objects lost)."""
        index = self._loaded_index()
        if index.damaged:
            return True
        return any(p.tree is not None and index.lookup(p.tree) is None for p in points)

    def repair_index(self, *, remove_damaged: bool = True, progress: Progress | None = None) -> IndexRepair:
        """`protectctl repair index`: under the exclusive lock, index every pack no readable
        index object lists, from its own header; then delete the damaged index objects.
        Packs are never deleted. Raises LockedError while anyone else uses the repository."""
        with self.lock(exclusive=True, command="repair index"):
            return rebuild_index(self, remove_damaged=remove_damaged, progress=progress)

    def repair_index_if_safe(self, points: Iterable[Point]) -> IndexRepair | None:
        """The automatic repair of sync, restore and prune: when the index is damaged or lost
        and nobody else uses the repository, re-index the unindexed packs (deleting nothing).

        None when there was nothing to do or the repository is busy (reads then find blobs
        through the packs' headers in memory, and gc deletes nothing while damage remains).
        """
        if not self.index_incomplete(points):
            return None
        with self._mutex:  # our own shared lock (a sync's, a restore's) does not stand in the way
            own = {lease.name for lease in [*self._held, *([self._implicit] if self._implicit else [])]}
        try:
            with self._locked(True, "repair index (automatic)", ignore=own):
                return rebuild_index(self, remove_damaged=False)
        except LockedError:
            return None

    def has_blob(self, blob_id: BlobId) -> bool:
        """Whether a writer may reference `blob_id` without storing it again."""
        with self._mutex:
            return blob_id in self._pending or self._loaded_index().has_live(blob_id)

    def blob_size(self, blob_id: BlobId) -> int:
        """The plaintext length of a stored blob, from the index (nothing is read); raises
        CorruptionError when no index lists it. Lets a reader seek into a file by its chunks."""
        return self._locate(blob_id).entry.raw_length

    def has_blobs(self, blob_ids: Iterable[bytes]) -> bool:
        """`has_blob` for every id, under one lock acquisition (a directory's chunks at once)."""
        with self._mutex:
            pending, has_live = self._pending, self._loaded_index().has_live
            return all(b in pending or has_live(b) for b in blob_ids)

    def _lookup(self, blob_id: BlobId) -> IndexEntry | None:
        with self._mutex:
            return self._stored.get(blob_id) or self._loaded_index().lookup(blob_id)

    # -- writing ----------------------------------------------------------------------------

    def writer(self, progress: Progress | None = None, *, workers: int | None = None) -> BlobWriter:
        """A write session (context manager). Takes a shared lock if this object holds none."""
        with self._mutex:
            if not self._held and self._implicit is None:
                lease = LeaseLock(
                    self.storage, self.sealer, exclusive=False, command="writer", lease_s=self.lock_lease_s
                )
                lease.acquire()
                self._implicit = lease
                self._index = None  # read the index only once the lock is visible to gc
            self._sessions += 1
        return BlobWriter(self, self.sealer, progress=progress, pack_size=self.pack_size, workers=workers)

    def _claim_new(self, blob_id: BlobId) -> bool:
        with self._mutex:
            if blob_id in self._pending or self._loaded_index().has_live(blob_id):
                return False
            self._pending.add(blob_id)
            return True

    def _packs_stored(self, pack: str, entries: list[PackEntry]) -> None:
        with self._mutex:
            for entry in entries:
                self._stored[entry.blob_id] = IndexEntry(pack, entry)

    def _packs_indexed(self, name: str, index: IndexFile) -> None:
        with self._mutex:
            if self._index is not None:
                self._index.add_file(name, index)
            for entries in index.packs.values():
                for entry in entries:
                    self._pending.discard(entry.blob_id)
                    self._stored.pop(entry.blob_id, None)

    def _session_ended(self, abandoned: set[BlobId], committed: bool) -> None:
        with self._mutex:
            self._pending.difference_update(abandoned)
            for blob_id in abandoned:
                self._stored.pop(blob_id, None)
            self._sessions -= 1
            release = not committed and self._sessions == 0
        if release:
            self.close()

    def save_tree(self, writer: BlobWriter, tree: Tree) -> BlobId:
        return writer.add(BlobKind.TREE, encode_tree(tree))[0]

    # -- reading ----------------------------------------------------------------------------

    def load_blob(self, blob_id: BlobId) -> bytes:
        """Decrypt, decompress and verify one blob; CorruptionError names the pack."""
        located = self._locate(blob_id)
        return self.read_entry(located.pack, located.entry)

    def load_blob_unchecked(self, blob_id: BlobId) -> bytes:
        """`load_blob` without re-hashing the plaintext against its id.

        Still decrypted and authenticated (the record's AAD binds its id and kind, so only a
        key holder could have sealed it under this id). For callers that verify the content
        as a whole, as restore does with each file's keyed content hash; anything else should
        use `load_blob`.
        """
        located = self._locate(blob_id)
        return self.read_entry(located.pack, located.entry, verify_id=False)

    def load_blob_into(self, blob_id: BlobId, scratch: BlobScratch, *, verify_id: bool = True) -> memoryview:
        """`load_blob` (or, `verify_id=False`, `load_blob_unchecked`) into one thread's scratch
        buffers: no allocation per blob. The view is valid until `scratch` is used again."""
        located = self._locate(blob_id)
        pack, entry = located.pack, located.entry
        what = f"pack {pack} (blob {short_id(entry.blob_id)})"
        stored = scratch.stored.view(entry.length)
        # Optional backend capability (LocalStorage): read straight into our buffer.
        get_into = getattr(self.storage, "get_into", None)
        try:
            if get_into is not None:
                get_into(ObjectKind.DATA, pack, entry.offset, stored)
            else:
                stored = memoryview(self._read_stored(pack, entry))
        except ObjectMissingError as err:
            raise CorruptionError(f"{what}: the pack is missing") from err
        except RepositoryError as err:
            raise CorruptionError(f"{what}: {err.message}") from err
        data = open_blob_into(self.sealer, entry, stored, scratch, what)
        if verify_id and self.blob_id(data) != entry.blob_id:
            raise CorruptionError(f"{what}: content does not match its id")
        return data

    def _locate(self, blob_id: BlobId) -> IndexEntry:
        located = self._lookup(blob_id)
        if located is None:
            self.invalidate_index()  # gc may have moved it since we loaded the index
            located = self._lookup(blob_id)
        if located is None:
            self._recover_unindexed()  # an index object lost: the pack's own header knows
            located = self._lookup(blob_id)
        if located is None:
            raise CorruptionError(f"blob {short_id(blob_id)} is not in the index of {self.storage.describe()}")
        return located

    def read_entry(self, pack: str, entry: PackEntry, *, verify_id: bool = True) -> bytes:
        """Read the blob described by `entry` from `pack` and verify its id."""
        what = f"pack {pack} (blob {short_id(entry.blob_id)})"
        data = open_blob(self.sealer, entry, self._stored_or_corrupt(pack, entry, what), what)
        if verify_id and self.blob_id(data) != entry.blob_id:
            raise CorruptionError(f"{what}: content does not match its id")
        return data

    def blob_entry(self, blob_id: BlobId) -> PackEntry:
        """Where a blob is stored and how long it is (stored and plain), without reading it."""
        return self._locate(blob_id).entry

    def load_blob_body(self, blob_id: BlobId) -> tuple[PackEntry, bytes]:
        """A blob decrypted and authenticated but not decoded: its index entry and its body
        (`flag || payload`, still compressed), for copies that keep the encoding (tape)."""
        located = self._locate(blob_id)
        pack, entry = located.pack, located.entry
        what = f"pack {pack} (blob {short_id(entry.blob_id)})"
        return entry, open_body(self.sealer, entry, self._stored_or_corrupt(pack, entry, what), what)

    def blob_location(self, blob_id: BlobId) -> IndexEntry:
        """Which pack holds a blob and where, without reading it (for a caller that reads
        several blobs of one pack at once, `read_pack_into`)."""
        return self._locate(blob_id)

    def read_pack_into(self, pack: str, offset: int, out: memoryview) -> None:
        """`len(out)` stored bytes of `pack` from `offset` (one read for adjacent blobs; open each
        with `sealer.open_into`); CorruptionError when the pack is missing or shorter."""
        what = f"pack {pack}"
        get_into = getattr(self.storage, "get_into", None)
        try:
            if get_into is not None:
                get_into(ObjectKind.DATA, pack, offset, out)
                return
            got = self.storage.get(ObjectKind.DATA, pack, offset, len(out))
        except ObjectMissingError as err:
            raise CorruptionError(f"{what}: the pack is missing") from err
        except RepositoryError as err:
            raise CorruptionError(f"{what}: {err.message}") from err
        if len(got) != len(out):
            raise CorruptionError(f"{what}: wanted {len(out)} bytes at {offset}, the pack is shorter")
        out[:] = got

    def _stored_or_corrupt(self, pack: str, entry: PackEntry, what: str) -> bytes | memoryview:
        """`_read_stored`, a missing or unreadable pack reported as damage to `what`."""
        try:
            return self._read_stored(pack, entry)
        except ObjectMissingError as err:
            raise CorruptionError(f"{what}: the pack is missing") from err
        except RepositoryError as err:
            raise CorruptionError(f"{what}: {err.message}") from err

    def _read_stored(self, pack: str, entry: PackEntry) -> bytes | memoryview:
        """A blob's stored bytes; on a store whose requests are costly (`read_ahead_bytes`, s3)
        through a read-ahead window, since blobs are mostly read in the order they were written."""
        window = getattr(self.storage, "read_ahead_bytes", 0)
        if not window:
            return self.storage.get(ObjectKind.DATA, pack, entry.offset, entry.length)
        with self._mutex:
            if self._ahead is None:
                self._ahead = PackReadAhead(self.storage, self._pack_blob_ends, window_bytes=window)
            ahead = self._ahead
        return ahead.read(pack, entry.offset, entry.length)

    def _pack_blob_ends(self, pack: str) -> list[int]:
        """Where each blob of `pack` ends, ascending (empty for a pack in no index object)."""
        index = self._loaded_index()
        with self._mutex:
            if self._blob_ends_of is not index:
                self._blob_ends, self._blob_ends_of = {}, index
            ends = self._blob_ends.get(pack)
            if ends is None:
                entries = next((f.packs[pack] for f in index.files.values() if pack in f.packs), [])
                ends = self._blob_ends[pack] = sorted(e.offset + e.length for e in entries)
            return ends

    def load_tree(self, blob_id: BlobId) -> Tree:
        try:
            return decode_tree(self.load_blob(blob_id))
        except CorruptionError as err:
            raise CorruptionError(f"tree {short_id(blob_id)}: {err.message}") from err

    # -- points -----------------------------------------------------------------------------

    def save_point(self, point: Point) -> None:
        """Publish a point; refuses one whose tree is not indexed yet or whose lock was lost."""
        if point.tree is not None:
            with self._mutex:
                unindexed = point.tree in self._pending or point.tree in self._stored
            if unindexed or self._lookup(point.tree) is None:
                raise RepositoryError(f"point {point.id}: its tree is not committed; leave the writer first")
        self._check_locks_held()
        try:
            stored = encode_point(self.sealer, point)
        except ValueError as err:
            raise RepositoryError(f"point {point.id}: {err}") from err
        self.storage.put(ObjectKind.POINTS, point.id, stored)
        with self._mutex:
            release = self._sessions == 0
        if release:
            self.close()

    def _check_locks_held(self) -> None:
        for lease in [*self._held, *([self._implicit] if self._implicit else [])]:
            if lease.lost:
                raise RepositoryError(
                    "the repository lock was taken over while this process held it (lease expired); "
                    "the point is not saved, so gc cannot have removed data it needs"
                )

    def list_points(self, source: str | None = None) -> list[Point]:
        """Points (of `source`, or all), oldest first; damaged manifests are skipped (see scan_points)."""
        return self.scan_points(source).points

    def scan_points(self, source: str | None = None) -> PointScan:
        """Points (of `source`, or all), oldest first, and every manifest that did not open.

        A damaged manifest does not stop the others: it is reported (its source is unknown,
        so for every `source`) and can be forgotten with `forget_damaged_points`.
        """
        points: list[Point] = []
        damaged: list[DamagedPoint] = []
        names = sorted(info.name for info in self.storage.list(ObjectKind.POINTS))
        # fetched a few at a time on a store whose requests are costly (engine/prefetch.py)
        for name, stored in fetch_in_order(self.storage, ObjectKind.POINTS, names):
            try:
                point = self._fetched_point(name, stored)
            except ObjectMissingError:
                continue  # forgotten while we listed
            except CorruptionError as err:
                damaged.append(DamagedPoint(name, err.message))
                continue
            if source is None or point.source == source:
                points.append(point)
        return PointScan(sorted(points, key=lambda p: (p.time, p.id)), tuple(damaged))

    def forget_damaged_points(self, *, dry_run: bool = False) -> list[DamagedPoint]:
        """Delete every manifest that does not open (read again right before, so a manifest
        repaired meanwhile stays). Their data goes at the next gc, unless a point needs it."""
        damaged = self.scan_points().damaged
        gone: list[DamagedPoint] = []
        for bad in damaged:
            try:
                self.load_point(bad.id)
                continue
            except ObjectMissingError:
                continue
            except CorruptionError:
                pass
            if not dry_run:
                with contextlib.suppress(ObjectMissingError):
                    self.storage.delete(ObjectKind.POINTS, bad.id)
            gone.append(bad)
        return gone

    def _fetched_point(self, point_id: str, stored: bytes | Exception) -> Point:
        """A point from what `fetch_in_order` got, with `load_point`'s errors."""
        if isinstance(stored, ObjectMissingError):
            raise stored
        if isinstance(stored, Exception) or not valid_point_id(point_id):
            return self.load_point(point_id)  # read again: the same error (or a retry's success) as one by one
        try:
            return decode_point(self.sealer, point_id, stored)
        except CorruptionError:
            if not evict_cached(self.storage, ObjectKind.POINTS, point_id):
                raise
            return self.load_point(point_id)  # a local copy that does not open: the store's

    def load_points(
        self, point_ids: Iterable[str]
    ) -> Iterator[tuple[str, Point | CorruptionError | ObjectMissingError]]:
        """`load_point` of each id in order, a few fetched ahead on a store whose requests are
        costly (check and gc read every manifest): the point, or the error it raised."""
        for name, stored in fetch_in_order(self.storage, ObjectKind.POINTS, point_ids):
            try:
                yield name, self._fetched_point(name, stored)
            except (CorruptionError, ObjectMissingError) as err:
                yield name, err

    def load_point(self, point_id: str) -> Point:
        """One point; CorruptionError names a manifest that does not open."""
        if not valid_point_id(point_id):
            raise CorruptionError(f"points/{point_id}: not a point id (8-64 lowercase hex digits)")
        try:
            stored = self.storage.get(ObjectKind.POINTS, point_id)
        except ValueError as err:
            raise RepositoryError(f"{point_id!r} is not a point id") from err
        return decode_point(self.sealer, point_id, stored)

    def forget_points(self, point_ids: Iterable[str]) -> None:
        """Delete point manifests (their data goes at the next gc); all must exist."""
        ids = list(point_ids)
        missing = [p for p in ids if not self.storage.exists(ObjectKind.POINTS, p)]
        if missing:
            raise RepositoryError(f"no such point(s): {', '.join(missing)}")
        for point_id in ids:
            # a point still under object-lock retention (s3 `objectLock`) stays until it ends
            with contextlib.suppress(ObjectMissingError, ObjectLockedError):
                self.storage.delete(ObjectKind.POINTS, point_id)

    # -- maintenance ------------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, progress: Progress | None = None) -> GcReport:
        from protectctl.engine.gc import collect_garbage

        return collect_garbage(self, dry_run=dry_run, progress=progress)

    def check(self, *, read_data: bool = False, progress: Progress | None = None) -> CheckReport:
        from protectctl.engine.check import check_repository

        return check_repository(self, read_data=read_data, progress=progress)

    def lock(self, *, exclusive: bool, command: str) -> AbstractContextManager[None]:
        """Hold a lease lock for the block; LockedError names a live conflicting holder."""
        return self._locked(exclusive, command)

    @contextlib.contextmanager
    def _locked(self, exclusive: bool, command: str, ignore: set[str] | None = None) -> Iterator[None]:
        lease = LeaseLock(self.storage, self.sealer, exclusive=exclusive, command=command, lease_s=self.lock_lease_s)
        lease.acquire(ignore=ignore)
        with self._mutex:
            self._held.append(lease)
            if self._sessions == 0:
                self._index = None  # what we read before the lock may predate a gc
        try:
            yield
        finally:
            with self._mutex:
                self._held.remove(lease)
            lease.release()

    def held_exclusive_locks(self) -> set[str]:
        with self._mutex:
            return {lease.name for lease in self._held if lease.record.exclusive}


def _encode_config(repo_id: str, params: ChunkerParams, pack_size: int) -> bytes:
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "id": repo_id,
        "chunker": {
            "algorithm": "fastcdc2020",
            "min": params.min_size,
            "avg": params.avg_size,
            "max": params.max_size,
        },
        "pack_size": pack_size,
        "compression": "zstd",
        "encryption": "aes-256-gcm",
        "id_hash": "blake3-keyed",
    }
    return json.dumps(document, sort_keys=True, indent=1).encode()


def _decode_config(raw: bytes, where: str) -> tuple[str, ChunkerParams, int]:
    try:
        d = json.loads(raw)
        if d["format"] != FORMAT_NAME:
            raise ValueError("not a protectctl repository")
        if d["version"] != FORMAT_VERSION:
            raise RepositoryError(
                f"{where}: repository format version {d['version']} is not supported "
                f"(this protectctl reads version {FORMAT_VERSION})"
            )
        c = d["chunker"]
        _require_supported(d, where)
        params = ChunkerParams(min_size=int(c["min"]), avg_size=int(c["avg"]), max_size=int(c["max"]))
        return str(d["id"]), params, int(d["pack_size"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptionError(f"{where}: config is not a protectctl repository config ({err})") from err


# The only algorithms this version reads; a config naming anything else (a typo included) is
# refused at open rather than read with the wrong one.
_SUPPORTED = {"compression": "zstd", "encryption": "aes-256-gcm", "id_hash": "blake3-keyed"}
_CHUNKER = "fastcdc2020"


def _require_supported(d: dict[str, object], where: str) -> None:
    found = {key: d.get(key) for key in _SUPPORTED}
    chunker = d["chunker"]
    found_chunker = chunker.get("algorithm") if isinstance(chunker, dict) else None
    wrong = [f'"{k}": {v!r} (supported: {_SUPPORTED[k]!r})' for k, v in found.items() if v != _SUPPORTED[k]]
    if found_chunker != _CHUNKER:
        wrong.append(f'"chunker.algorithm": {found_chunker!r} (supported: {_CHUNKER!r})')
    if wrong:
        raise RepositoryError(
            f"{where}: the repository config names what this protectctl does not support: {'; '.join(wrong)}",
            hint="the config object may be damaged or edited; it must name the algorithms the repository "
            "was created with",
        )


def _unlock(
    storage: StorageBackend, passphrase: bytes, repo_id: str, key_cache: DerivedKeyCache | None = None
) -> MasterKeys:
    """The master keys from the first key file the passphrase opens.

    A damaged key file does not stop the others; if none opens and some are damaged, the
    error names them (the passphrase may well be right), else it is WrongKeyError.
    """
    names = sorted(info.name for info in storage.list(ObjectKind.KEYS))
    if not names:
        raise RepositoryError(f"{storage.describe()} has no key files; it cannot be opened")
    damaged: list[str] = []
    for name in names:
        try:
            return unwrap_keys(storage.get(ObjectKind.KEYS, name), passphrase, repo_id, name, key_cache)
        except WrongKeyError:
            continue
        except CorruptionError as err:
            damaged.append(err.message)
    if damaged:
        raise CorruptionError(
            f"no key file of {storage.describe()} opens, and {len(damaged)} of {len(names)} are damaged: "
            + "; ".join(damaged),
            hint="restore the damaged key file from a copy (`protectctl keys export` makes one), "
            "or open the repository with another key's passphrase",
        )
    raise WrongKeyError(
        f"the passphrase does not open the repository at {storage.describe()}",
        hint="check the EncryptionKey the Storage refers to",
    )
