"""Prune of a PostgreSQL source with a real PostgreSQL 15: retention keeps what recovery to any
instant of the window needs (the base backup before the horizon and the WAL after it), forgets
the rest, and a restore to an instant just inside the window still brings back exactly the
rows committed up to it.

Points: B0, W0, B1, W1, [horizon], W2, B2, W3 (B = full, W = sync). Without log-chain rules the
horizon would cut W1 (needed to roll B1 forward to the horizon) and the window would start at
B2; with them B0 and W0 go, B1 and W1 stay.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, list_points, prune, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.provider import PrepareRequest, load_provider
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

PASS = b"pg prune passphrase"
SOURCE = "finance/ledger-db"


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[PgCluster, SourceJob]]:
    base = pgcluster.base_dir("protectctl-pg-prune-")
    cluster = PgCluster(base).init().start()
    cluster.sql("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
    storage = LocalStorage(base / "repo")
    Repository.init(storage, PASS, kdf_n=2**10)
    job = SourceJob(
        source=SOURCE,
        provider="postgresql",
        spec=cluster.spec(spool_limit="64MiB"),
        storage=storage,
        passphrase=lambda: PASS,
        state_dir=base / "state",
        host="local",
        retention=RetentionSpec(keep_within_s=14 * 86400),
    )
    load_provider("postgresql").prepare_host(PrepareRequest(SOURCE, job.spec, job.state_dir))  # type: ignore[attr-defined]
    try:
        yield cluster, job
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


def test_prune_keeps_the_window_base_and_its_wal_and_restore_inside_the_window_works(
    site: tuple[PgCluster, SourceJob],
) -> None:
    cluster, job = site
    committed: list[tuple[int, datetime]] = []

    def write(n: int) -> None:
        for _ in range(n):
            row = len(committed) + 1
            cluster.sql(f"INSERT INTO ledger VALUES ({row}, clock_timestamp())")
            time.sleep(0.02)
            committed.append((row, datetime.now(UTC)))
            time.sleep(0.02)

    steps = []
    for kind in ("full", "sync", "full", "sync", "HORIZON", "sync", "full", "sync"):
        if kind == "HORIZON":
            time.sleep(1.5)
            horizon = datetime.now(UTC)
            time.sleep(0.2)
            continue
        write(3)
        result = run_backup(job, kind)
        assert result.ok and result.kind == kind, result
        steps.append(result.point_id)
    b0, w0, b1, w1, w2, b2, w3 = steps
    write(2)
    assert run_backup(job, "sync").ok  # the instant after the horizon needs a commit after it, shipped

    now = datetime.now(UTC)
    # whole seconds: the horizon prune uses is up to 1 s before `horizon`, still after W1 (1.5 s margin)
    window = replace(job, retention=RetentionSpec(keep_within_s=math.ceil((now - horizon).total_seconds())))
    result = prune([window], now=now)
    gone = {p.id for p in result.forgotten}
    kept = {p.id: p.reasons for p in result.kept}
    assert gone == {b0, w0}, (gone, kept)
    assert "window base" in kept[b1] and "log of the window" in kept[w1]
    assert {w2, b2, w3} <= set(kept)
    assert {p.id for p in list_points(job.storage, PASS, "finance")} == set(kept)

    # the first commit after the horizon: reached from B1 through W1 and W2 only
    row, when = next((r, t) for r, t in committed if t > horizon)
    target = job.state_dir.parent / "restored"
    port = pgcluster.free_port(26500)
    restored_result = restore(job, when, target=target, options={"port": port})
    restored = PgCluster(job.state_dir.parent, port, "restored")
    try:
        out = restored.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger", port=port)
        assert [int(x) for x in out.split(",") if x] == list(range(1, row + 1)), restored_result
    finally:
        restored.stop("immediate")
