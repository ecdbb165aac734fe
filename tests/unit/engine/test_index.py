"""The compact in-memory index: lookups, live over condemned, recovered packs, duplicates,
the order of packs(), and a damaged object recorded (no repository, no storage: cheap)."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
import zstandard

from protectctl.engine import index as index_module
from protectctl.engine.crypto import Sealer, aad, content_name
from protectctl.engine.ids import BlobId
from protectctl.engine.index import Index, IndexEntry, IndexFile, decode_index, encode_index, load_index
from protectctl.engine.pack import BlobKind, PackEntry
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import CorruptionError

SEALER = Sealer(bytes(range(32)))


def _blob(n: int) -> BlobId:
    return BlobId(n.to_bytes(4, "big") * 8)


def _pack(n: int) -> str:
    return f"{n:064x}"


def _entries(*blobs: int, kind: BlobKind = BlobKind.DATA) -> list[PackEntry]:
    return [PackEntry(_blob(b), kind, 100 * i, 90 + i, 200 + b) for i, b in enumerate(blobs)]


@pytest.fixture(params=["dict", "sorted"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each semantic test twice: objects kept in a dict, and searched in their sorted directory."""
    if request.param == "sorted":
        monkeypatch.setattr(index_module, "SORTED_MIN_ENTRIES", 1)
    return str(request.param)


def _sealed(
    index: Index, packs: dict[str, list[PackEntry]], *, condemned: bool = False, locks: tuple[str, ...] = ()
) -> str:
    """Add an index object as load_index does: encoded, sealed, decoded."""
    name, stored = encode_index(SEALER, IndexFile(packs=packs, condemned=condemned, locks=locks))
    index.add_file(name, decode_index(SEALER, name, stored))
    return name


@pytest.mark.usefixtures("layout")
def test_lookup_decodes_the_entry_it_was_given() -> None:
    index = Index()
    entries = _entries(1, 2, 3) + _entries(4, kind=BlobKind.TREE)
    _sealed(index, {_pack(1): entries[:2], _pack(2): entries[2:]})
    assert index.lookup(_blob(2)) == IndexEntry(_pack(1), entries[1])
    assert index.lookup(_blob(4)) == IndexEntry(_pack(2), entries[3])
    assert index.lookup(_blob(4)).entry.kind is BlobKind.TREE  # type: ignore[union-attr]
    assert index.lookup(_blob(9)) is None
    assert index.has_live(_blob(3)) and not index.has_live(_blob(9))
    assert set(index.live) == {_blob(n) for n in (1, 2, 3, 4)} and len(index.live) == 4
    assert index.live[_blob(1)].pack == _pack(1)


@pytest.mark.usefixtures("layout")
def test_live_wins_over_condemned_and_condemned_is_never_deduped_against() -> None:
    index = Index()
    _sealed(index, {_pack(1): _entries(1, 2)}, condemned=True, locks=("lockA",))
    _sealed(index, {_pack(2): _entries(2, 3)})
    _sealed(index, {_pack(2): _entries(2, 3), _pack(3): _entries(5)}, condemned=True, locks=("lockB",))
    assert index.lookup(_blob(1)).pack == _pack(1)  # type: ignore[union-attr]  # readable while condemned
    assert not index.has_live(_blob(1))
    assert index.lookup(_blob(2)).pack == _pack(2)  # type: ignore[union-attr]
    assert index.has_live(_blob(2))
    # pack 2 is live in one object, condemned in another: live wins
    assert index.condemned_packs() == {_pack(1): ("lockA",), _pack(3): ("lockB",)}
    assert index.live_packs == {_pack(2)}
    assert index.indexed_packs() == {_pack(1), _pack(2), _pack(3)}


@pytest.mark.usefixtures("layout")
def test_the_first_object_listing_a_blob_wins_and_packs_come_live_first_once_each() -> None:
    index = Index()
    _sealed(index, {_pack(7): _entries(1)}, condemned=True)
    first = _sealed(index, {_pack(1): _entries(1, 2)})
    _sealed(index, {_pack(2): _entries(2, 3), _pack(1): _entries(1, 2)})
    assert index.lookup(_blob(2)).pack == _pack(1)  # type: ignore[union-attr]
    assert index.lookup(_blob(3)).pack == _pack(2)  # type: ignore[union-attr]
    listed = [(pack, [e.blob_id for e in entries], condemned) for pack, entries, condemned in index.packs()]
    assert listed == [
        (_pack(1), [_blob(1), _blob(2)], False),
        (_pack(2), [_blob(2), _blob(3)], False),
        (_pack(7), [_blob(1)], True),
    ]
    assert first in index.files and index.files[first].packs[_pack(1)] == _entries(1, 2)
    # within one object too, the first table listing a blob wins
    other = Index()
    _sealed(other, {_pack(5): _entries(8), _pack(6): _entries(8)})
    assert other.lookup(_blob(8)).pack == _pack(5)  # type: ignore[union-attr]


@pytest.mark.usefixtures("layout")
def test_a_writers_index_file_and_a_decoded_one_index_alike() -> None:
    packs = {_pack(3): _entries(3, 4), _pack(1): _entries(1)}
    decoded, written = Index(), Index()
    _sealed(decoded, packs)
    written.add_file("x", IndexFile(packs=packs))
    for blob in (1, 3, 4):
        assert decoded.lookup(_blob(blob)) == written.lookup(_blob(blob))
    assert sorted(p for p, _e, _c in decoded.packs()) == sorted(p for p, _e, _c in written.packs())


@pytest.mark.usefixtures("layout")
def test_recovered_packs_are_readable_but_not_deduped_against() -> None:
    index = Index()
    _sealed(index, {_pack(1): _entries(1)})
    index.add_recovered(_pack(9), _entries(1, 9))
    assert index.lookup(_blob(9)).pack == _pack(9)  # type: ignore[union-attr]
    assert not index.has_live(_blob(9))
    assert index.lookup(_blob(1)).pack == _pack(1)  # type: ignore[union-attr]  # live still wins
    assert index.recovered == {_pack(9)}
    assert _pack(9) not in index.indexed_packs()
    assert [p for p, _e, _c in index.packs()] == [_pack(1)]


def _seal_payload(payload: bytes) -> tuple[str, bytes]:
    stored = SEALER.seal(zstandard.ZstdCompressor().compress(payload), aad("index"))
    return content_name(stored), stored


def test_malformed_tables_are_refused_whole() -> None:
    good = IndexFile(packs={_pack(1): _entries(1, 2)})
    name, stored = encode_index(SEALER, good)
    payload = zstandard.ZstdDecompressor().decompress(SEALER.open(stored, aad("index"), "t"))
    bad_kind = bytearray(payload)
    bad_kind[13 + 36 + 45 + 32] = 7  # the second entry's kind code
    with pytest.raises(CorruptionError, match="unknown blob kind"):
        decode_index(SEALER, *_seal_payload(bytes(bad_kind)))
    short = payload[:-1]
    with pytest.raises(CorruptionError, match="wrong size"):
        decode_index(SEALER, *_seal_payload(short))
    with pytest.raises(CorruptionError, match="trailing bytes"):
        decode_index(SEALER, *_seal_payload(payload + b"x"))
    over = payload[:9] + struct.pack(">I", 2) + payload[13:]  # two packs announced, one present
    with pytest.raises(CorruptionError):
        decode_index(SEALER, *_seal_payload(over))


@pytest.mark.usefixtures("layout")
def test_load_index_records_a_damaged_object_and_reads_the_others(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    good_name, good = encode_index(SEALER, IndexFile(packs={_pack(1): _entries(1)}))
    storage.put(ObjectKind.INDEX, good_name, good)
    junk = os.urandom(200)
    storage.put(ObjectKind.INDEX, content_name(junk), junk)
    index = load_index(storage, SEALER)
    assert index.lookup(_blob(1)).pack == _pack(1)  # type: ignore[union-attr]
    assert list(index.damaged) == [content_name(junk)]


@pytest.mark.usefixtures("layout")
def test_objects_added_together_index_as_added_one_by_one() -> None:
    objects = [
        ({_pack(7): _entries(1)}, True),
        ({_pack(1): _entries(1, 2)}, False),
        ({_pack(2): _entries(2, 3), _pack(1): _entries(1, 2)}, False),
        ({_pack(3): _entries(3, 4)}, True),
    ]
    sealed = []
    for packs, condemned in objects:
        name, stored = encode_index(SEALER, IndexFile(packs=packs, condemned=condemned))
        sealed.append((name, decode_index(SEALER, name, stored)))
    one_by_one, together = Index(), Index()
    for name, read in sealed:
        one_by_one.add_file(name, read)
    together.add_files(sealed)
    for blob in range(1, 6):
        assert one_by_one.lookup(_blob(blob)) == together.lookup(_blob(blob))
        assert one_by_one.has_live(_blob(blob)) == together.has_live(_blob(blob))
    assert list(one_by_one.packs()) == list(together.packs())
    assert one_by_one.condemned_packs() == together.condemned_packs() == {_pack(7): (), _pack(3): ()}


def test_a_big_object_is_searched_in_its_sorted_directory_and_then_in_a_dict() -> None:
    rng = random.Random(5)
    packs = {
        _pack(p): [PackEntry(BlobId(rng.randbytes(32)), BlobKind.DATA, i, 9, 9) for i in range(2000)] for p in (1, 2, 3)
    }
    packs[_pack(4)] = list(packs[_pack(2)][:10])  # listed twice: pack 2's entries win (sorted packs, first table)
    name, stored = encode_index(SEALER, IndexFile(packs=packs))
    read = decode_index(SEALER, name, stored)
    assert read.directory > 0
    index = Index()
    index.add_file(name, read)
    index.add_file("small", IndexFile(packs={_pack(5): _entries(1, 2)}))  # a writer's, kept in a dict
    expected = {e.blob_id: IndexEntry(p, e) for p in (_pack(3), _pack(2), _pack(1)) for e in packs[p]}
    probes = list(expected.items())
    rng.shuffle(probes)
    # more lookups than the binary search is allowed: the object then builds its dict
    for blob_id, located in probes + probes[:1000]:
        assert index.lookup(blob_id) == located and index.has_live(blob_id)
    assert index.lookup(_blob(1)) == IndexEntry(_pack(5), _entries(1, 2)[0])
    for _ in range(100):
        assert index.lookup(BlobId(rng.randbytes(32))) is None
    assert len(index.live) == len(expected) + 2
    assert index.live_packs == {_pack(n) for n in range(1, 6)}


def test_a_malformed_sorted_directory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "SORTED_MIN_ENTRIES", 1)
    name, stored = encode_index(SEALER, IndexFile(packs={_pack(1): _entries(1, 2)}))
    payload = zstandard.ZstdDecompressor().decompress(SEALER.open(stored, aad("index"), "t"))
    assert payload[4] == 2  # the directory's flag
    with pytest.raises(CorruptionError, match="trailing bytes"):
        decode_index(SEALER, *_seal_payload(payload + b"x"))
    with pytest.raises(CorruptionError, match="sorted directory"):
        decode_index(SEALER, *_seal_payload(payload[:-1]))
    wrong_total = payload[:-12] + struct.pack(">I", 3) + payload[-8:]  # the fan-out's last count
    with pytest.raises(CorruptionError, match="sorted directory"):
        decode_index(SEALER, *_seal_payload(wrong_total))
    # an offset into the middle of a record: its bytes no longer read as an id, the blob is missed
    astray = payload[:-4] + struct.pack(">I", struct.unpack(">I", payload[-4:])[0] + 1)
    index = Index()
    index.add_file("astray", decode_index(SEALER, *_seal_payload(astray)))
    assert index.lookup(_blob(1)) is not None
    assert index.lookup(_blob(2)) is None


def test_load_index_takes_objects_it_already_read_from_known(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    names = []
    for n in (1, 2):
        name, stored = encode_index(SEALER, IndexFile(packs={_pack(n): _entries(n)}))
        storage.put(ObjectKind.INDEX, name, stored)
        names.append(name)
    first = load_index(storage, SEALER)
    # an object is named by its content's hash: one already read is not fetched again (here,
    # its stored bytes replaced by junk would show as damage if it were)
    (path,) = [p for p in tmp_path.rglob(names[0]) if p.is_file()]
    path.write_bytes(b"junk")
    again = load_index(storage, SEALER, known={names[0]: first.files[names[0]]})
    assert not again.damaged and again.lookup(_blob(1)).pack == _pack(1)  # type: ignore[union-attr]
    assert again.lookup(_blob(2)).pack == _pack(2)  # type: ignore[union-attr]
    assert list(load_index(storage, SEALER).damaged) == [names[0]]


def test_check_verifies_a_sorted_directory_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "SORTED_MIN_ENTRIES", 1)
    name, stored = encode_index(SEALER, IndexFile(packs={_pack(1): _entries(3, 1, 2), _pack(2): _entries(1)}))
    assert index_module.verify_directory(decode_index(SEALER, name, stored)) is None
    payload = zstandard.ZstdDecompressor().decompress(SEALER.open(stored, aad("index"), "t"))
    offsets = payload[-16:]  # 4 entries: blob 1 (pack 1), blob 1 (pack 2), blob 2, blob 3
    swapped = payload[:-16] + offsets[4:8] + offsets[:4] + offsets[8:]  # equal ids out of table order
    why = index_module.verify_directory(decode_index(SEALER, *_seal_payload(swapped)))
    assert why == "its sorted directory is not in blob id order"
    twice = payload[:-16] + offsets[:4] * 2 + offsets[8:]
    assert "each entry once" in str(index_module.verify_directory(decode_index(SEALER, *_seal_payload(twice))))
    fanout_end = len(payload) - 16
    shifted = payload[: fanout_end - 8] + struct.pack(">2I", 3, 4) + offsets  # the last two counts, wrong
    assert "fan-out" in str(index_module.verify_directory(decode_index(SEALER, *_seal_payload(shifted))))
