"""One database restored under a new name into the running cluster, through the real CLI:
`protectctl restore G/M --to-time T --database ledger --as ledger_restored` must create
`ledger_restored` holding exactly the rows committed up to T, leave `ledger` untouched, and
refuse clearly (exit 1, no traceback, nothing left behind) a database that did not exist at T
and an `--as` that already exists.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import write_policy
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster
from tests.integration.test_postgresql_cli import GROUP, MEMBER, cli, policy_text

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

SOURCE = f"{GROUP}/{MEMBER}"


def pg_site(
    prefix: str, edit: Callable[[str], str] = str, *, setup: Sequence[tuple[str, str]] = ()
) -> Iterator[tuple[Path, PgCluster]]:
    """A running cluster (after `setup`: (sql, database) pairs) and a policy protecting it
    (test_postgresql_cli's, changed by `edit`); everything is stopped and removed afterwards."""
    base = pgcluster.base_dir(prefix)
    cluster = PgCluster(base).init().start()
    try:
        for sql, database in setup:
            cluster.sql(sql, database=database)
        policy = write_policy(base / "site", edit(policy_text(cluster)))
        (policy / "passphrase").write_text(f"{prefix} test passphrase\n")
        os.chmod(policy / "passphrase", 0o600)
        yield policy, cluster
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def site() -> Iterator[tuple[Path, PgCluster]]:
    yield from pg_site(
        "protectctl-pgren-",
        setup=[
            ("CREATE DATABASE ledger", "postgres"),
            ("CREATE TABLE entries (id int PRIMARY KEY, at timestamptz)", "ledger"),
        ],
    )


def insert(cluster: PgCluster, ids: range) -> datetime:
    """One transaction per row in database `ledger`; returns an instant after the last commit."""
    for row in ids:
        cluster.sql(f"INSERT INTO entries VALUES ({row}, clock_timestamp())", database="ledger")
        time.sleep(0.02)
    time.sleep(0.05)
    return datetime.now(UTC)


def ids_in(cluster: PgCluster, database: str) -> list[int]:
    out = cluster.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM entries", database=database)
    return [int(x) for x in out.split(",") if x]


def databases(cluster: PgCluster) -> set[str]:
    return set(cluster.sql("SELECT datname FROM pg_database WHERE NOT datistemplate").split())


def leftovers(cluster: PgCluster) -> list[str]:
    return sorted(p.name for p in cluster.base.iterdir() if p.name.startswith(".protectctl-pgdb-"))


def test_cli_single_database_restored_under_new_name(site: tuple[Path, PgCluster]) -> None:
    policy, cluster = site
    cli(policy, "apply", "--auto-approve")
    insert(cluster, range(1, 4))
    cli(policy, "run", "full", GROUP)
    t = insert(cluster, range(4, 7))  # T: rows 1..6 committed, 7.. not yet
    time.sleep(0.1)
    insert(cluster, range(7, 10))
    cluster.sql("UPDATE entries SET at = now() WHERE id = 1", database="ledger")  # a change after T
    cli(policy, "run", "sync", GROUP)

    done = cli(
        policy,
        "restore",
        SOURCE,
        "--to-time",
        t.isoformat(),
        "--database",
        "ledger",
        "--as",
        "ledger_restored",
        timeout=300,
    )
    assert f"database ledger loaded as ledger_restored into the cluster on port {cluster.port}" in done.stdout, (
        done.stdout
    )
    assert ids_in(cluster, "ledger_restored") == list(range(1, 7))
    # the row changed after T is as it was at T in the copy, changed in the original
    changed = "SELECT at > (SELECT max(at) FROM entries WHERE id BETWEEN 2 AND 9) FROM entries WHERE id = 1"
    assert cluster.sql(changed, database="ledger_restored") == "f"
    assert cluster.sql(changed, database="ledger") == "t"
    assert ids_in(cluster, "ledger") == list(range(1, 10))  # the original is untouched
    assert cluster.sql("SHOW archive_mode") == "on"  # the running cluster keeps archiving
    assert leftovers(cluster) == []  # the temporary cluster is stopped and removed

    # a database that did not exist at T: a clear refusal naming the ones that did
    missing = cli(
        policy,
        "restore",
        SOURCE,
        "--to-time",
        t.isoformat(),
        "--database",
        "nosuch",
        "--as",
        "nosuch_copy",
        expect=1,
        timeout=300,
    )
    assert "database 'nosuch' did not exist at that time" in missing.stderr, missing.stderr
    assert "ledger" in missing.stderr  # the hint lists the databases there were
    assert "nosuch_copy" not in databases(cluster)
    assert leftovers(cluster) == []

    # an --as that already exists: refused before anything is restored (no timed bound here: a
    # loaded machine is slow, not wrong; the untouched database and no leftovers say it)
    taken = cli(
        policy,
        "restore",
        SOURCE,
        "--to-time",
        t.isoformat(),
        "--database",
        "ledger",
        "--as",
        "ledger_restored",
        expect=1,
    )
    assert "database 'ledger_restored' already exists" in taken.stderr, taken.stderr
    assert "--as" in taken.stderr
    assert ids_in(cluster, "ledger_restored") == list(range(1, 7))
    assert leftovers(cluster) == []

    # --as without --database and --database without --as are usage errors, not tracebacks
    cli(policy, "restore", SOURCE, "--to-time", t.isoformat(), "--as", "x", expect=1)
    cli(policy, "restore", SOURCE, "--to-time", t.isoformat(), "--database", "ledger", expect=1)
