"""Object lock on a real SeaweedFS: an agent's least-privilege key tries to destroy stored points
(delete and overwrite every object, delete every version) and every point still restores;
prune deletes only what is expired and unlocked, and extends the locks of reused objects."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from protectctl.engine.objectlock import extend_locks
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.s3 import ObjectLock, S3Credentials, S3Location, S3Storage
from tests.seaweed import ADMIN, AGENT, Seaweed
from tests.unit.engine.conftest import PASSPHRASE, SMALL_CHUNKS, SMALL_PACK, backup, restore

LOCK = ObjectLock("compliance", 3600)


def storages(seaweed: Seaweed, bucket: str, lock: ObjectLock = LOCK) -> tuple[S3Storage, S3Storage]:
    where = S3Location(bucket, "site-a/", seaweed.endpoint)
    return (
        S3Storage(where, S3Credentials(*ADMIN), lock=lock, max_attempts=2),
        S3Storage(where, S3Credentials(*AGENT), lock=lock, max_attempts=2),
    )


def test_agent_key_cannot_destroy_locked_points(seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket(lock=True, agent=True)
    admin, agent = storages(seaweed, bucket)
    Repository.init(admin, PASSPHRASE, kdf_n=2**10, chunker=SMALL_CHUNKS, pack_size=SMALL_PACK).close()
    repo = Repository.open(agent, PASSPHRASE)
    first = {"a": os.urandom(200_000), "b": os.urandom(90_000)}
    second = {**first, "c": os.urandom(50_000)}
    points = [backup(repo, first), backup(repo, second, when=1)]
    repo.close()
    raw = seaweed.client(agent=True, attempts=1)
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    refused = 0
    for key in keys:  # the attack: overwrite, delete, then delete every version it can see
        raw.put_object(Bucket=bucket, Key=key, Body=b"ransom")
        raw.delete_object(Bucket=bucket, Key=key)
        for version in raw.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
            try:
                raw.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
            except Exception:
                refused += 1
    assert refused >= len([k for k in keys if "/index/" not in k and "/locks/" not in k])
    reader = Repository.open(storages(seaweed, bucket)[0], PASSPHRASE)
    listed = reader.list_points()
    assert sorted(p.id for p in listed) == sorted(p.id for p in points)
    assert restore(reader, points[0]) == first and restore(reader, points[1]) == second
    # index objects are not locked (gc replaces them): check names their loss, repair rebuilds them
    assert all("repair index" in e for e in reader.check(read_data=True).errors)
    reader.repair_index()
    assert reader.check(read_data=True).ok
    reader.close()


def test_prune_keeps_locked_objects_and_extends_reused_ones(seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket(lock=True)
    admin, _ = storages(seaweed, bucket, ObjectLock("governance", 60))
    repo = Repository.init(admin, PASSPHRASE, kdf_n=2**10, chunker=SMALL_CHUNKS, pack_size=SMALL_PACK)
    files = {"a": os.urandom(150_000)}
    old = backup(repo, files)
    # a later point reusing every pack: its retention ends after the packs' lock at write
    from dataclasses import replace

    later = replace(old, id="f" * 32, time=datetime.now(UTC) + timedelta(hours=2))
    repo.save_point(later)
    report = extend_locks(repo, 60)
    assert report.extended > 0
    packs = [i.name for i in admin.list(ObjectKind.DATA)]
    until = admin.retained_until(ObjectKind.DATA, packs[0])
    assert until is not None and until >= later.time + timedelta(seconds=59)
    repo.forget_points([old.id, later.id])  # both still locked: they stay
    assert {p.id for p in repo.list_points()} == {old.id, later.id}
    assert repo.gc().packs_deleted == 0
    repo.close()
