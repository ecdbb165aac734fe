"""The index: which pack holds each blob, in memory and as index objects.

An index object is `Sealer.seal(zstd(payload), aad("index"))`, named by the BLAKE3 of its
stored bytes. Payload: b"PIX1", u8 flags, the names of the locks alive when it was
written (only for condemned indexes, see gc), then for each pack its 32-byte name and
its entry table (`pack.ENTRY` records). A *live* index lists blobs writers may dedup
against; a *condemned* index (flag 1) lists blobs in packs gc plans to delete: readers
still find them, writers do not dedup against them. When a pack is named in both, live wins.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from protectctl.engine.crypto import Sealer, aad, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.pack import ENTRY, PackEntry, decode_entries, encode_entries
from protectctl.engine.prefetch import fetch_in_order
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend
from protectctl.errors import CorruptionError, RepositoryError

_MAGIC = b"PIX1"
_FLAG_CONDEMNED = 1
# Decompressed index objects larger than this are refused as junk (~1.7 M blobs, ~2 PB).
_MAX_INDEX_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class IndexEntry:
    pack: str
    entry: PackEntry


@dataclass(slots=True)
class IndexFile:
    """One index object's content."""

    packs: dict[str, list[PackEntry]] = field(default_factory=dict)
    condemned: bool = False
    locks: tuple[str, ...] = ()  # names of locks alive when a condemned index was written


def encode_index(sealer: Sealer, index: IndexFile) -> tuple[str, bytes]:
    """Sealed bytes of an index object and its name."""
    parts = [_MAGIC, bytes([_FLAG_CONDEMNED if index.condemned else 0]), struct.pack(">I", len(index.locks))]
    for lock in index.locks:
        raw = lock.encode("ascii")
        parts.append(struct.pack(">H", len(raw)) + raw)
    parts.append(struct.pack(">I", len(index.packs)))
    for pack, entries in sorted(index.packs.items()):
        parts.append(bytes.fromhex(pack) + struct.pack(">I", len(entries)) + encode_entries(entries))
    payload = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    stored = sealer.seal(payload, aad("index"))
    return content_name(stored), stored


def decode_index(sealer: Sealer, name: str, stored: bytes) -> IndexFile:
    """Verify and parse an index object; raises CorruptionError."""
    what = f"index/{name}"
    if content_name(stored) != name:
        raise CorruptionError(f"{what}: content does not match its name")
    compressed = sealer.open(stored, aad("index"), what)
    try:
        payload = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=_MAX_INDEX_BYTES)
    except zstandard.ZstdError as err:
        raise CorruptionError(f"{what}: damaged compression") from err
    try:
        return _parse_index(payload, what)
    except (struct.error, ValueError, IndexError) as err:
        raise CorruptionError(f"{what}: malformed ({err})") from err


def _parse_index(payload: bytes, what: str) -> IndexFile:
    if payload[:4] != _MAGIC:
        raise CorruptionError(f"{what}: not an index")
    result = IndexFile(condemned=bool(payload[4] & _FLAG_CONDEMNED))
    pos = 5
    (n_locks,) = struct.unpack_from(">I", payload, pos)
    pos += 4
    locks = []
    for _ in range(n_locks):
        (size,) = struct.unpack_from(">H", payload, pos)
        locks.append(payload[pos + 2 : pos + 2 + size].decode("ascii"))
        pos += 2 + size
    result.locks = tuple(locks)
    (n_packs,) = struct.unpack_from(">I", payload, pos)
    pos += 4
    for _ in range(n_packs):
        pack = payload[pos : pos + 32].hex()
        (count,) = struct.unpack_from(">I", payload, pos + 32)
        pos += 36
        result.packs[pack] = decode_entries(payload[pos : pos + count * ENTRY.size], count, what)
        pos += count * ENTRY.size
    if pos != len(payload):
        raise CorruptionError(f"{what}: trailing bytes")
    return result


class Index:
    """Blob id -> location, from live and condemned index objects."""

    def __init__(self) -> None:
        self.live: dict[BlobId, IndexEntry] = {}
        self.condemned: dict[BlobId, IndexEntry] = {}
        self.live_packs: set[str] = set()
        self.files: dict[str, IndexFile] = {}
        self.damaged: dict[str, str] = {}  # index object -> why it was not read (its packs unindexed)
        self.recovered: set[str] = set()  # packs added from their own headers, in memory only

    def add_file(self, name: str, index: IndexFile) -> None:
        self.files[name] = index
        for pack, entries in index.packs.items():
            self.add_pack(pack, entries, condemned=index.condemned)

    def add_pack(self, pack: str, entries: Iterable[PackEntry], *, condemned: bool = False) -> None:
        if not condemned:
            self.live_packs.add(pack)
        target = self.condemned if condemned else self.live
        for entry in entries:
            target.setdefault(entry.blob_id, IndexEntry(pack, entry))

    def lookup(self, blob_id: BlobId) -> IndexEntry | None:
        """Where to read a blob: live first, then packs gc has condemned but not yet deleted."""
        return self.live.get(blob_id) or self.condemned.get(blob_id)

    def add_recovered(self, pack: str, entries: Iterable[PackEntry]) -> None:
        """A pack found through its own header: readers find its blobs, writers do not dedup
        against them (it is in no index object, so gc may still judge it garbage)."""
        self.recovered.add(pack)
        self.add_pack(pack, entries, condemned=True)

    def indexed_packs(self) -> set[str]:
        """Packs any readable index object names."""
        return {pack for index in self.files.values() for pack in index.packs}

    def has_live(self, blob_id: BlobId) -> bool:
        entry = self.live.get(blob_id)
        return entry is not None

    def condemned_packs(self) -> dict[str, tuple[str, ...]]:
        """Condemned pack -> the lock names recorded with it (live wins over condemned)."""
        out: dict[str, tuple[str, ...]] = {}
        for index in self.files.values():
            if index.condemned:
                for pack in index.packs:
                    if pack not in self.live_packs:
                        out[pack] = tuple(sorted(set(out.get(pack, ())) | set(index.locks)))
        return out

    def packs(self) -> Iterator[tuple[str, list[PackEntry], bool]]:
        """(pack, entries, condemned) for every pack named by any index object, live first."""
        seen: set[str] = set()
        for condemned in (False, True):
            for index in self.files.values():
                if index.condemned != condemned:
                    continue
                for pack, entries in index.packs.items():
                    if pack not in seen:
                        seen.add(pack)
                        yield pack, entries, condemned


def load_index(storage: StorageBackend, sealer: Sealer, names: Iterable[str] | None = None) -> Index:
    """Read index objects (all, or `names`) into an Index.

    A damaged object does not stop the others: it is recorded in `Index.damaged` (the packs
    it listed are then unindexed, and found again through their own headers), and callers
    that delete data refuse to while any is recorded. gc writes its consolidated index
    before deleting the ones it replaces, so an object that vanished between list and get
    means a newer one exists: list again and retry.
    """
    for _attempt in range(5):
        listed = list(names) if names is not None else [i.name for i in storage.list(ObjectKind.INDEX)]
        index = Index()
        try:
            # a few at a time on a store whose requests are costly (engine/prefetch.py); index
            # objects can be tens of MiB, so at most 4 are held
            for name, stored in fetch_in_order(storage, ObjectKind.INDEX, listed, limit=4):
                if isinstance(stored, Exception):
                    raise stored
                _add_stored(index, sealer, name, stored)
        except ObjectMissingError:
            if names is not None:
                raise
            continue
        return index
    raise RepositoryError("the index kept changing while it was read; is gc running in a loop?")


def _add_stored(index: Index, sealer: Sealer, name: str, stored: bytes) -> None:
    try:
        index.add_file(name, decode_index(sealer, name, stored))
    except CorruptionError as err:
        index.damaged[name] = err.message
