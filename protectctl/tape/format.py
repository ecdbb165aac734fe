"""The protectctl tape format, version 2 (documented in docs/tape-format.md); version 1 is read.

Owns the byte layout of every record on a cartridge and its cryptography: the clear label
(file 0) carrying the per-cartridge data key wrapped by a key-encryption key, and sealed
records (AES-256-GCM) bound to the cartridge's volume id, barcode, file and record number
and record type, so a record moved, reordered, swapped to another cartridge or altered
fails authentication. No I/O: bytes in, values out (randomness only for keys and nonces).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

import zstandard

from protectctl.engine.crypto import NONCE_SIZE, TAG_SIZE, Sealer, aad
from protectctl.engine.ids import BlobId
from protectctl.engine.pack import decode_body
from protectctl.engine.points import Point, point_from_json, point_to_json
from protectctl.errors import CorruptionError, TapeCorruptionError, TapeError, TapeKeyError

FORMAT_NAME = "protectctl-tape"
FORMAT_VERSION = 2
# 2: blob bodies copied in the repository's encoding (`B` records, no zstd pass of their own)
# and an index of where each blob sits (`I` records, before the trailer). 1: `D` records.
READABLE_VERSIONS = (1, 2)
LABEL_TYPE = b"L"
# Records of ~4 MiB: big enough that per-record costs (framing, GCM tag, a syscall) vanish,
# small enough to hold one record per blob in memory; LTO drives stream at 256 KiB+ blocks.
RECORD_TARGET_BYTES = 4 << 20
_ZSTD_LEVEL = 3
_BLOB_ENTRY = 1 + 32 + 4
_BODY_ENTRY = struct.Struct(">B32sII")  # kind, blob id, raw length, body length
_INDEX_ENTRY = struct.Struct(">32sHI")  # blob id, part, record number in that part's tape file
# what parsing damaged JSON of the right MAC-less shape can raise (labels are in clear; a
# header or trailer that authenticates but was written by a buggy writer): all become TapeErrors
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError, AssertionError, OverflowError, RecursionError)


class RecordType(Enum):
    HEADER = b"H"  # a point segment begins: point manifest, part number
    DATA = b"D"  # tree and data blobs, zstd as a whole (version 1)
    BODIES = b"B"  # tree and data blobs in the repository's encoding (version 2)
    INDEX = b"I"  # where each blob of the copy sits: (id, part, record) (version 2)
    TRAILER = b"T"  # the point's last segment ends: totals
    END_OF_VOLUME = b"V"  # the writer hit end of media; the point continues elsewhere


@dataclass(frozen=True, slots=True)
class Label:
    """File 0 of a cartridge, in clear; its fields are bound into the wrapped key's AAD."""

    barcode: str
    vid: str  # random 32 hex, new at every labelling: a recycled cartridge is a new volume
    pool: str
    key_id: str
    key_name: str
    library: str
    labelled_at: datetime
    wrapped_key: bytes = field(repr=False)

    def identity(self) -> dict[str, object]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "barcode": self.barcode,
            "vid": self.vid,
            "pool": self.pool,
            "key_id": self.key_id,
            "key_name": self.key_name,
            "library": self.library,
            "labelled_at": self.labelled_at.astimezone(UTC).isoformat(),
        }


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def new_label(
    barcode: str, pool: str, key_id: str, key_name: str, kek: bytes, library: str, now: datetime
) -> tuple[Label, bytes]:
    """A fresh label and its data key (random, 32 bytes), wrapped under `kek`."""
    data_key = os.urandom(32)
    unwrapped = Label(barcode, os.urandom(16).hex(), pool, key_id, key_name, library, now, b"")
    wrapped = Sealer(kek).seal(data_key, aad("tape-label", _canonical(unwrapped.identity())))
    return Label(barcode, unwrapped.vid, pool, key_id, key_name, library, now, wrapped), data_key


def unwrap_data_key(label: Label, kek: bytes) -> bytes:
    """The cartridge's data key; WrongKeyError if `kek` is not the label's key or the label was altered."""
    try:
        return Sealer(kek).open(
            label.wrapped_key, aad("tape-label", _canonical(label.identity())), f"label of {label.barcode}"
        )
    except CorruptionError as err:
        raise TapeKeyError(
            f"cartridge {label.barcode}: key {label.key_id} does not open its label (wrong key, or altered)"
        ) from err


def encode_label(label: Label) -> bytes:
    doc = {**label.identity(), "wrapped_key": base64.b64encode(label.wrapped_key).decode()}
    return LABEL_TYPE + json.dumps(doc, sort_keys=True, indent=1).encode()


def decode_label(raw: bytes, where: str) -> Label:
    """Parse a label record; TapeError when it is not a protectctl label of a known version."""
    if not raw.startswith(LABEL_TYPE):
        raise TapeError(f"{where}: the first record is not a protectctl tape label")
    try:
        d = json.loads(raw[1:])
        if d["format"] != FORMAT_NAME:
            raise ValueError("not a protectctl tape")
        if d["version"] not in READABLE_VERSIONS:
            raise TapeError(
                f"{where}: tape format version {d['version']} is not supported "
                f"(this protectctl reads versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        return Label(
            str(d["barcode"]),
            str(d["vid"]),
            str(d["pool"]),
            str(d["key_id"]),
            str(d["key_name"]),
            str(d["library"]),
            _utc(d["labelled_at"]),
            base64.b64decode(d["wrapped_key"]),
        )
    except _MALFORMED as err:
        raise TapeError(f"{where}: damaged or foreign tape label ({err})") from err


class VolumeCipher:
    """Seals and opens the records of one cartridge volume."""

    def __init__(self, label: Label, data_key: bytes) -> None:
        self.label = label
        self._sealer = Sealer(data_key)
        self._vid = label.vid.encode()
        self._barcode = label.barcode.encode()

    def _aad(self, kind: RecordType, file_no: int, record_no: int) -> bytes:
        return aad(
            "tape-record",
            self._vid,
            self._barcode,
            file_no.to_bytes(4, "big"),
            record_no.to_bytes(4, "big"),
            kind.value,
        )

    def seal(self, kind: RecordType, file_no: int, record_no: int, plaintext: bytes | bytearray) -> bytearray:
        # one buffer, sealed in place: a 4 MiB record is not copied twice more to prefix its type
        out = bytearray(1 + NONCE_SIZE + len(plaintext) + TAG_SIZE)
        out[0:1] = kind.value
        self._sealer.seal_into(memoryview(plaintext), self._aad(kind, file_no, record_no), memoryview(out)[1:])
        return out

    def open(self, raw: bytes, file_no: int, record_no: int) -> tuple[RecordType, bytes]:
        """Type and plaintext; TapeCorruptionError naming the cartridge and position."""
        where = f"cartridge {self.label.barcode} file {file_no} record {record_no}"
        kind = record_type(raw, where)
        try:
            return kind, self._sealer.open(memoryview(raw)[1:], self._aad(kind, file_no, record_no), where)
        except CorruptionError as err:
            raise TapeCorruptionError(err.message) from err


def record_type(raw: bytes, where: str) -> RecordType:
    """The record's type byte (in clear, but authenticated: it is part of the AAD)."""
    try:
        return RecordType(raw[:1])
    except ValueError:
        raise TapeCorruptionError(f"{where}: unknown record type {raw[:1]!r} (damaged or tampered)") from None


# -- headers, data records, trailers ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """What opens every segment of a copied point (part 1, 2, ... when it spans cartridges)."""

    point: Point
    part: int
    repository_id: str
    id_key: bytes = field(repr=False)  # to verify blob ids and file hashes without the repository
    retention_s: int
    copied_at: datetime
    previous_barcode: str | None = None  # where part-1 lies, for a continuation

    @property
    def expires(self) -> datetime:
        from datetime import timedelta

        return self.point.time + timedelta(seconds=self.retention_s)


def encode_header(h: SegmentHeader) -> bytes:
    return _canonical(
        {
            "v": FORMAT_VERSION,
            "part": h.part,
            "point": point_to_json(h.point),
            "repository": {"id": h.repository_id, "id_key": base64.b64encode(h.id_key).decode()},
            "retention_s": h.retention_s,
            "copied_at": h.copied_at.astimezone(UTC).isoformat(),
            "previous_barcode": h.previous_barcode,
        }
    )


def decode_header(plain: bytes, where: str) -> SegmentHeader:
    try:
        d = json.loads(plain)
        if d["v"] not in READABLE_VERSIONS:
            raise ValueError(f"header version {d['v']}")
        repo = d["repository"]
        return SegmentHeader(
            point=point_from_json(d["point"]),
            part=int(d["part"]),
            repository_id=str(repo["id"]),
            id_key=base64.b64decode(repo["id_key"]),
            retention_s=int(d["retention_s"]),
            copied_at=_utc(d["copied_at"]),
            previous_barcode=_optional_str(d["previous_barcode"]),
        )
    except _MALFORMED as err:
        raise TapeCorruptionError(f"{where}: malformed point header ({err})") from err


@dataclass(frozen=True, slots=True)
class IndexRun:
    """`count` consecutive `I` records from `record` of the tape file of part `part`."""

    part: int
    record: int
    count: int


@dataclass(frozen=True, slots=True)
class Trailer:
    point_id: str
    parts: int
    blobs: int
    bytes_plain: int
    index: tuple[IndexRun, ...] = ()  # version 2: where the copy's index records are


def encode_trailer(t: Trailer) -> bytes:
    doc: dict[str, object] = {
        "v": FORMAT_VERSION,
        "point_id": t.point_id,
        "parts": t.parts,
        "blobs": t.blobs,
        "bytes_plain": t.bytes_plain,
    }
    if t.index:
        doc["index"] = [[r.part, r.record, r.count] for r in t.index]
    return _canonical(doc)


def decode_trailer(plain: bytes, where: str) -> Trailer:
    try:
        d = json.loads(plain)
        index = tuple(IndexRun(int(p), int(r), int(c)) for p, r, c in d.get("index", []))
        return Trailer(str(d["point_id"]), int(d["parts"]), int(d["blobs"]), int(d["bytes_plain"]), index)
    except _MALFORMED as err:
        raise TapeCorruptionError(f"{where}: malformed point trailer ({err})") from err


def encode_end_of_volume(point_id: str, part: int) -> bytes:
    return _canonical({"v": FORMAT_VERSION, "point_id": point_id, "part": part})


@dataclass(frozen=True, slots=True)
class TapeBlob:
    kind: int  # 0 data, 1 tree (engine.pack.BlobKind values)
    blob_id: BlobId
    data: bytes = field(repr=False)


def encode_blobs(blobs: Sequence[TapeBlob]) -> bytes:
    """A data record's plaintext: zstd(u32 n || n * (kind, id, len) || payloads)."""
    table = bytearray(len(blobs).to_bytes(4, "big"))
    for blob in blobs:
        table += bytes([blob.kind]) + bytes(blob.blob_id) + len(blob.data).to_bytes(4, "big")
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(bytes(table) + b"".join(b.data for b in blobs))


def decode_blobs(plain: bytes, where: str) -> list[TapeBlob]:
    try:
        raw = zstandard.ZstdDecompressor().decompress(plain, max_output_size=64 << 20)
        count = int.from_bytes(raw[:4], "big")
        pos = 4 + count * _BLOB_ENTRY
        out = []
        for i in range(count):
            entry = raw[4 + i * _BLOB_ENTRY : 4 + (i + 1) * _BLOB_ENTRY]
            length = int.from_bytes(entry[33:37], "big")
            out.append(TapeBlob(entry[0], BlobId(entry[1:33]), raw[pos : pos + length]))
            pos += length
        if pos != len(raw) or len(out) != count:
            raise ValueError("blob table does not match the payload")
        return out
    except (zstandard.ZstdError, ValueError, IndexError, MemoryError) as err:
        raise TapeCorruptionError(f"{where}: malformed data record ({err})") from err


def batch_blobs(blobs: Iterable[TapeBlob], target_bytes: int = RECORD_TARGET_BYTES) -> Iterable[list[TapeBlob]]:
    """Group blobs into records of about `target_bytes` (a bigger blob gets a record of its own)."""
    batch: list[TapeBlob] = []
    size = 0
    for blob in blobs:
        if batch and size + len(blob.data) > target_bytes:
            yield batch
            batch, size = [], 0
        batch.append(blob)
        size += len(blob.data)
    if batch:
        yield batch


# -- version 2: bodies and index -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapeBody:
    """A blob as the repository stores it, decrypted but not decoded: `flag || payload`."""

    kind: int  # 0 data, 1 tree
    blob_id: BlobId
    raw_length: int
    body: bytes | memoryview = field(repr=False)

    def plaintext(self, where: str) -> bytes:
        """Decode the body (zstd or stored); TapeCorruptionError when it does not decode."""
        try:
            return decode_body(self.body, self.raw_length, f"{where} (blob {self.blob_id.hex()[:12]})")
        except CorruptionError as err:
            raise TapeCorruptionError(err.message) from err


def encode_bodies(bodies: Sequence[TapeBody]) -> bytes:
    """A `B` record's plaintext: u32 n || n * (kind u8, id, u32 raw length, u32 body length) || bodies.
    No compression pass: the bodies keep the repository's (zstd where it paid)."""
    parts: list[bytes | memoryview] = [len(bodies).to_bytes(4, "big")]
    parts += [_BODY_ENTRY.pack(b.kind, bytes(b.blob_id), b.raw_length, len(b.body)) for b in bodies]
    parts += [b.body for b in bodies]
    return b"".join(parts)


def bodies_layout(entries: Sequence[tuple[int, BlobId, int, int]]) -> tuple[bytearray, list[int]]:
    """A `B` record's plaintext laid out before its bodies are read: the buffer with its table
    filled in, and where each body goes (`entries`: kind, blob id, raw length, body length), so
    each body is decrypted straight into its place (`encode_bodies` without the join)."""
    head = 4 + len(entries) * _BODY_ENTRY.size
    out = bytearray(head + sum(entry[3] for entry in entries))
    out[0:4] = len(entries).to_bytes(4, "big")
    at, pos = [], head
    for i, (kind, blob_id, raw_length, length) in enumerate(entries):
        _BODY_ENTRY.pack_into(out, 4 + i * _BODY_ENTRY.size, kind, bytes(blob_id), raw_length, length)
        at.append(pos)
        pos += length
    return out, at


def decode_bodies(plain: bytes | memoryview, where: str) -> list[TapeBody]:
    """The bodies of a `B` record (views into `plain`); TapeCorruptionError when malformed."""
    view = memoryview(plain)
    try:
        count = int.from_bytes(view[:4], "big")
        pos = 4 + count * _BODY_ENTRY.size
        if pos > len(view):
            raise ValueError("blob table runs past the record")
        out = []
        for i in range(count):
            kind, blob_id, raw_length, length = _BODY_ENTRY.unpack_from(view, 4 + i * _BODY_ENTRY.size)
            out.append(TapeBody(kind, BlobId(blob_id), raw_length, view[pos : pos + length]))
            pos += length
        if pos != len(view):
            raise ValueError("blob table does not match the payload")
        return out
    except (ValueError, struct.error) as err:
        raise TapeCorruptionError(f"{where}: malformed data record ({err})") from err


def encode_index(entries: Sequence[tuple[BlobId, int, int]]) -> bytes:
    """An `I` record's plaintext: u32 n || n * (blob id, u16 part, u32 record)."""
    return len(entries).to_bytes(4, "big") + b"".join(
        _INDEX_ENTRY.pack(bytes(blob_id), part, record) for blob_id, part, record in entries
    )


def decode_index(plain: bytes, where: str) -> list[tuple[BlobId, int, int]]:
    try:
        count = int.from_bytes(plain[:4], "big")
        if len(plain) != 4 + count * _INDEX_ENTRY.size:
            raise ValueError("entry count does not match the record")
        return [(BlobId(b), part, record) for b, part, record in _INDEX_ENTRY.iter_unpack(plain[4:])]
    except (ValueError, struct.error) as err:
        raise TapeCorruptionError(f"{where}: malformed index record ({err})") from err


def index_entries_per_record(record_bytes: int) -> int:
    return max(1, (record_bytes - 4) // _INDEX_ENTRY.size)


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, not {value!r}")
    return value


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("time without a zone")
    return value.astimezone(UTC)
