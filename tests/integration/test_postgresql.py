"""PostgreSQL end to end with a real PostgreSQL 15: archiving, base backups, WAL shipping,
restore to several times, `latest` with WAL still on the source, a renamed single-database
restore, and a sync killed with SIGKILL.

One cluster serves the module (initdb and a restart cost seconds), prepared for archiving and
with a first base backup by its fixture, so that each test stands alone in any order (the
suite runs in a random one): each adds rows with the time they were committed and checks a
restore brings back exactly the rows committed up to the instant asked for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, list_points, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import RestoreError
from protectctl.provider import PrepareRequest, load_provider
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

PASS = b"pg test passphrase"
SOURCE = "finance/ledger-db"


class Env:
    def __init__(self, base: Path, cluster: PgCluster) -> None:
        self.base = base
        self.cluster = cluster
        self.state_dir = base / "state"
        storage = LocalStorage(base / "repo")
        if not Repository.exists(storage):
            Repository.init(storage, PASS, kdf_n=2**10)
        self.job = SourceJob(
            source=SOURCE,
            provider="postgresql",
            spec=cluster.spec(spool_limit="64MiB"),
            storage=storage,
            passphrase=lambda: PASS,
            state_dir=self.state_dir,
            host="local",
            retention=RetentionSpec(keep_within_s=14 * 86400),
        )
        self.committed: list[tuple[int, datetime]] = []  # (row id, an instant after its commit)
        self.next_id = 1
        self.first_prepare: object = None  # what preparing the cluster for archiving changed

    def write(self, n: int, gap_s: float = 0.03) -> None:
        """n rows, one transaction each; remember an instant between each commit and the next."""
        for _ in range(n):
            self.cluster.sql(f"INSERT INTO ledger VALUES ({self.next_id}, clock_timestamp())")
            time.sleep(gap_s)
            self.committed.append((self.next_id, datetime.now(UTC)))
            self.next_id += 1
            time.sleep(gap_s)

    def restore_to(self, when: datetime | str, name: str, **options: object) -> tuple[object, PgCluster]:
        target = self.base / name
        port = pgcluster.free_port(26000)
        result = restore(self.job, when, target=target, options={"port": port, **options})  # type: ignore[arg-type]
        return result, PgCluster(self.base, port, name)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = pgcluster.base_dir()
    cluster = PgCluster(base).init().start()
    cluster.sql("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
    cluster.sql("CREATE DATABASE shop")
    cluster.sql("CREATE TABLE orders (id int, item text)", database="shop")
    cluster.sql("INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100) g", database="shop")
    try:
        env = Env(base, cluster)
        env.first_prepare = load_provider("postgresql").prepare_host(  # type: ignore[attr-defined]
            PrepareRequest(SOURCE, env.job.spec, env.state_dir)
        )
        assert run_backup(env.job, "full").ok  # the base backup every test may restore from
        yield env
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


def rows_in(cluster: PgCluster, port: int) -> list[int]:
    out = cluster.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger", port=port)
    return [int(x) for x in out.split(",") if x]


def test_1_apply_configures_archiving(env: Env) -> None:
    provider = load_provider("postgresql")
    provider.spec_model.model_validate(env.job.spec)  # the job's spec is a valid member spec
    outcome: Any = env.first_prepare  # made by the fixture, before any other test
    assert any("archive_mode" in c for c in outcome.changes), outcome
    assert any("restarted" in c for c in outcome.changes)
    assert any("archiving checked" in c for c in outcome.changes)
    assert env.cluster.sql("SHOW archive_mode") == "on"
    again = provider.prepare_host(PrepareRequest(SOURCE, env.job.spec, env.state_dir))  # type: ignore[attr-defined]
    assert not any("restarted" in c for c in again.changes)  # idempotent: nothing left to change


def test_2_restore_to_several_times_brings_back_exactly_the_committed_rows(env: Env) -> None:
    start = len(env.committed)  # rows other tests committed before (any order) come back too
    env.write(3)
    full = run_backup(env.job, "full")
    assert full.ok and full.kind == "full", full
    env.write(4)
    first_sync = run_backup(env.job, "sync")
    assert first_sync.ok and first_sync.kind == "sync"
    env.write(4)
    second_sync = run_backup(env.job, "sync")
    assert second_sync.ok
    env.write(3)
    third_sync = run_backup(env.job, "sync")
    assert third_sync.ok

    ours = [full.point_id, first_sync.point_id, second_sync.point_id, third_sync.point_id]
    kinds = {p.id: p.kind for p in list_points(env.job.storage, PASS, "finance")}
    assert [kinds[i] for i in ours] == ["full", "sync", "sync", "sync"]
    for index in (3, 6, 9, 12):  # after our 4th, 7th, 10th and 13th row committed
        row_id, when = env.committed[start + index]
        result, restored = env.restore_to(when, f"r{index}")
        try:
            assert rows_in(restored, restored.port) == list(range(1, row_id + 1)), (index, result)
            assert oct((restored.data).stat().st_mode & 0o777) == "0o700"
            assert restored.data.stat().st_uid == env.cluster.uid
            assert restored.sql("SHOW archive_mode") == "off"  # never writes into the source's repository
            details = result.details  # type: ignore[attr-defined]
            assert details["mode"] == "time" and details["target_time"] == when.isoformat()
            assert details["last_replayed_xact_time"] is not None
        finally:
            restored.stop("immediate")


def test_3_time_outside_the_shipped_wal_is_refused_clearly(env: Env) -> None:
    points = list_points(env.job.storage, PASS, "finance")
    with pytest.raises(RestoreError) as early:
        restore(env.job, points[0].time - timedelta(hours=1), target=env.base / "never1")
    assert "before the first base backup" in early.value.message
    with pytest.raises(RestoreError) as late:
        restore(env.job, datetime.now(UTC) + timedelta(hours=1), target=env.base / "never2")
    assert "after the last shipped WAL" in late.value.message and "latest" in (late.value.hint or "")
    assert not (env.base / "never2").exists()


def test_4_latest_rolls_forward_wal_still_on_the_source(env: Env) -> None:
    env.write(5, gap_s=0.005)  # committed, never shipped: in pg_wal (and perhaps the spool) only
    expected = list(range(1, env.next_id))
    result, restored = env.restore_to("latest", "rlatest")
    try:
        assert rows_in(restored, restored.port) == expected
        assert result.details["wal_files_from_source"] >= 1  # type: ignore[attr-defined]
    finally:
        restored.stop("immediate")


def test_5_single_database_restored_under_a_new_name(env: Env) -> None:
    env.write(1)
    mistake = env.committed[-1][1]  # before the DELETE: the last ledger row was committed earlier
    env.cluster.sql("DELETE FROM orders WHERE id > 10", database="shop")  # the mistake
    run_backup(env.job, "sync")
    result = restore(
        env.job, mistake, target=env.base / "dbwork", options={"database": "shop", "as_name": "shop_restored"}
    )
    assert result.details["as"] == "shop_restored"  # type: ignore[attr-defined]
    assert env.cluster.sql("SELECT count(*) FROM orders", database="shop_restored") == "100"
    assert env.cluster.sql("SELECT count(*) FROM orders", database="shop") == "10"
    assert not any(p.name.startswith(".protectctl-pgdb-") for p in (env.base / "dbwork").iterdir())


def test_6_sigkill_during_a_sync_loses_nothing(env: Env) -> None:
    env.write(3, gap_s=0.005)
    env.cluster.sql("SELECT pg_switch_wal()")
    code = (
        "import sys, time\n"
        "from tests.integration.test_postgresql import kill_target\n"
        "kill_target(sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(env.base), str(env.cluster.port)], cwd=str(Path(__file__).resolve().parents[2])
    )
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    expected = list(range(1, env.next_id))
    after = run_backup(env.job, "sync")
    assert after.ok
    result, restored = env.restore_to(env.committed[-1][1], "rkill")
    try:
        assert rows_in(restored, restored.port) == expected
    finally:
        restored.stop("immediate")


def kill_target(base: str, port: str) -> None:
    """Run in a child: a sync whose storage writes are slowed, so the parent can kill it midway."""
    from protectctl.engine.storage.local import LocalStorage

    class Slow(LocalStorage):
        def put(self, kind, name, data):  # type: ignore[no-untyped-def]
            time.sleep(0.5)
            super().put(kind, name, data)

    cluster = PgCluster(Path(base), int(port))
    job = SourceJob(
        source=SOURCE,
        provider="postgresql",
        spec=cluster.spec(spool_limit="64MiB"),
        storage=Slow(Path(base) / "repo"),
        passphrase=lambda: PASS,
        state_dir=Path(base) / "state",
        host="local",
        retention=RetentionSpec(keep_within_s=14 * 86400),
    )
    run_backup(job, "sync")


def test_7_ls_and_versions_answer_with_databases_and_windows_cat_refuses(env: Env) -> None:
    from protectctl.browse import contents, service
    from protectctl.errors import ProtectctlError

    source = service.BrowseSource(
        SOURCE, "postgresql", env.job.spec, {}, lambda: Repository.open(env.job.storage, PASS)
    )
    listing = service.ls(source, "", "latest")
    assert isinstance(listing, contents.Listing)
    doc = listing.to_json()
    by_name = {e["name"]: e for e in doc["entries"]}  # type: ignore[attr-defined]
    assert {"postgres", "shop"} <= by_name.keys() and not any(n.startswith("template") for n in by_name)
    assert by_name["shop"]["type"] == "database" and by_name["shop"]["size"] > 1_000_000
    assert doc["point"]["kind"] == "full" and doc["read_from"] == {"medium": "disk"}  # type: ignore[index]
    only = service.ls(source, "shop", "latest")
    assert [e["name"] for e in only.to_json()["entries"]] == ["shop"]  # type: ignore[attr-defined]

    # a database created after a base backup is in the windows of the bases that followed only
    env.cluster.sql("CREATE DATABASE browse_later")
    later = run_backup(env.job, "full")
    assert later.ok
    history = service.versions(source, "browse_later").to_json()
    (window,) = history["versions"]  # type: ignore[misc]
    assert window["first_point"]["id"] == later.point_id and window["type"] == "database"
    assert window["recoverable_from"] <= window["recoverable_to"]
    shop = service.versions(source, "shop").to_json()["versions"]
    assert len(shop) >= 2 and shop[-1]["first_point"]["id"] == later.point_id  # type: ignore[index]
    with pytest.raises(ProtectctlError) as missing:
        service.versions(source, "no_such_db")
    assert "database 'no_such_db' is in no recoverable window" in missing.value.message
    with pytest.raises(ProtectctlError) as refused:
        service.cat(source, "shop", "latest", lambda _b: None)
    assert "holds databases, not files" in refused.value.message and "--database shop" in (refused.value.hint or "")
