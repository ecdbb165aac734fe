"""The conformance suite every StorageBackend passes.

Use it by subclassing `StorageSuite` in a test module and overriding the `backend` fixture
to return a fresh, empty backend (see test_local_storage.py). sftp and s3 backends run the
same class against their own fixtures.
"""

from __future__ import annotations

import pytest

from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend

PACK_A = "ab" + "0" * 62
PACK_B = "cd" + "1" * 62


class StorageSuite:
    @pytest.fixture
    def backend(self) -> StorageBackend:
        raise NotImplementedError("override `backend` to return a fresh, empty backend")

    def test_put_then_get_returns_the_same_bytes(self, backend: StorageBackend) -> None:
        for kind in ObjectKind:
            name = PACK_A if kind is ObjectKind.DATA else "obj1"
            backend.put(kind, name, b"hello " + kind.value.encode())
            assert backend.get(kind, name) == b"hello " + kind.value.encode()

    def test_empty_object(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.INDEX, "empty", b"")
        assert backend.get(ObjectKind.INDEX, "empty") == b""
        assert [i.size for i in backend.list(ObjectKind.INDEX)] == [0]

    def test_put_replaces(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.LOCKS, "l", b"old content")
        backend.put(ObjectKind.LOCKS, "l", b"new")
        assert backend.get(ObjectKind.LOCKS, "l") == b"new"

    def test_range_reads(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.DATA, PACK_A, bytes(range(256)))
        assert backend.get(ObjectKind.DATA, PACK_A, 10, 5) == bytes(range(10, 15))
        assert backend.get(ObjectKind.DATA, PACK_A, 250) == bytes(range(250, 256))
        assert backend.get(ObjectKind.DATA, PACK_A, 0, 0) == b""

    def test_large_object(self, backend: StorageBackend) -> None:
        data = bytes(range(256)) * (5 * 4096 + 3)
        backend.put(ObjectKind.DATA, PACK_B, data)
        assert backend.get(ObjectKind.DATA, PACK_B) == data
        assert backend.get(ObjectKind.DATA, PACK_B, len(data) - 7, 7) == data[-7:]

    def test_missing_object(self, backend: StorageBackend) -> None:
        with pytest.raises(ObjectMissingError):
            backend.get(ObjectKind.POINTS, "nope")
        with pytest.raises(ObjectMissingError):
            backend.delete(ObjectKind.POINTS, "nope")
        assert not backend.exists(ObjectKind.POINTS, "nope")

    def test_list_is_per_kind_with_sizes(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.DATA, PACK_A, b"12345")
        backend.put(ObjectKind.DATA, PACK_B, b"1")
        backend.put(ObjectKind.INDEX, PACK_A, b"123")
        data = {(i.name, i.size, i.kind) for i in backend.list(ObjectKind.DATA)}
        assert data == {(PACK_A, 5, ObjectKind.DATA), (PACK_B, 1, ObjectKind.DATA)}
        assert [(i.name, i.size) for i in backend.list(ObjectKind.INDEX)] == [(PACK_A, 3)]
        assert list(backend.list(ObjectKind.POINTS)) == []

    def test_delete_removes(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.DATA, PACK_A, b"x")
        assert backend.exists(ObjectKind.DATA, PACK_A)
        backend.delete(ObjectKind.DATA, PACK_A)
        assert not backend.exists(ObjectKind.DATA, PACK_A)
        assert list(backend.list(ObjectKind.DATA)) == []

    def test_same_name_in_two_kinds_is_two_objects(self, backend: StorageBackend) -> None:
        backend.put(ObjectKind.POINTS, "same", b"p")
        backend.put(ObjectKind.LOCKS, "same", b"l")
        backend.delete(ObjectKind.LOCKS, "same")
        assert backend.get(ObjectKind.POINTS, "same") == b"p"

    def test_describe_names_the_place(self, backend: StorageBackend) -> None:
        assert ":" in backend.describe()

    def test_unsafe_names_are_refused(self, backend: StorageBackend) -> None:
        for name in ("../escape", "a/b", "", ".hidden"):
            with pytest.raises(ValueError):
                backend.put(ObjectKind.CONFIG, name, b"x")
