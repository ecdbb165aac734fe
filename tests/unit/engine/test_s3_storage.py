"""S3Storage on a real SeaweedFS runs the storage conformance suite, plus what only S3 does."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from protectctl.engine.storage.base import ObjectKind, ObjectMissingError, StorageBackend
from protectctl.engine.storage.s3 import S3Credentials, S3Location, S3Storage
from protectctl.errors import RepositoryError
from tests.seaweed import ADMIN, AGENT, Seaweed
from tests.unit.engine.storage_suite import PACK_A, StorageSuite


def s3(seaweed: Seaweed, bucket: str, prefix: str = "repo/", **kwargs: object) -> S3Storage:
    return S3Storage(S3Location(bucket, prefix, seaweed.endpoint), S3Credentials(*ADMIN), **kwargs)  # type: ignore[arg-type]


class TestS3Storage(StorageSuite):
    @pytest.fixture
    def backend(self, seaweed: Seaweed) -> StorageBackend:
        return s3(seaweed, seaweed.new_bucket())


def test_layout_matches_local_and_lists_past_one_page(seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    storage = s3(seaweed, bucket, "site-a")
    storage.put(ObjectKind.DATA, PACK_A, b"x")
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"site-a/data/ab/{PACK_A}"]
    names = {f"{i:064x}" for i in range(1005)}  # more than one ListObjectsV2 page
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: storage.put(ObjectKind.INDEX, n, b""), names))
    assert {i.name for i in storage.list(ObjectKind.INDEX)} == names


def test_conditional_create_lets_exactly_one_writer_win(seaweed: Seaweed) -> None:
    storage = s3(seaweed, seaweed.new_bucket())
    assert storage.create(ObjectKind.LOCKS, "state", b"first")
    assert not storage.create(ObjectKind.LOCKS, "state", b"second")
    assert storage.get(ObjectKind.LOCKS, "state") == b"first"
    storage.discard(ObjectKind.LOCKS, "state")  # a lease released: one DELETE, a miss is no error
    assert not storage.exists(ObjectKind.LOCKS, "state")
    storage.discard(ObjectKind.LOCKS, "state")


def test_permanent_errors_stop_at_once_with_a_clear_message(seaweed: Seaweed) -> None:
    outside = S3Storage(S3Location(seaweed.new_bucket(), "", seaweed.endpoint), S3Credentials(*AGENT))
    with pytest.raises(RepositoryError, match="permission denied"):
        outside.put(ObjectKind.CONFIG, "config", b"x")  # the agent key may use agent-* buckets only
    wrong = S3Storage(S3Location(seaweed.new_bucket(), "", seaweed.endpoint), S3Credentials(ADMIN[0], "wrong"))
    with pytest.raises(RepositoryError, match="permission denied"):
        wrong.put(ObjectKind.CONFIG, "config", b"x")
    with pytest.raises(ObjectMissingError):
        s3(seaweed, seaweed.new_bucket()).get(ObjectKind.DATA, PACK_A, 0, 10)


def test_unreachable_endpoint_fails_after_bounded_retries() -> None:
    import time

    storage = S3Storage(S3Location("b", "", "http://127.0.0.1:9"), S3Credentials("k", "s"), max_attempts=2)
    started = time.monotonic()
    with pytest.raises(RepositoryError, match="Could not connect") as info:
        storage.get(ObjectKind.CONFIG, "config")
    assert "tried 2 times" in (info.value.hint or "")
    assert time.monotonic() - started < 10


def test_client_loads_only_the_s3_model_as_plain_dicts(tmp_path: object) -> None:
    """make_client's model loader (what saves ~0.1 s per agent run): it lists no other service,
    decodes into plain dicts, and keeps botocore's search path (AWS_DATA_PATH first)."""
    from protectctl.engine.storage.s3 import _s3_loader, make_client

    client = make_client(S3Location("b", "", "http://127.0.0.1:9"), S3Credentials("k", "s"))
    assert client.meta.service_model.service_name == "s3"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    loader = _s3_loader(str(tmp_path))
    assert loader.list_available_services("service-2") == ["s3"]
    assert type(loader.load_service_model("s3", "service-2")) is dict
    assert loader.search_paths[0] == str(tmp_path)
