"""Tape reads from an s3 repository like any other (issue 14, item 5): a point synced into a
bucket is copied to a cartridge, the bucket loses it, and the restore comes from tape byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from protectctl import api
from protectctl.engine.repository import Repository
from protectctl.engine.storage.s3 import S3Credentials, S3Location, S3Storage
from tests.conftest import write_policy
from tests.integration.test_tape import POLICY, snapshot, write_data
from tests.seaweed import ADMIN, Seaweed


def test_a_tape_copy_from_an_s3_repository_restores(
    seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ADMIN_KEY", ADMIN[0])
    monkeypatch.setenv("S3_ADMIN_SECRET", ADMIN[1])
    bucket = seaweed.new_bucket()
    s3 = (
        f"spec:\n  type: s3\n  endpoint: {seaweed.endpoint}\n  bucket: {bucket}\n  prefix: t/\n"
        "  credentials: {accessKeyId: {env: S3_ADMIN_KEY}, secretAccessKey: {env: S3_ADMIN_SECRET}}\n"
        "  encryption: {key: repo-key}\n"
    )
    policy = POLICY.format(capacity="10MB").replace(
        "spec: {type: local, path: ./.protectctl/repo, encryption: {key: repo-key}}\n", s3
    )
    assert "type: s3" in policy
    site = write_policy(tmp_path / "site", policy)
    write_data(site / "data", seed=3)
    api.apply(site, confirm=lambda _plan: True)
    api.tape_label(site, 1, "monthly")
    (backup,) = api.run_backup(site, "full", "docs", None, agent_config=None, progress=None)
    assert backup.ok
    original = snapshot(site / "data")
    (copied,) = api.run_tape(site, "docs", None).copied
    assert copied.source == "docs/home"

    storage = S3Storage(S3Location(bucket, "t/", seaweed.endpoint), S3Credentials(*ADMIN))
    with Repository.open(storage, (site / ".protectctl/passphrase").read_bytes().strip()) as repo:
        repo.forget_points([p.id for p in repo.list_points()])
        repo.gc()
    write_data(site / "data", seed=4)  # the source moves on; the tape keeps the point
    result = api.restore(
        site,
        "docs/home",
        "latest",
        agent_config=None,
        target=str(tmp_path / "r"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    assert result.point_id == copied.point_id
    assert snapshot(tmp_path / "r") == original
