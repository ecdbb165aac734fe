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
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import zstandard

from protectctl.engine.crypto import Sealer, aad, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.pack import ENTRY, KIND_CODES, PackEntry, decode_entries, encode_entries, kind_from_code
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


# Building the entries of `Index._entry` without their frozen __init__ (same objects, fields set once).
_new = object.__new__
_set_id, _set_kind, _set_offset, _set_length, _set_raw_length = (
    getattr(PackEntry, name).__set__ for name in ("blob_id", "kind", "offset", "length", "raw_length")
)
_set_pack, _set_entry = (getattr(IndexEntry, name).__set__ for name in ("pack", "entry"))
_CODE_KIND = {code: kind_from_code(code, "") for code in KIND_CODES}


@dataclass(slots=True)
class IndexFile:
    """One index object's content, as a writer builds it."""

    packs: dict[str, list[PackEntry]] = field(default_factory=dict)
    condemned: bool = False
    locks: tuple[str, ...] = ()  # names of locks alive when a condemned index was written


class PackTables(Mapping[str, list[PackEntry]]):
    """Pack -> its entries, kept as the index object's raw entry tables and decoded only when
    one is asked for: loading an index then costs no object per blob."""

    __slots__ = ("_raw", "_spans", "_what")

    def __init__(self, raw: bytes, spans: dict[str, tuple[int, int]], what: str) -> None:
        self._raw = raw
        self._spans = spans  # pack -> (offset of its table in raw, entry count)
        self._what = what

    def __getitem__(self, pack: str) -> list[PackEntry]:
        offset, count = self._spans[pack]
        return decode_entries(self._raw[offset : offset + count * ENTRY.size], count, self._what)

    def __contains__(self, pack: object) -> bool:
        return pack in self._spans

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def tables(self) -> Iterator[tuple[str, bytes, int, int]]:
        """(pack, raw, offset, count) for each pack, in the object's order."""
        for pack, (offset, count) in self._spans.items():
            yield pack, self._raw, offset, count


@dataclass(slots=True)
class StoredIndex:
    """One index object's content as read: its entry tables kept raw (`PackTables`)."""

    packs: PackTables
    condemned: bool = False
    locks: tuple[str, ...] = ()


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


def decode_index(sealer: Sealer, name: str, stored: bytes) -> StoredIndex:
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


def _parse_index(payload: bytes, what: str) -> StoredIndex:
    """The structure is checked whole here (sizes, kind codes), so a lookup never meets a
    malformed entry; the entries themselves stay raw."""
    if payload[:4] != _MAGIC:
        raise CorruptionError(f"{what}: not an index")
    condemned = bool(payload[4] & _FLAG_CONDEMNED)
    pos = 5
    (n_locks,) = struct.unpack_from(">I", payload, pos)
    pos += 4
    locks = []
    for _ in range(n_locks):
        (size,) = struct.unpack_from(">H", payload, pos)
        locks.append(payload[pos + 2 : pos + 2 + size].decode("ascii"))
        pos += 2 + size
    (n_packs,) = struct.unpack_from(">I", payload, pos)
    pos += 4
    spans: dict[str, tuple[int, int]] = {}
    for _ in range(n_packs):
        pack = payload[pos : pos + 32].hex()
        (count,) = struct.unpack_from(">I", payload, pos + 32)
        pos += 36
        end = pos + count * ENTRY.size
        if len(pack) != 64 or end > len(payload):
            raise CorruptionError(f"{what}: entry table has the wrong size")
        if payload[pos + 32 : end : ENTRY.size].translate(None, KIND_CODES):
            raise CorruptionError(f"{what}: unknown blob kind")
        spans[pack] = (pos, count)
        pos = end
    if pos != len(payload):
        raise CorruptionError(f"{what}: trailing bytes")
    return StoredIndex(PackTables(payload, spans, what), condemned, tuple(locks))


def _stored_form(index: IndexFile, what: str) -> StoredIndex:
    """A writer's IndexFile in the compact form an Index keeps."""
    parts, spans, pos = [], {}, 0
    for pack, entries in index.packs.items():
        parts.append(encode_entries(entries))
        spans[pack] = (pos, len(entries))
        pos += len(entries) * ENTRY.size
    return StoredIndex(PackTables(b"".join(parts), spans, what), index.condemned, index.locks)


class _Located(Mapping[BlobId, IndexEntry]):
    """A read-only view of one of an Index's id -> location maps."""

    __slots__ = ("_codes", "_index")

    def __init__(self, index: Index, codes: dict[bytes, int]) -> None:
        self._index = index
        self._codes = codes

    def __getitem__(self, blob_id: BlobId) -> IndexEntry:
        return self._index._entry(self._codes[blob_id])

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._codes

    def __iter__(self) -> Iterator[BlobId]:
        return iter(self._codes)  # type: ignore[arg-type]  # the keys are blob ids

    def __len__(self) -> int:
        return len(self._codes)


class Index:
    """Blob id -> location, from live and condemned index objects.

    Compact: the entry tables stay as the index objects' raw bytes; each blob id maps to
    one int, its entry's number counted over all tables (`_starts` gives each table's first
    number), and a PackEntry is decoded only when a blob is looked up. When several tables
    list a blob, the first added wins (within live, within condemned); live wins over condemned.
    """

    def __init__(self) -> None:
        self._live: dict[bytes, int] = {}
        self._condemned: dict[bytes, int] = {}
        self._starts: list[int] = []  # first entry number of each table, ascending
        self._tables: list[tuple[bytes, int, str]] = []  # (raw, offset of the table in raw, pack)
        self._count = 0
        self.live_packs: set[str] = set()
        self.files: dict[str, StoredIndex] = {}
        self.damaged: dict[str, str] = {}  # index object -> why it was not read (its packs unindexed)
        self.recovered: set[str] = set()  # packs added from their own headers, in memory only

    @property
    def live(self) -> Mapping[BlobId, IndexEntry]:
        return _Located(self, self._live)

    @property
    def condemned(self) -> Mapping[BlobId, IndexEntry]:
        return _Located(self, self._condemned)

    def add_file(self, name: str, index: IndexFile | StoredIndex) -> None:
        self.add_files([(name, index)])

    def add_files(self, files: Iterable[tuple[str, IndexFile | StoredIndex]]) -> None:
        """`add_file` for several objects in order; their live tables and their condemned ones
        are each added in one go (one dict update for a whole repository's index)."""
        tables: dict[bool, list[tuple[str, bytes, int, int]]] = {False: [], True: []}
        for name, index in files:
            stored = index if isinstance(index, StoredIndex) else _stored_form(index, f"index/{name}")
            self.files[name] = stored
            tables[stored.condemned] += stored.packs.tables()
        for condemned, listed in tables.items():
            if listed:
                self._add_tables(listed, condemned=condemned)

    def add_pack(self, pack: str, entries: Iterable[PackEntry], *, condemned: bool = False) -> None:
        listed = list(entries)
        self._add_tables([(pack, encode_entries(listed), 0, len(listed))], condemned=condemned)

    def _add_tables(self, tables: Iterable[tuple[str, bytes, int, int]], *, condemned: bool) -> None:
        first = self._count
        ids: list[bytes] = []
        step = ENTRY.size
        for pack, raw, offset, count in tables:
            if not condemned:
                self.live_packs.add(pack)
            self._starts.append(self._count)
            self._tables.append((raw, offset, pack))
            self._count += count
            ids += [raw[at : at + 32] for at in range(offset, offset + count * step, step)]
        target = self._condemned if condemned else self._live
        # reversed: of the ids repeated within these tables, the first one's number is stored last
        numbered = zip(reversed(ids), range(self._count - 1, first - 1, -1), strict=True)
        if not target:
            target.update(numbered)
            return
        fresh = dict(numbered)
        for blob_id in fresh.keys() & target.keys():
            del fresh[blob_id]  # already listed: the first added wins
        target.update(fresh)

    def _entry(self, number: int) -> IndexEntry:
        table = bisect_right(self._starts, number) - 1
        raw, offset, pack = self._tables[table]
        blob_id, code, at, length, raw_length = ENTRY.unpack_from(
            raw, offset + (number - self._starts[table]) * ENTRY.size
        )
        # the fields set through their slots: a frozen dataclass's __init__ costs ~3x more, and a
        # restore looks up every blob (the kind code was checked when the table was read)
        entry = _new(PackEntry)
        _set_id(entry, blob_id)
        _set_kind(entry, _CODE_KIND[code])
        _set_offset(entry, at)
        _set_length(entry, length)
        _set_raw_length(entry, raw_length)
        located = _new(IndexEntry)
        _set_pack(located, pack)
        _set_entry(located, entry)
        return located

    def lookup(self, blob_id: BlobId) -> IndexEntry | None:
        """Where to read a blob: live first, then packs gc has condemned but not yet deleted."""
        number = self._live.get(blob_id)
        if number is None:
            number = self._condemned.get(blob_id)
            if number is None:
                return None
        return self._entry(number)

    def add_recovered(self, pack: str, entries: Iterable[PackEntry]) -> None:
        """A pack found through its own header: readers find its blobs, writers do not dedup
        against them (it is in no index object, so gc may still judge it garbage)."""
        self.recovered.add(pack)
        self.add_pack(pack, entries, condemned=True)

    def indexed_packs(self) -> set[str]:
        """Packs any readable index object names."""
        return {pack for index in self.files.values() for pack in index.packs}

    def has_live(self, blob_id: bytes) -> bool:
        return blob_id in self._live

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
                for pack in index.packs:
                    if pack not in seen:
                        seen.add(pack)
                        yield pack, index.packs[pack], condemned


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
        read: list[tuple[str, IndexFile | StoredIndex]] = []
        try:
            # a few at a time on a store whose requests are costly (engine/prefetch.py); index
            # objects can be tens of MiB, so at most 4 are held
            for name, stored in fetch_in_order(storage, ObjectKind.INDEX, listed, limit=4):
                if isinstance(stored, Exception):
                    raise stored
                try:
                    read.append((name, decode_index(sealer, name, stored)))
                except CorruptionError as err:
                    index.damaged[name] = err.message
        except ObjectMissingError:
            if names is not None:
                raise
            continue
        index.add_files(read)
        return index
    raise RepositoryError("the index kept changing while it was read; is gc running in a loop?")
