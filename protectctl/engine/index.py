"""The index: which pack holds each blob, in memory and as index objects.

An index object is `Sealer.seal(zstd(payload), aad("index"))`, named by the BLAKE3 of its
stored bytes. Payload: b"PIX1", u8 flags, the names of the locks alive when it was
written (only for condemned indexes, see gc), then for each pack its 32-byte name and
its entry table (`pack.ENTRY` records). A *live* index lists blobs writers may dedup
against; a *condemned* index (flag 1) lists blobs in packs gc plans to delete: readers
still find them, writers do not dedup against them. When a pack is named in both, live wins.

An object of at least SORTED_MIN_ENTRIES entries (flag 2) ends with a directory of its
entries in blob id order: u8 bits, 2^bits u32 counts (a fan-out, as git's: entry i counts
the entries whose id's first `bits` bits are <= i; ~8 entries a bucket) and one u32 per
entry, the payload offset of its record. A reader then finds a blob
by binary search in the raw payload, so loading a big index costs no object per blob and a
sync that looks up few blobs pays for few (`_Sorted`); objects without one (small, or
written before) are kept in a dict, as are the tables a writer adds in memory.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate

import zstandard

from protectctl.engine.crypto import Sealer, aad, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.pack import ENTRY, KIND_CODES, PackEntry, decode_entries, encode_entries, kind_from_code
from protectctl.engine.prefetch import fetch_in_order
from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend
from protectctl.errors import CorruptionError, RepositoryError

_MAGIC = b"PIX1"
_FLAG_CONDEMNED = 1
_FLAG_SORTED = 2  # an id-ordered directory of the entries follows the tables
# Objects smaller than this get no directory: they are kept in a dict (a sync's object lists
# a few hundred blobs; a first backup's, gc's and repair's up to ENTRIES_PER_INDEX).
SORTED_MIN_ENTRIES = 4096
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
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

    __slots__ = ("raw", "spans", "what")

    def __init__(self, raw: bytes, spans: dict[str, tuple[int, int]], what: str) -> None:
        self.raw = raw
        self.spans = spans  # pack -> (offset of its table in raw, entry count)
        self.what = what

    def __getitem__(self, pack: str) -> list[PackEntry]:
        offset, count = self.spans[pack]
        return decode_entries(self.raw[offset : offset + count * ENTRY.size], count, self.what)

    def __contains__(self, pack: object) -> bool:
        return pack in self.spans

    def __iter__(self) -> Iterator[str]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def tables(self) -> Iterator[tuple[str, bytes, int, int]]:
        """(pack, raw, offset, count) for each pack, in the object's order."""
        for pack, (offset, count) in self.spans.items():
            yield pack, self.raw, offset, count


@dataclass(slots=True)
class StoredIndex:
    """One index object's content as read: its entry tables kept raw (`PackTables`)."""

    packs: PackTables
    condemned: bool = False
    locks: tuple[str, ...] = ()
    directory: int = -1  # offset of the id-ordered directory in the payload, -1: none


def encode_index(sealer: Sealer, index: IndexFile) -> tuple[str, bytes]:
    """Sealed bytes of an index object and its name."""
    entries_count = sum(map(len, index.packs.values()))
    flags = (_FLAG_CONDEMNED if index.condemned else 0) | (_FLAG_SORTED if entries_count >= SORTED_MIN_ENTRIES else 0)
    parts = [_MAGIC, bytes([flags]), struct.pack(">I", len(index.locks))]
    for lock in index.locks:
        raw = lock.encode("ascii")
        parts.append(struct.pack(">H", len(raw)) + raw)
    parts.append(struct.pack(">I", len(index.packs)))
    ids: list[bytes] = []
    offsets: list[int] = []
    pos = sum(map(len, parts))
    step = ENTRY.size
    for pack, entries in sorted(index.packs.items()):
        parts.append(bytes.fromhex(pack) + struct.pack(">I", len(entries)) + encode_entries(entries))
        pos += 36
        ids += [e.blob_id for e in entries]
        offsets += range(pos, pos + len(entries) * step, step)
        pos += len(entries) * step
    if flags & _FLAG_SORTED:
        parts.append(_directory(ids, offsets))
    payload = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    stored = sealer.seal(payload, aad("index"))
    return content_name(stored), stored


def _directory(ids: list[bytes], offsets: list[int]) -> bytes:
    """The fan-out and the record offsets in id order (of equal ids, the first table's first, so a
    binary search finds the entry that wins). Each id is sorted with its offset appended (big
    endian: ties go by offset), so the sorted list's tails are the directory as it is stored,
    and each fan-out count is a binary search for the bucket's end (C loops, ~1 µs an entry)."""
    keyed = sorted([blob_id + at.to_bytes(4, "big") for blob_id, at in zip(ids, offsets, strict=True)])
    bits = _fanout_bits(len(ids))
    shift = 32 - bits
    ends = [bisect_left(keyed, (bucket << shift).to_bytes(4, "big")) for bucket in range(1, 1 << bits)]
    fanout = struct.pack(f">{1 << bits}I", *ends, len(ids))
    return bytes([bits]) + fanout + b"".join([key[32:] for key in keyed])


def _fanout_bits(count: int) -> int:
    return max(8, min(24, (count // 8).bit_length()))


def verify_directory(stored: StoredIndex) -> str | None:
    """Why an object's sorted directory is not what `encode_index` writes (each entry listed
    once, in id order, equal ids in table order, the fan-out counting them); None when it is,
    or when there is none. `check` runs it over every object; readers check only what a search
    meets, so a wrong directory would make them miss blobs (re-stored, or reported missing)."""
    if stored.directory < 0:
        return None
    raw, step = stored.packs.raw, ENTRY.size
    valid = [at for offset, count in stored.packs.spans.values() for at in range(offset, offset + count * step, step)]
    bits = raw[stored.directory]
    fanout_at = stored.directory + 1
    offsets = struct.unpack_from(f">{len(valid)}I", raw, fanout_at + 4 * (1 << bits))
    if sorted(offsets) != sorted(valid):
        return "its sorted directory does not list each entry once"
    keys = [(raw[at : at + 32], at) for at in offsets]
    if any(a > b for a, b in zip(keys, keys[1:], strict=False)):
        return "its sorted directory is not in blob id order"
    counts = [0] * (1 << bits)
    shift = 32 - bits
    for blob_id, _at in keys:
        counts[int.from_bytes(blob_id[:4], "big") >> shift] += 1
    if list(accumulate(counts)) != list(struct.unpack_from(f">{1 << bits}I", raw, fanout_at)):
        return "its sorted directory's fan-out does not count its entries"
    return None


def decode_index(sealer: Sealer, name: str, stored: bytes) -> StoredIndex:
    """Verify and parse an index object; raises CorruptionError."""
    return _decode_opened(name, _open_index(sealer, name, stored))


def _open_index(sealer: Sealer, name: str, stored: bytes) -> bytes:
    """An index object checked against its name and decrypted (still compressed)."""
    what = f"index/{name}"
    if content_name(stored) != name:
        raise CorruptionError(f"{what}: content does not match its name")
    return sealer.open(stored, aad("index"), what)


def _decode_opened(name: str, compressed: bytes) -> StoredIndex:
    what = f"index/{name}"
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
    total = 0
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
        total += count
        pos = end
    directory = -1
    if payload[4] & _FLAG_SORTED:
        # the offsets themselves are checked where a search lands (`_Sorted.find`)
        # the fan-out and the offsets themselves are checked where a search uses them (`_Sorted.find`)
        directory = pos
        bits = payload[pos] if pos < len(payload) else 0
        pos += 1 + 4 * (1 << bits) + 4 * total
        if (
            bits != _fanout_bits(total)
            or pos > len(payload)
            or _U32.unpack_from(payload, pos - 4 * total - 4)[0] != total
        ):
            raise CorruptionError(f"{what}: malformed sorted directory")
    if pos != len(payload):
        raise CorruptionError(f"{what}: trailing bytes")
    return StoredIndex(PackTables(payload, spans, what), condemned, tuple(locks), directory)


def _stored_form(index: IndexFile, what: str) -> StoredIndex:
    """A writer's IndexFile in the compact form an Index keeps."""
    parts, spans, pos = [], {}, 0
    for pack, entries in index.packs.items():
        parts.append(encode_entries(entries))
        spans[pack] = (pos, len(entries))
        pos += len(entries) * ENTRY.size
    return StoredIndex(PackTables(b"".join(parts), spans, what), index.condemned, index.locks)


def _located(raw: bytes, at: int, pack: str) -> IndexEntry:
    """The IndexEntry of the record at `at` in `raw`."""
    blob_id, code, offset, length, raw_length = ENTRY.unpack_from(raw, at)
    # the fields set through their slots: a frozen dataclass's __init__ costs ~3x more, and a
    # restore looks up every blob (the kind code was checked when the table was read)
    entry = _new(PackEntry)
    _set_id(entry, blob_id)
    _set_kind(entry, _CODE_KIND[code])
    _set_offset(entry, offset)
    _set_length(entry, length)
    _set_raw_length(entry, raw_length)
    located = _new(IndexEntry)
    _set_pack(located, pack)
    _set_entry(located, entry)
    return located


class _Sorted:
    """One index object with a directory: a blob is found by binary search in its raw payload
    (a fan-out bucket, then ~3 comparisons), nothing built at load. Once `build` is called
    (the Index decides, `Index._probed`), from a dict of its ids, as an object without one."""

    __slots__ = (
        "_base",
        "_offsets",
        "_dict",
        "_ends",
        "_packs",
        "_raw",
        "_shift",
        "_starts",
        "_what",
        "count",
    )

    def __init__(self, stored: StoredIndex) -> None:
        self._raw = raw = stored.packs.raw
        self._what = stored.packs.what
        bits = raw[stored.directory]
        self._shift = 32 - bits
        self._base = stored.directory + 1  # the fan-out
        self._offsets = self._base + 4 * (1 << bits)
        self.count = _U32.unpack_from(raw, self._base + 4 * ((1 << bits) - 1))[0]
        tables = sorted(stored.packs.spans.items(), key=lambda item: item[1][0])
        self._starts = [offset for _pack, (offset, _count) in tables]
        self._ends = [offset + count * ENTRY.size for _pack, (offset, count) in tables]
        self._packs = [pack for pack, _span in tables]
        self._dict: dict[bytes, int] | None = None

    def find(self, blob_id: bytes) -> int:
        """The offset of the first record listing `blob_id` in the payload, or -1."""
        if self._dict is not None:
            return self._dict.get(blob_id, -1)
        if len(blob_id) != 32:
            return -1
        raw, unpack = self._raw, _U32.unpack_from
        bucket = int.from_bytes(blob_id[:4], "big") >> self._shift
        base = self._offsets
        if bucket:
            lo, hi = _U32X2.unpack_from(raw, self._base + 4 * bucket - 4)
        else:
            lo, hi = 0, unpack(raw, self._base)[0]
        end = hi = min(hi, self.count)  # (a damaged fan-out then only misses, never reads astray)
        while lo < hi:
            mid = (lo + hi) >> 1
            (at,) = unpack(raw, base + 4 * mid)
            if raw[at : at + 32] < blob_id:
                lo = mid + 1
            else:
                hi = mid
        if lo >= end:
            return -1
        (at,) = unpack(raw, base + 4 * lo)
        return at if raw[at : at + 32] == blob_id else -1

    def build(self) -> None:
        """Answer from a dict of the ids from now on (what an object without a directory costs)."""
        if self._dict is None:
            self._dict = self._built()

    def _built(self) -> dict[bytes, int]:
        raw, step = self._raw, ENTRY.size
        ats = [at for start, end in zip(self._starts, self._ends, strict=True) for at in range(start, end, step)]
        # reversed: of ids listed twice, the first table's offset is stored last (it wins)
        return {raw[at : at + 32]: at for at in reversed(ats)}

    def entry(self, at: int) -> IndexEntry:
        table = bisect_right(self._starts, at) - 1
        if table < 0 or at >= self._ends[table] or (at - self._starts[table]) % ENTRY.size:
            raise CorruptionError(f"{self._what}: the sorted directory points outside the tables")
        return _located(self._raw, at, self._packs[table])

    def ids(self) -> Iterator[bytes]:
        raw, step = self._raw, ENTRY.size
        for start, end in zip(self._starts, self._ends, strict=True):
            for at in range(start, end, step):
                yield raw[at : at + 32]


# One searchable part of an Index: a dict (blob id -> entry number, see Index) or a _Sorted object.
_Segment = dict[bytes, int] | _Sorted


class _Located(Mapping[BlobId, IndexEntry]):
    """A read-only view of an Index's live or condemned blobs."""

    __slots__ = ("_index", "_segments")

    def __init__(self, index: Index, segments: list[_Segment]) -> None:
        self._index = index
        self._segments = segments

    def __getitem__(self, blob_id: BlobId) -> IndexEntry:
        located = self._index._find(self._segments, blob_id)
        if located is None:
            raise KeyError(blob_id)
        return located

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and self._index._find(self._segments, blob_id) is not None

    def __iter__(self) -> Iterator[BlobId]:
        seen: set[bytes] = set()
        for segment in self._segments:
            for blob_id in segment if isinstance(segment, dict) else segment.ids():
                if blob_id not in seen:
                    seen.add(blob_id)
                    yield BlobId(blob_id)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Index:
    """Blob id -> location, from live and condemned index objects.

    Compact: the entry tables stay as the index objects' raw bytes. An object with a sorted
    directory is searched in place (`_Sorted`); the others' blob ids each map to one int in a
    dict, their entry's number counted over all such tables (`_starts` gives each table's
    first number). A PackEntry is decoded only when a blob is looked up. Live and condemned
    are each a list of such segments, searched in the order they were added: when several
    tables list a blob, the first added wins (within live, within condemned); live wins over
    condemned.
    """

    def __init__(self) -> None:
        self._live: list[_Segment] = []
        self._condemned: list[_Segment] = []
        self._starts: list[int] = []  # first entry number of each dict table, ascending
        self._tables: list[tuple[bytes, int, str]] = []  # (raw, offset of the table in raw, pack)
        self._count = 0
        # Searches in _Sorted objects left before they all build their dicts: once a run has
        # searched 1/16 as often as they have entries (a backup of many new files, or a full
        # walk's `has_blobs` of every file, against a big repository), ~1/3 of what the dicts
        # cost (~0.45 µs an entry; a search ~2-3 µs) has gone into searching and they pay; a sync
        # of few changes does not get there (10 changed directories of 1,000 files: ~10,000
        # searches; 200,000 blobs allow 12,500, 1M 62,500).
        self._probes_left = 64
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
        """`add_file` for several objects in order; the tables of consecutive objects without a
        directory are added in one go (one dict update for many small objects)."""
        tables: dict[bool, list[tuple[str, bytes, int, int]]] = {False: [], True: []}
        for name, index in files:
            stored = index if isinstance(index, StoredIndex) else _stored_form(index, f"index/{name}")
            self.files[name] = stored
            if stored.directory < 0:
                tables[stored.condemned] += stored.packs.tables()
                continue
            if tables[stored.condemned]:
                self._add_tables(tables[stored.condemned], condemned=stored.condemned)
                tables[stored.condemned] = []
            if not stored.condemned:
                self.live_packs.update(stored.packs)
            searched = _Sorted(stored)
            self._probes_left += searched.count >> 4
            if self._probes_left > 1 << 61:
                searched.build()  # the others have built theirs: this run looks up much
            (self._condemned if stored.condemned else self._live).append(searched)
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
        segments = self._condemned if condemned else self._live
        if not segments or not isinstance(segments[-1], dict):
            segments.append({})
        target = segments[-1]
        assert isinstance(target, dict)
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
        return _located(raw, offset + (number - self._starts[table]) * ENTRY.size, pack)

    def _find(self, segments: list[_Segment], blob_id: bytes) -> IndexEntry | None:
        for segment in segments:
            if isinstance(segment, dict):
                number = segment.get(blob_id)
                if number is not None:
                    return self._entry(number)
            else:
                self._probed()
                at = segment.find(blob_id)
                if at >= 0:
                    return segment.entry(at)
        return None

    def _probed(self) -> None:
        self._probes_left -= 1
        if self._probes_left <= 0:  # (<=: two threads may have counted down past 0 at once)
            self._probes_left = 1 << 62  # built once: never again
            for segment in (*self._live, *self._condemned):
                if isinstance(segment, _Sorted):
                    segment.build()

    def lookup(self, blob_id: BlobId) -> IndexEntry | None:
        """Where to read a blob: live first, then packs gc has condemned but not yet deleted."""
        return self._find(self._live, blob_id) or self._find(self._condemned, blob_id)

    def add_recovered(self, pack: str, entries: Iterable[PackEntry]) -> None:
        """A pack found through its own header: readers find its blobs, writers do not dedup
        against them (it is in no index object, so gc may still judge it garbage)."""
        self.recovered.add(pack)
        self.add_pack(pack, entries, condemned=True)

    def indexed_packs(self) -> set[str]:
        """Packs any readable index object names."""
        return {pack for index in self.files.values() for pack in index.packs}

    def has_live(self, blob_id: bytes) -> bool:
        for segment in self._live:  # most often one dict, or one _Sorted and one dict
            if isinstance(segment, dict):
                if blob_id in segment:
                    return True
            else:
                self._probed()
                if segment.find(blob_id) >= 0:
                    return True
        return False

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


def load_index(
    storage: StorageBackend,
    sealer: Sealer,
    names: Iterable[str] | None = None,
    *,
    known: Mapping[str, StoredIndex] | None = None,
) -> Index:
    """Read index objects (all, or `names`) into an Index.

    A damaged object does not stop the others: it is recorded in `Index.damaged` (the packs
    it listed are then unindexed, and found again through their own headers), and callers
    that delete data refuse to while any is recorded. gc writes its consolidated index
    before deleting the ones it replaces, so an object that vanished between list and get
    means a newer one exists: list again and retry.

    `known`: objects already read (an earlier Index's `files`); an object is named by the
    hash of its content, so one listed again is taken from there, not fetched and decoded.
    """
    known = known or {}
    for _attempt in range(5):
        listed = list(names) if names is not None else [i.name for i in storage.list(ObjectKind.INDEX)]
        index = Index()
        fetched: dict[str, StoredIndex] = {}
        try:
            # a few at a time on a store whose requests are costly (engine/prefetch.py); index
            # objects can be tens of MiB, so at most 4 are held
            missing = [name for name in listed if name not in known]
            for name, stored in fetch_in_order(storage, ObjectKind.INDEX, missing, limit=4):
                if isinstance(stored, Exception):
                    raise stored
                try:
                    # `decode_index` in two steps, the sealed bytes let go in between: a
                    # million-blob object is ~40 MB sealed, ~40 MB opened, ~49 MB decompressed
                    opened = _open_index(sealer, name, stored)
                    del stored
                    fetched[name] = _decode_opened(name, opened)
                except CorruptionError as err:
                    index.damaged[name] = err.message
        except ObjectMissingError:
            if names is not None:
                raise
            continue
        index.add_files((name, known.get(name) or fetched[name]) for name in listed if name not in index.damaged)
        return index
    raise RepositoryError("the index kept changing while it was read; is gc running in a loop?")
