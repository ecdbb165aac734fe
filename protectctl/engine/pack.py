"""Blobs and packs: how one blob is sealed, and how blobs are laid out in a pack object.

A pack is `record_1 .. record_n, sealed_header, u32 len(sealed_header)`. Each record is
`Sealer.seal(flag || payload, aad("blob", kind, blob_id))` where flag 0 = stored, 1 = zstd.
The sealed header lists (blob id, kind, offset, length, raw length) for every record, so
a pack describes itself and the index can be rebuilt from packs alone. The pack's object
name is the BLAKE3 of its bytes. Binding the blob id and kind into each record's AAD
means a record copied to another offset, pack or id fails authentication.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import StrEnum

import zstandard

from protectctl.engine.buffers import BlobScratch, Scratch
from protectctl.engine.crypto import NONCE_SIZE, TAG_SIZE, Sealer, aad
from protectctl.engine.ids import BlobId
from protectctl.errors import CorruptionError


class BlobKind(StrEnum):
    DATA = "data"
    TREE = "tree"


_KIND_CODE = {BlobKind.DATA: 0, BlobKind.TREE: 1}
_CODE_KIND = {code: kind for kind, code in _KIND_CODE.items()}
KIND_CODES = bytes(sorted(_CODE_KIND))  # every valid kind code, to check an entry table in bulk

_FLAG_STORED = 0
_FLAG_ZSTD = 1
# zstd level 3: ~300-500 MB/s per core on text with ratios close to level 9; higher
# levels cost 3-10x CPU for a few percent. Random data is detected and stored as is.
_ZSTD_LEVEL = 3

ENTRY = struct.Struct(">32sBIII")  # blob id, kind, offset, length, raw length
_HEADER_MAGIC = b"PPK1"
_TRAILER = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: BlobId
    kind: BlobKind
    offset: int
    length: int  # stored (sealed) length
    raw_length: int  # plaintext length


def kind_from_code(code: int, what: str) -> BlobKind:
    try:
        return _CODE_KIND[code]
    except KeyError as err:
        raise CorruptionError(f"{what}: unknown blob kind {code}") from err


# aad("blob", kind code, id) up to the id's length field: built once, not per record.
_BLOB_AAD_PREFIX = {kind: aad("blob", bytes([code])) for kind, code in _KIND_CODE.items()}


def blob_aad(kind: BlobKind, blob_id: BlobId) -> bytes:
    """aad("blob", bytes([kind code]), blob_id), from a prefix built once."""
    return _BLOB_AAD_PREFIX[kind] + len(blob_id).to_bytes(4, "big") + blob_id


# One compressor and decompressor per thread: a zstd context costs ~1-3 MiB to set up at
# level 3, so a fresh one per blob churns the allocator (and RSS) for nothing.
_local = threading.local()


def _compressor(level: int | None = None) -> zstandard.ZstdCompressor:
    if level is not None and level != _ZSTD_LEVEL:
        return _leveled(level)
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return cctx


# Levels a caller may ask for one blob (`BlobWriter.add(level=)`), e.g. for a bulk stream whose content
# compresses about as well at a cheaper level (a database backup stream: level 1 takes ~35% of
# level 3's CPU for a size within 1 %, docs/mariadb.md). The record format is the same zstd frame whatever the level.
LEVELS = range(1, 20)


def _leveled(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "leveled", None)
    if cache is None:
        cache = _local.leveled = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level)
    return cctx


def _sampler() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "sampler", None)
    if cctx is None:
        cctx = _local.sampler = zstandard.ZstdCompressor(level=1)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


# Incompressible data (media, archives, encrypted files) is detected from three samples
# compressed at level 1 (~0.1 ms) instead of a whole level-3 pass over the chunk (~3 ms/MiB
# here, zstd gains nothing on such data anyway). A chunk is stored as is only when every
# sample stays above this ratio; anything else gets the full compression attempt.
_SAMPLE = 16 << 10
_SAMPLE_RATIO = 0.97


def _looks_incompressible(data: memoryview) -> bool:
    if len(data) < 8 * _SAMPLE:
        return False
    sampler = _sampler()
    for start in (0, (len(data) - _SAMPLE) // 2, len(data) - _SAMPLE):
        if len(sampler.compress(data[start : start + _SAMPLE])) < _SAMPLE * _SAMPLE_RATIO:
            return False
    return True


class _Sink:
    """A zstd stream_writer target that fills a fixed view and notes when it overflows."""

    __slots__ = ("over", "pos", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0
        self.over = False

    def write(self, chunk: bytes) -> int:
        end = self.pos + len(chunk)
        if end > len(self.view):
            self.over = True
        elif not self.over:
            self.view[self.pos : end] = chunk
        self.pos = end
        return len(chunk)


def frame(data: bytes | bytearray | memoryview, into: Scratch | None = None) -> memoryview:
    """A private copy of `data` behind a stored-flag byte (in `into`, reused), for `blob_body`."""
    framed = (into or Scratch()).view(1 + len(data))
    framed[1:] = data
    return framed


def blob_body(framed: memoryview, out: Scratch | None = None, level: int | None = None) -> memoryview:
    """The plaintext of a record from `frame(data)`: flag 1 || zstd(data), written into `out`,
    when that is smaller; else `framed` itself (flag 0 || data, no copy). `level`: zstd's
    (LEVELS), default the repository's.

    Thread-safe (a compressor per thread); zstd releases the GIL, so callers run this in a pool.
    """
    framed[0] = _FLAG_STORED
    data = framed[1:]
    if _looks_incompressible(data):
        return framed
    body = (out or Scratch()).view(len(framed))
    sink = _Sink(body[1 : len(data)])  # compressed must be smaller than data to be worth it
    # _Sink is the only file-like method stream_writer calls (write); not a full IO[bytes].
    with _compressor(level).stream_writer(sink, size=len(data), closefd=False) as writer:  # type: ignore[arg-type]
        writer.write(data)
    if sink.over:
        return framed
    body[0] = _FLAG_ZSTD
    return body[: 1 + sink.pos]


def small_body(data: bytes | bytearray | memoryview, level: int | None = None) -> bytes:
    """`blob_body` for a small blob, in one call and in the caller's thread: flag 1 || zstd(data)
    when that is smaller, else flag 0 || data. Same record format (the frame records the content
    size either way); for blobs of a few KiB a pool hand-off costs more than the compression."""
    compressed = _compressor(level).compress(data)
    if len(compressed) < len(data):
        return b"\x01" + compressed
    return b"\x00" + bytes(data)


def record_size(body_length: int) -> int:
    """Stored size of a record whose plaintext (flag included) has `body_length` bytes."""
    return NONCE_SIZE + body_length + TAG_SIZE


def seal_record_into(
    sealer: Sealer, kind: BlobKind, blob_id: BlobId, body: bytes | memoryview, out: memoryview
) -> None:
    """Encrypt `body` (from `blob_body`) into `out`, which is exactly `record_size(len(body))` long."""
    sealer.seal_into(body, blob_aad(kind, blob_id), out)


def open_blob(sealer: Sealer, entry: PackEntry, stored: bytes | memoryview, what: str) -> bytes:
    """Decrypt and decompress one record; raises CorruptionError naming `what`."""
    return decode_body(sealer.open(stored, blob_aad(entry.kind, entry.blob_id), what), entry.raw_length, what)


def open_body(sealer: Sealer, entry: PackEntry, stored: bytes | memoryview, what: str) -> bytes:
    """Decrypt one record without decoding it: its body, `flag || payload` (for a copy that
    keeps the compression, as a tape copy does); raises CorruptionError naming `what`."""
    return sealer.open(stored, blob_aad(entry.kind, entry.blob_id), what)


def decode_body(body: bytes | memoryview, raw_length: int, what: str) -> bytes:
    """A blob's plaintext from its body (`flag || payload`); CorruptionError naming `what`."""
    flag = body[0] if len(body) else -1
    if flag == _FLAG_STORED:
        data = bytes(body[1:])
    elif flag == _FLAG_ZSTD:
        try:
            data = _decompressor().decompress(memoryview(body)[1:], max_output_size=raw_length)
        except zstandard.ZstdError as err:
            raise CorruptionError(f"{what}: zstd data is damaged") from err
    else:
        raise CorruptionError(f"{what}: unknown blob encoding")
    if len(data) != raw_length:
        raise CorruptionError(f"{what}: length {len(data)} differs from the index's {raw_length}")
    return data


def open_blob_into(
    sealer: Sealer, entry: PackEntry, stored: bytes | memoryview, scratch: BlobScratch, what: str
) -> memoryview:
    """`open_blob` into `scratch`'s buffers: no allocation per blob. The view is valid until
    the next use of `scratch`."""
    plain = scratch.plain.view(max(len(stored) - NONCE_SIZE - TAG_SIZE, 0))
    sealer.open_into(stored, blob_aad(entry.kind, entry.blob_id), plain, what)
    return decode_body_into(plain, entry.raw_length, scratch, what)


def decode_body_into(body: memoryview, raw_length: int, scratch: BlobScratch, what: str) -> memoryview:
    """`decode_body` into `scratch.out` (a stored body: a view of `body` itself); no allocation.
    The view is valid until the next use of `scratch` (or as long as `body`)."""
    plain = body
    flag = plain[0] if len(plain) else -1
    if flag == _FLAG_STORED:
        data = plain[1:]
    elif flag == _FLAG_ZSTD:
        data = scratch.out.view(raw_length)
        try:
            reader = _decompressor().stream_reader(plain[1:])
            got = 0
            while got < len(data):
                n = reader.readinto(data[got:])
                if not n:
                    break
                got += n
            if got != len(data) or reader.read(1):
                raise CorruptionError(f"{what}: length differs from the index's {raw_length}")
        except zstandard.ZstdError as err:
            raise CorruptionError(f"{what}: zstd data is damaged") from err
    else:
        raise CorruptionError(f"{what}: unknown blob encoding")
    if len(data) != raw_length:
        raise CorruptionError(f"{what}: length {len(data)} differs from the index's {raw_length}")
    return data


def encode_entries(entries: list[PackEntry]) -> bytes:
    parts = [ENTRY.pack(e.blob_id, _KIND_CODE[e.kind], e.offset, e.length, e.raw_length) for e in entries]
    return b"".join(parts)


def decode_entries(raw: bytes, count: int, what: str) -> list[PackEntry]:
    if len(raw) != count * ENTRY.size:
        raise CorruptionError(f"{what}: entry table has the wrong size")
    entries = []
    for blob_id, code, offset, length, raw_length in ENTRY.iter_unpack(raw):
        entries.append(PackEntry(BlobId(blob_id), kind_from_code(code, what), offset, length, raw_length))
    return entries


def sealed_header_size(count: int) -> int:
    """Bytes `seal_pack_header` produces for `count` entries, trailer included."""
    return NONCE_SIZE + len(_HEADER_MAGIC) + 4 + count * ENTRY.size + TAG_SIZE + _TRAILER.size


def seal_pack_header(sealer: Sealer, entries: list[PackEntry]) -> bytes:
    """The pack's tail: sealed header plus its length."""
    plain = _HEADER_MAGIC + struct.pack(">I", len(entries)) + encode_entries(entries)
    sealed = sealer.seal(plain, aad("pack-header"))
    return sealed + _TRAILER.pack(len(sealed))


def header_length(tail: bytes, pack_size: int, what: str) -> int:
    """Length of the sealed header, read from the last 4 bytes of the pack."""
    if len(tail) < _TRAILER.size or pack_size < _TRAILER.size:
        raise CorruptionError(f"{what}: too short to be a pack")
    (length,) = _TRAILER.unpack(tail[-_TRAILER.size :])
    if length + _TRAILER.size > pack_size:
        raise CorruptionError(f"{what}: header length {length} exceeds the pack")
    return int(length)


TRAILER_SIZE = _TRAILER.size


def open_pack_header(sealer: Sealer, sealed: bytes, pack_size: int, what: str) -> list[PackEntry]:
    """Decrypt and validate a pack header; raises CorruptionError."""
    plain = sealer.open(sealed, aad("pack-header"), what)
    if plain[:4] != _HEADER_MAGIC or len(plain) < 8:
        raise CorruptionError(f"{what}: not a pack header")
    (count,) = struct.unpack(">I", plain[4:8])
    entries = decode_entries(plain[8:], count, what)
    limit = pack_size - len(sealed) - TRAILER_SIZE
    for entry in entries:
        if entry.offset + entry.length > limit:
            raise CorruptionError(f"{what}: an entry points past the pack's records")
    return entries
