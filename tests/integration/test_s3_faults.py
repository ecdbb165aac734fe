"""The S3 server killed mid-sync (its own SeaweedFS, SIGKILLed after a set number of pack uploads):
the sync fails clearly after bounded retries and publishes nothing; after a restart the next sync
completes and check is clean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.s3 import S3Credentials, S3Location, S3Storage
from protectctl.errors import ProtectctlError
from tests import seaweed as weed
from tests.seaweed import ADMIN

PASS = b"correct horse"


class KillAfter:
    """The real backend; the server is SIGKILLed when the n-th pack upload starts."""

    def __init__(self, inner: S3Storage, server: weed.Seaweed, packs: int) -> None:
        self.inner, self.server, self.left = inner, server, packs

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        if kind is ObjectKind.DATA:
            self.left -= 1
            if self.left == 0:
                self.server.kill()
        self.inner.put(kind, name, data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_server_killed_mid_sync_then_restarted(tmp_path: Path) -> None:
    if weed.available():
        pytest.skip(weed.available())
    server = weed.Seaweed(tmp_path / "weed")
    server.start()
    try:
        storage = S3Storage(S3Location(server.new_bucket(), "", server.endpoint), S3Credentials(*ADMIN), max_attempts=2)
        Repository.init(storage, PASS, kdf_n=2**10, pack_size=1 << 20).close()
        data = tmp_path / "data"
        data.mkdir()
        for i in range(6):
            (data / f"f{i}").write_bytes(os.urandom(1 << 20))

        def job(backend: object) -> SourceJob:
            return SourceJob(
                source="docs/home",
                provider="filesystem",
                spec={"path": str(data)},
                storage=backend,
                passphrase=lambda: PASS,
                state_dir=tmp_path / "state",  # type: ignore[arg-type]
                host="testhost",
                retention=RetentionSpec(keep_within_s=14 * 86400),
            )

        with pytest.raises(ProtectctlError) as info:
            run_backup(job(KillAfter(storage, server, packs=3)), "sync")
        assert "Could not connect" in str(info.value) or "connection" in str(info.value).lower()
        server.start()
        assert list(storage.list(ObjectKind.POINTS)) == []  # nothing partial was published
        run_backup(job(storage), "sync")
        repo = Repository.open(storage, PASS)
        assert len(repo.list_points()) == 1
        assert repo.check(read_data=True).ok
        repo.close()
    finally:
        server.stop()
