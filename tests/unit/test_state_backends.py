"""Local, s3 (on a real SeaweedFS) and postgres (on a real PostgreSQL 15) pass one state-backend suite."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protectctl.state.backend import StateBackend
from tests.seaweed import ADMIN, Seaweed
from tests.unit.state_suite import StateSuite, build


class TestLocalState(StateSuite):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> dict[str, Any]:
        return {"kind": "local", "path": str(tmp_path / "state.json")}

    @pytest.fixture
    def unreachable(self, tmp_path: Path) -> StateBackend:
        (tmp_path / "state.json").mkdir()
        return build({"kind": "local", "path": str(tmp_path / "state.json")})


def s3_spec(seaweed: Seaweed, bucket: str, **extra: object) -> dict[str, Any]:
    return {
        "kind": "s3",
        "endpoint": seaweed.endpoint,
        "bucket": bucket,
        "key": "state/prod.json",
        "key_id": ADMIN[0],
        "secret": ADMIN[1],
        **extra,
    }


class TestS3State(StateSuite):
    @pytest.fixture
    def spec(self, seaweed: Seaweed) -> dict[str, Any]:
        return s3_spec(seaweed, seaweed.new_bucket())

    @pytest.fixture
    def unreachable(self) -> StateBackend:
        return build(
            {"kind": "s3", "endpoint": "http://127.0.0.1:9", "bucket": "b", "key": "k", "key_id": "k", "secret": "s"}
        )


def test_s3_lock_of_a_silent_holder_elsewhere_is_taken_over_after_its_lease(seaweed: Seaweed) -> None:
    spec = s3_spec(seaweed, seaweed.new_bucket())
    client = seaweed.client()
    silent = {
        "pid": 1,
        "host": "ci-runner-7",
        "command": "apply",
        "time": "t",
        "lease_s": 60,
        "refreshed": time.time() - 30,
    }
    client.put_object(Bucket=spec["bucket"], Key="state/prod.json.lock", Body=json.dumps(silent).encode())
    from protectctl.errors import StateLockedError

    with pytest.raises(StateLockedError, match="ci-runner-7"), build(spec).lock("plan", 0):
        pass  # within its lease: another host's holder is alive as far as we can know
    silent["refreshed"] = time.time() - 61
    client.put_object(Bucket=spec["bucket"], Key="state/prod.json.lock", Body=json.dumps(silent).encode())
    with build(spec).lock("plan", 0):
        body = client.get_object(Bucket=spec["bucket"], Key="state/prod.json.lock")["Body"].read()
        assert json.loads(body)["host"] == socket.gethostname()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    from tests.integration import pgcluster

    why = pgcluster.available()
    if why:
        pytest.skip(why)
    base = pgcluster.base_dir()
    cluster = pgcluster.PgCluster(base).init().start()
    try:
        yield f"host={cluster.sock} port={cluster.port} dbname=postgres user={pgcluster.OS_USER}"
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class TestPostgresState(StateSuite):
    names = iter(range(10**6))

    @pytest.fixture
    def spec(self, postgres: str) -> dict[str, Any]:
        return {"kind": "postgres", "dsn": postgres, "name": f"s{next(self.names)}"}

    @pytest.fixture
    def unreachable(self, tmp_path: Path) -> StateBackend:
        return build(
            {"kind": "postgres", "dsn": f"host={tmp_path} port=1 dbname=x user=x password=hunter2", "name": "x"}
        )


def test_postgres_errors_never_show_the_dsn_password(tmp_path: Path) -> None:
    from protectctl.errors import StateError

    backend = build(
        {"kind": "postgres", "dsn": f"host={tmp_path} port=1 dbname=x user=x password=hunter2", "name": "x"}
    )
    with pytest.raises(StateError) as info:
        backend.read()
    assert "hunter2" not in str(info.value) + str(info.value.hint)
