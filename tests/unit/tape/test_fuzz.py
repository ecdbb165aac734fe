"""Fuzz: random and mutated bytes fed to tape records and to a cartridge's tape files.

Whatever the bytes, reading them (label, record authentication, header/trailer/data decoding,
the cartridge scan behind `tape inventory --rebuild` and `run verify`, the restore reader)
either succeeds or raises a TapeError: a clear message, never an internal error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point, PointStats
from protectctl.errors import TapeError
from protectctl.tape.catalog import Copy, Location, LocationKind, Part
from protectctl.tape.format import (
    RecordType,
    SegmentHeader,
    TapeBlob,
    Trailer,
    VolumeCipher,
    decode_blobs,
    decode_bodies,
    decode_header,
    decode_index,
    decode_label,
    decode_trailer,
    encode_blobs,
    encode_header,
    encode_label,
    encode_trailer,
    new_label,
)
from protectctl.tape.inventory import confirm, leftovers, scan_volume, used_files, whole_copies
from protectctl.tape.library import VirtualLibrary
from protectctl.tape.reader import TapePointReader
from protectctl.tape.volume import Volume, open_volume, write_label

T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
KEK = bytes(range(32))
ID_KEY = bytes(32)
BARCODE = "PT0001L9"
CAPACITY = 1 << 20
FUZZ = settings(
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _point(point_id: str) -> Point:
    return Point(point_id, "docs/home", T0, "full", None, None, PointStats(files=1), True, host="h")


def _blobs(seed: int, count: int) -> list[TapeBlob]:
    out = []
    for i in range(count):
        data = bytes([seed, i]) * (50 + 40 * i)
        out.append(TapeBlob(0, BlobId(blake3.blake3(data, key=ID_KEY).digest()), data))
    return out


def _build(root: Path) -> Copy:
    """A cartridge with a whole one-part copy (file 1) and a partial segment (file 2, no filemark)."""
    lib = VirtualLibrary(root, slots=2, drives=1, capacity_bytes=CAPACITY)
    lib.add_cartridge(BARCODE)
    drive = lib.load(BARCODE)
    cipher = write_label(drive, "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    volume = Volume(drive, cipher)
    header = SegmentHeader(_point("a" * 32), 1, "repo", ID_KEY, 86400, T0)
    volume.write(RecordType.HEADER, encode_header(header))
    blobs = _blobs(1, 5)
    for batch in (blobs[:2], blobs[2:]):
        volume.write(RecordType.DATA, encode_blobs(batch))
    volume.write(RecordType.TRAILER, encode_trailer(Trailer("a" * 32, 1, len(blobs), sum(len(b.data) for b in blobs))))
    drive.write_filemark()
    volume.write(RecordType.HEADER, encode_header(SegmentHeader(_point("b" * 32), 1, "repo", ID_KEY, 86400, T0)))
    volume.write(RecordType.DATA, encode_blobs(_blobs(2, 2)))
    copy = Copy("a" * 32, "docs/home", T0, "full", "monthly", "lib1", 86400, T0, [Part(BARCODE, 1, 1)], True)
    copy.blobs = len(blobs)
    return copy


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Copy]:
    root = tmp_path_factory.mktemp("pristine") / "lib"
    return root, _build(root)


def _read_everything(root: Path, copy: Copy) -> None:
    """Scan the cartridge and restore the copy from it, as `inventory --rebuild` and restore do."""
    lib = VirtualLibrary(root, slots=2, drives=1, capacity_bytes=CAPACITY)
    drive = lib.load(BARCODE)
    try:
        volume = Volume(drive, open_volume(drive, lambda _key_id: KEK))
    except TapeError:
        return
    try:
        scan = scan_volume(volume, "lib1", Location(LocationKind.SLOT, "1"))
        copies = whole_copies([scan])
        confirm(copy, {BARCODE: scan})
        leftovers(scan, used_files(copies.values()))
    except TapeError:
        pass
    try:
        with TapePointReader(spool_dir=root) as reader:
            reader.read_parts(copy.point_id, copy.parts, lambda _b: (volume, lambda: None), copied_at=T0)
            for blob in _blobs(1, 5):
                reader.load_blob(blob.blob_id)
    except TapeError:
        pass


def test_the_pristine_cartridge_reads_whole(pristine: tuple[Path, Copy]) -> None:
    root, copy = pristine
    lib = VirtualLibrary(root, slots=2, drives=1, capacity_bytes=CAPACITY)
    drive = lib.load(BARCODE)
    volume = Volume(drive, open_volume(drive, lambda _key_id: KEK))
    scan = scan_volume(volume, "lib1", Location(LocationKind.SLOT, "1"))
    assert list(whole_copies([scan])) == [copy.point_id]
    assert confirm(copy, {BARCODE: scan}) is None
    (partial,) = leftovers(scan, {(BARCODE, 1)})
    assert (partial.file, partial.kind.value, partial.point_id) == (2, "unterminated", "b" * 32)
    with TapePointReader(spool_dir=root.parent) as reader:
        reader.read_parts(copy.point_id, copy.parts, lambda _b: (volume, lambda: None), copied_at=T0)
        assert [reader.load_blob(b.blob_id) for b in _blobs(1, 5)] == [b.data for b in _blobs(1, 5)]
    lib.unload_all()


Mutation = Callable[[bytes], bytes]


def _at(data: bytes, fraction: float) -> int:
    return min(len(data), int(len(data) * fraction))


mutations = st.one_of(
    st.tuples(st.floats(0, 1), st.integers(1, 255)).map(
        lambda t: (
            lambda d: (
                d[: _at(d, t[0])] + bytes([d[_at(d, t[0])] ^ t[1]]) + d[_at(d, t[0]) + 1 :]
                if _at(d, t[0]) < len(d)
                else d
            )
        )
    ),
    st.floats(0, 1).map(lambda f: lambda d: d[: _at(d, f)]),
    st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=40)).map(
        lambda t: lambda d: d[: _at(d, t[0])] + t[1] + d[_at(d, t[0]) :]
    ),
    st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=40)).map(
        lambda t: lambda d: d[: _at(d, t[0])] + t[1] + d[_at(d, t[0]) + len(t[1]) :]
    ),
    st.binary(max_size=200).map(lambda b: lambda _d: b),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["f000000", "f000001", "f000002"]), mutations), min_size=1, max_size=3))
def test_mutated_cartridge_files_give_only_tape_errors(
    pristine: tuple[Path, Copy], changes: list[tuple[str, Mutation]]
) -> None:
    source, copy = pristine
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        shutil.copytree(source, root)
        for name, mutate in changes:
            path = root / "cartridges" / BARCODE / name
            path.write_bytes(mutate(path.read_bytes()))
        _read_everything(root, copy)


def _cipher() -> VolumeCipher:
    label, key = new_label(BARCODE, "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    return VolumeCipher(label, key)


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_random_bytes_as_records_give_only_tape_errors(raw: bytes, file_no: int, record_no: int) -> None:
    for parse in (
        lambda: _cipher().open(raw, file_no, record_no),
        lambda: decode_label(raw, "fuzz"),
        lambda: decode_header(raw, "fuzz"),
        lambda: decode_trailer(raw, "fuzz"),
        lambda: decode_blobs(raw, "fuzz"),
        lambda: decode_blobs(zstandard.ZstdCompressor().compress(raw), "fuzz"),
        lambda: [b.plaintext("fuzz") for b in decode_bodies(raw, "fuzz")],
        lambda: decode_index(raw, "fuzz"),
    ):
        with contextlib.suppress(TapeError):
            parse()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _replace(doc: object, path: list[int], value: object) -> object:
    """`doc` with the node chosen by `path` (indices into sorted keys / list items) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: _replace(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], _replace(doc[i], path[1:], value), *doc[i + 1 :]]


@FUZZ
@given(st.lists(st.integers(0, 50), max_size=4), json_values)
def test_authentic_but_malformed_headers_trailers_labels_give_only_tape_errors(path: list[int], value: object) -> None:
    """What a buggy writer could seal: valid JSON of the wrong shape in any field."""
    label, _key = new_label(BARCODE, "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    docs: list[tuple[bytes, Callable[[bytes], object]]] = [
        (
            encode_header(SegmentHeader(_point("a" * 32), 1, "repo", ID_KEY, 86400, T0)),
            lambda raw: decode_header(raw, "fuzz"),
        ),
        (encode_trailer(Trailer("a" * 32, 1, 5, 100)), lambda raw: decode_trailer(raw, "fuzz")),
        (encode_label(label)[1:], lambda raw: decode_label(b"L" + raw, "fuzz")),
    ]
    for original, parse in docs:
        mutated = json.dumps(_replace(json.loads(original), path, value)).encode()
        with contextlib.suppress(TapeError):
            parse(mutated)
