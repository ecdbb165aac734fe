"""`type: sftp` storage: the conformance suite through `protectctl serve`, locally and over
real sshd; the append-only guard of agents' keys."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protectctl.engine.storage.base import ObjectKind, StorageBackend
from protectctl.engine.storage.local import LocalStorage
from protectctl.engine.storage.serve import AppendOnlyError, Server, frame, read_header
from protectctl.engine.storage.sftp import ProcessStream, RemoteStorage
from tests.integration.sshd import SshdServer, keygen, sshd_available
from tests.unit.engine.storage_suite import PACK_A, StorageSuite

PROTECTCTL = str(Path(sys.executable).parent / "protectctl")


class TestServeOverAPipe(StorageSuite):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[StorageBackend]:
        argv = [sys.executable, "-m", "protectctl", "serve", "--repo", str(tmp_path / "repo")]
        storage = RemoteStorage(lambda: ProcessStream(argv), f"pipe:{tmp_path}")
        yield storage
        storage.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshdServer, Path]]:
    if sshd_available():
        pytest.skip(str(sshd_available()))
    base = tmp_path_factory.mktemp("sftp")
    key = base / "client_ed25519"
    server = SshdServer("s1", "127.0.0.8", base / "s1", keygen(key, "ctl"))
    server.start()
    yield server, key
    server.stop()


class TestSftpOverSsh(StorageSuite):
    @pytest.fixture
    def backend(self, sshd: tuple[SshdServer, Path], tmp_path: Path) -> Iterator[StorageBackend]:
        from protectctl.provision.ssh import open_remote_storage

        server, key = sshd
        storage = open_remote_storage(
            {
                "host": "s1",
                "path": str(tmp_path / "repo"),
                "serve": PROTECTCTL,
                "ssh": {
                    "address": server.address,
                    "port": server.port,
                    "user": "root",
                    "identity_file": str(key),
                    "host_key": server.host_key,
                    "known_hosts": None,
                    "become": None,
                },
            }
        )
        yield storage
        storage.close()


def _talk(server: Server, *requests: bytes) -> list[dict[str, object]]:
    out = io.BytesIO()
    server.serve(io.BytesIO(b"".join(requests)), out)
    out.seek(0)
    replies = []
    while (header := read_header(out)) is not None:
        out.read(int(str(header.get("size") or 0)))
        replies.append(header)
    return replies


def test_append_only_refuses_delete_and_overwrite_but_not_add(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path)
    local.put(ObjectKind.DATA, PACK_A, b"pack")
    local.put(ObjectKind.POINTS, "p1", b"point")
    server = Server(local, append_only=True)
    put = lambda kind, name, data: frame({"op": "put", "kind": kind, "name": name, "size": len(data)}, data)  # noqa: E731
    replies = _talk(
        server,
        frame({"op": "delete", "kind": "data", "name": PACK_A}),
        put("data", PACK_A, b"evil"),
        frame({"op": "delete", "kind": "points", "name": "p1"}),
        put("points", "p1", b"forged"),
        put("config", "config", b"new"),  # a new name: allowed
        put("data", PACK_A, b"pack"),  # an identical retry: allowed
        put("locks", "l1", b"a"),
        put("locks", "l1", b"b"),  # locks: the carve-out
        frame({"op": "delete", "kind": "locks", "name": "l1"}),
    )
    assert [r.get("error") for r in replies[:4]] == ["refused"] * 4
    assert all(r["ok"] for r in replies[4:])
    assert local.get(ObjectKind.DATA, PACK_A) == b"pack"
    assert local.get(ObjectKind.POINTS, "p1") == b"point"
    assert not local.exists(ObjectKind.LOCKS, "l1")


def test_client_raises_append_only_error(tmp_path: Path) -> None:
    LocalStorage(tmp_path / "repo").put(ObjectKind.DATA, PACK_A, b"pack")
    argv = [sys.executable, "-m", "protectctl", "serve", "--append-only", "--repo", str(tmp_path / "repo")]
    storage = RemoteStorage(lambda: ProcessStream(argv), "pipe")
    with pytest.raises(AppendOnlyError):
        storage.delete(ObjectKind.DATA, PACK_A)
    assert storage.append_only is True
    storage.close()
