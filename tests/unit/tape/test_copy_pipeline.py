"""The tape copy's pipeline end to end, without the CLI: blobs go to tape in the order a restore
asks for them, records sealed ahead by the workers are sealed again when the copy spans to the
next cartridge, and the read keeps the trees it met so the restore's tree walks open no record.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, run_backup
from protectctl.engine.buffers import BlobScratch
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.engine.tree import NodeType
from protectctl.errors import CorruptionError
from protectctl.progress import NullProgress
from protectctl.restore.fs import FsRestorer
from protectctl.restore.run import restore_tree
from protectctl.tape.catalog import Cartridge, CartridgeState, Catalog
from protectctl.tape.copy import PoolTarget, PoolWriter, point_refs
from protectctl.tape.keys import KeyStore
from protectctl.tape.library import VirtualLibrary
from protectctl.tape.reader import TapePointReader
from protectctl.tape.volume import Volume, open_volume

PASS = b"tape-pipeline-test"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _tree(root: Path) -> None:
    """Files and directories interleaved by name, nested, some of several chunks, one large
    enough to be restored in parallel ranges."""
    rng = __import__("random").Random(7)
    for top in ("a", "m", "z"):
        for sub in ("b", "n"):
            d = root / top / sub
            d.mkdir(parents=True)
            (d / "k.txt").write_text(f"{top}/{sub}\n" * 50)
            (d / "y.bin").write_bytes(rng.randbytes(40_000))
        (root / top / "c.bin").write_bytes(rng.randbytes(300_000))
        (root / top / "o.bin").write_bytes(os.urandom(1_500_000))  # several chunks, stored
    (root / "l.txt").write_text("top\n")
    (root / "0big.bin").write_bytes(os.urandom(17 << 20))  # first in the walk: restored in ranges


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Catalog, VirtualLibrary, KeyStore]:
    work = tmp_path_factory.mktemp("pipeline")
    _tree(work / "data")
    storage = LocalStorage(work / "repo")
    Repository.init(storage, PASS, kdf_n=2**10)
    job = SourceJob(
        source="t/data",
        provider="filesystem",
        spec={"path": str(work / "data")},
        storage=storage,
        passphrase=lambda: PASS,
        state_dir=work / "state",
        host="t",
        retention=RetentionSpec(keep_within_s=86400),
    )
    point_id = run_backup(job, "full").point_id
    # 8 MiB cartridges: records of 512 KiB, and the ~23 MiB copy spans several cartridges
    library = VirtualLibrary(work / "lib", slots=6, drives=1, capacity_bytes=8 << 20)
    keys = KeyStore(work / "keys", {"kek": lambda: PASS}, kdf_n=2**10)
    catalog = Catalog()
    for barcode in ("PL0001L9", "PL0002L9", "PL0003L9", "PL0004L9", "PL0005L9"):
        library.add_cartridge(barcode)
        catalog.cartridges[barcode] = Cartridge(
            barcode, "lib", "p", CartridgeState.SCRATCH, "", "", NOW, library.capacity_bytes
        )
    writer = PoolWriter(
        library, PoolTarget("lib", "p", "kek", 86400), catalog, keys, lambda: None, NOW, NullProgress(), workers=2
    )
    with Repository.open(storage, PASS) as repo:
        writer.copy_point(repo, repo.load_point(point_id))
        writer.close()
    return work, point_id, catalog, library, keys


def test_blobs_go_to_tape_in_the_order_a_restore_walks_them(
    copied: tuple[Path, str, Catalog, VirtualLibrary, KeyStore],
) -> None:
    work, point_id, *_ = copied
    with Repository.open(LocalStorage(work / "repo"), PASS) as repo:
        point = repo.load_point(point_id)
        expected: list[BlobId] = []

        def walk(tree_id: BlobId) -> None:  # the restore's write walk: entries in order, depth first
            expected.append(tree_id)
            for node in repo.load_tree(tree_id).nodes:
                expected.extend(c for c in node.chunks if c not in expected)
                if node.type is NodeType.DIR and node.subtree is not None:
                    walk(node.subtree)

        assert point.tree is not None
        walk(point.tree)
        assert [ref.blob_id for ref in point_refs(repo, point)] == expected


def test_a_spanned_copy_restores_byte_exact_and_its_trees_open_no_record(
    copied: tuple[Path, str, Catalog, VirtualLibrary, KeyStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, point_id, catalog, library, keys = copied
    copy = catalog.copies[point_id]
    assert len(copy.parts) >= 2  # spanned: records sealed ahead for cartridge 1 were sealed again

    def mount(barcode: str) -> tuple[Volume, object]:
        drive = library.load(barcode)
        return Volume(drive, open_volume(drive, keys.kek)), lambda: library.unload(1)

    with TapePointReader(tmp_path) as reader:
        reader.read_parts(point_id, copy.parts, mount)  # type: ignore[arg-type]
        point = reader.point
        assert point.tree is not None
        assert len(reader._records) > 8  # more than the records kept opened from the read
        stack, chunks = [point.tree], []
        while stack:  # every tree, as restore's select and count walk them: no record opened
            for node in reader.load_tree(stack.pop()).nodes:
                if node.subtree is not None:
                    stack.append(node.subtree)
                chunks.extend(node.chunks)
        assert reader.records_opened == 0
        scratch = BlobScratch()
        for chunk in chunks:  # what the restorer's scratch buffers and range planning use
            data = reader.load_blob(chunk)
            assert reader.blob_size(chunk) == len(data)
            assert bytes(reader.load_blob_into(chunk, scratch)) == data
        ranged: list[bytes] = []
        submit = FsRestorer._submit_ranges
        monkeypatch.setattr(
            FsRestorer,
            "_submit_ranges",
            lambda self, d, name, *rest: (ranged.append(name), submit(self, d, name, *rest)),
        )
        outcome = restore_tree(reader, point.tree, tmp_path / "out")
        assert ranged == [b"0big.bin"]  # the large file went in parallel ranges, as from the repository
        assert outcome.verified == point.stats.files
    assert _files(tmp_path / "out") == _files(work / "data")


def test_a_copy_that_fails_midway_raises_and_leaves_no_thread_behind(
    copied: tuple[Path, str, Catalog, VirtualLibrary, KeyStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, point_id, *_ = copied
    # records of 1 MiB: more batches than the walk may run ahead, so it is waiting when the copy fails
    library = VirtualLibrary(tmp_path / "lib", slots=2, drives=1, capacity_bytes=16 << 20)
    library.add_cartridge("PF0001L9")
    catalog = Catalog()
    catalog.cartridges["PF0001L9"] = Cartridge(
        "PF0001L9", "lib", "p", CartridgeState.SCRATCH, "", "", NOW, library.capacity_bytes
    )
    keys = KeyStore(tmp_path / "keys", {"kek": lambda: PASS}, kdf_n=2**10)
    writer = PoolWriter(
        library, PoolTarget("lib", "p", "kek", 86400), catalog, keys, lambda: None, NOW, NullProgress(), workers=2
    )
    reads: list[int] = []
    original = Repository.read_pack_into

    def damaged(self: Repository, pack: str, offset: int, out: memoryview) -> None:
        reads.append(offset)
        if len(reads) == 1:
            raise CorruptionError(f"pack {pack}: damaged")
        original(self, pack, offset, out)

    monkeypatch.setattr(Repository, "read_pack_into", damaged)
    with Repository.open(LocalStorage(work / "repo"), PASS) as repo:
        with pytest.raises(CorruptionError, match="damaged") as raised:
            writer.copy_point(repo, repo.load_point(point_id))
        # the walk's thread and the workers are gone at once, while the traceback (which keeps
        # the copy's frames, and so its generators) is still held
        assert raised.tb is not None
        assert not [t.name for t in threading.enumerate() if t.name.startswith("tape")]
    assert point_id not in catalog.copies
