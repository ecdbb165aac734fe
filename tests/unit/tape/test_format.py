"""The tape format: labels, sealed records bound to their place, blob records, headers; catalog rules."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point, PointStats
from protectctl.errors import CorruptionError, WrongKeyError
from protectctl.tape.catalog import (
    Catalog,
    Copy,
    Part,
    catalog_from_json,
    catalog_to_json,
    expiry_of,
    recyclable,
)
from protectctl.tape.format import (
    RecordType,
    SegmentHeader,
    TapeBlob,
    VolumeCipher,
    batch_blobs,
    decode_blobs,
    decode_header,
    decode_label,
    encode_blobs,
    encode_header,
    encode_label,
    new_label,
    unwrap_data_key,
)
from protectctl.tape.keys import KeyStore, unexported_warnings

T0 = datetime(2026, 8, 1, 12, 0, tzinfo=UTC)
KEK = bytes(range(32))


def _cipher(barcode: str = "PT0001L9") -> VolumeCipher:
    label, key = new_label(barcode, "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    return VolumeCipher(label, key)


def test_label_round_trip_and_wrong_key() -> None:
    label, key = new_label("PT0001L9", "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    back = decode_label(encode_label(label), "test")
    assert back == label
    assert unwrap_data_key(back, KEK) == key
    with pytest.raises(WrongKeyError):
        unwrap_data_key(back, bytes(32))


def test_altered_label_does_not_open() -> None:
    label, _ = new_label("PT0001L9", "monthly", "k1", "tape-kek", KEK, "lib1", T0)
    raw = encode_label(label).replace(b'"monthly"', b'"weekly"')
    with pytest.raises(WrongKeyError):
        unwrap_data_key(decode_label(raw, "test"), KEK)


def test_records_are_bound_to_their_place_and_type() -> None:
    cipher = _cipher()
    raw = cipher.seal(RecordType.DATA, 3, 7, b"payload")
    assert cipher.open(raw, 3, 7) == (RecordType.DATA, b"payload")
    for file_no, record_no in ((3, 8), (4, 7)):
        with pytest.raises(CorruptionError):
            cipher.open(raw, file_no, record_no)
    with pytest.raises(CorruptionError):
        cipher.open(RecordType.TRAILER.value + raw[1:], 3, 7)
    other = _cipher("PT0002L9")
    with pytest.raises(CorruptionError):
        other.open(raw, 3, 7)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 1
    with pytest.raises(CorruptionError):
        cipher.open(bytes(flipped), 3, 7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.binary(max_size=3000)), max_size=12))
def test_blob_records_round_trip(items: list[tuple[int, bytes]]) -> None:
    blobs = [TapeBlob(kind, BlobId(os.urandom(32)), data) for kind, data in items]
    out = [b for batch in batch_blobs(blobs, 4000) for b in decode_blobs(encode_blobs(batch), "t")]
    assert out == blobs


def test_header_round_trip() -> None:
    point = Point(
        "ab" * 16,
        "docs/home",
        T0,
        "full",
        None,
        BlobId(bytes(32)),
        PointStats(files=3),
        True,
        host="h",
        tags={"provider": "filesystem"},
        extra={"root": {"mode": 493}},
    )
    header = SegmentHeader(point, 2, "repo", b"k" * 32, 86400, T0, "PT0001L9")
    back = decode_header(encode_header(header), "t")
    assert back == header
    assert back.expires == T0 + timedelta(days=1)


def _copy(point_id: str, barcode: str, days: int) -> Copy:
    return Copy(
        point_id,
        "docs/home",
        T0,
        "full",
        "monthly",
        "lib1",
        days * 86400,
        T0,
        [Part(barcode, 1, 1)],
        complete=True,
    )


def test_expiry_is_the_latest_of_what_a_cartridge_holds_and_recycling_respects_it() -> None:
    catalog = Catalog()
    from protectctl.tape.catalog import Cartridge, CartridgeState

    for barcode in ("A1", "A2"):
        catalog.cartridges[barcode] = Cartridge(barcode, "lib1", "monthly", CartridgeState.FULL, "k", "v", T0, 100)
    catalog.copies = {"p1": _copy("p1", "A1", 10), "p2": _copy("p2", "A1", 30), "p3": _copy("p3", "A2", 5)}
    assert expiry_of(catalog.copies_on("A1")) == T0 + timedelta(days=30)
    assert recyclable(catalog, T0 + timedelta(days=20)) == ["A2"]
    assert recyclable(catalog, T0 + timedelta(days=31)) == ["A1", "A2"]
    assert catalog_from_json(catalog_to_json(catalog)).copies.keys() == catalog.copies.keys()


def test_keys_rotate_export_import(tmp_path: Path) -> None:
    site_a = KeyStore(tmp_path / "a", {"tape-kek": lambda: b"pass-a"}, kdf_n=2**10)
    first = site_a.create("tape-kek", now=T0)
    second = site_a.rotate("tape-kek", now=T0 + timedelta(days=1))
    assert site_a.current("tape-kek") == second
    assert site_a.get(first.id).rotated is not None
    assert len(unexported_warnings(site_a.infos(), {first.id: 2})) == 2
    site_a.export(site_a.resolve("tape-kek"), tmp_path / "export.json", b"transport", now=T0)
    assert unexported_warnings(site_a.infos(), {}) == []
    assert b"pass-a" not in (tmp_path / "export.json").read_bytes()
    site_b = KeyStore(tmp_path / "b", {"tape-kek": lambda: b"pass-b"}, kdf_n=2**10)
    with pytest.raises(WrongKeyError):
        site_b.import_file(tmp_path / "export.json", lambda _name: b"wrong", now=T0)
    site_b.import_file(tmp_path / "export.json", lambda _name: b"transport", now=T0)
    assert site_b.kek(first.id) == site_a.kek(first.id)
    assert site_b.kek(second.id) == site_a.kek(second.id)
    assert site_b.current("tape-kek") == site_b.get(second.id)
    fresh = KeyStore(tmp_path / "b", {"tape-kek": lambda: b"wrong"}, kdf_n=2**10)
    with pytest.raises(WrongKeyError):
        fresh.kek(first.id)
