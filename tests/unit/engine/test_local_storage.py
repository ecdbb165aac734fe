"""LocalStorage runs the storage conformance suite, plus local-only behaviour."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import RepositoryError
from tests.unit.engine.storage_suite import PACK_A, StorageSuite


class TestLocalStorage(StorageSuite):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> StorageBackend:
        return LocalStorage(tmp_path / "repo")


def test_data_is_sharded_by_two_hex_chars(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(ObjectKind.DATA, PACK_A, b"x")
    assert (tmp_path / "data" / "ab" / PACK_A).read_bytes() == b"x"


def test_temporary_files_are_not_listed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(ObjectKind.INDEX, "real", b"x")
    (tmp_path / "index" / ".real.123.tmp").write_bytes(b"half")
    assert [i.name for i in storage.list(ObjectKind.INDEX)] == ["real"]


def test_disk_full_becomes_a_clear_repository_error(tmp_path: Path) -> None:
    error = LocalStorage(tmp_path)._os_error("writing", tmp_path / "x", OSError(errno.ENOSPC, "No space left"))
    assert "disk holding the repository is full" in error.message
    assert error.hint


def test_unreadable_directory_becomes_repository_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "file-not-dir")
    (tmp_path / "file-not-dir").write_bytes(b"")
    from protectctl.errors import RepositoryError

    with pytest.raises(RepositoryError):
        storage.put(ObjectKind.CONFIG, "config", b"x")


def test_cached_pack_reads_see_deletes_and_read_into_buffers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(ObjectKind.DATA, PACK_A, b"0123456789")
    assert storage.get(ObjectKind.DATA, PACK_A, 2, 3) == b"234"  # opens and caches the pack
    out = bytearray(4)
    storage.get_into(ObjectKind.DATA, PACK_A, 6, memoryview(out))
    assert out == b"6789"
    with pytest.raises(RepositoryError):
        storage.get_into(ObjectKind.DATA, PACK_A, 8, memoryview(bytearray(4)))  # past the end
    storage.delete(ObjectKind.DATA, PACK_A)
    with pytest.raises(ObjectMissingError):
        storage.get(ObjectKind.DATA, PACK_A, 0, 1)
