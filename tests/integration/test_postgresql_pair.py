"""A primary/standby pair declared as one source (`hosts: [db1, db2]`), through the real CLI.

Two real PostgreSQL 15 clusters on this machine: a primary started by pgcluster.py and a
streaming standby made with `pg_basebackup -R`, declared as two local Hosts with their own
roots (so their agents, spools and timers are apart). Asserted: one source resource with
archiving configured on both clusters and timers on both hosts; a job on the host that is not
the backup node exits 0 saying so; base backups from the primary (or from the standby with
`backupFrom: standby`); after a failover (the standby promoted) backups continue on the new
primary, and restores to a time before and after the failover return exactly the rows
committed by then (timeline-aware).
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_policy
from tests.integration import pgcluster
from tests.integration.pgcluster import PG_BIN, PgCluster
from tests.integration.test_postgresql_cli import cli

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

GROUP = "finance"
MEMBER = "ledger-db"
SOURCE = f"{GROUP}/{MEMBER}"


@dataclass
class Pair:
    policy: Path
    primary: PgCluster
    standby: PgCluster

    @property
    def base(self) -> Path:
        return self.primary.base

    def agent(self, host: str) -> str:
        return str(self.base / f"{host}root" / "etc/protectctl/agent.yaml")


def make_standby(primary: PgCluster) -> PgCluster:
    standby = PgCluster(primary.base, port=pgcluster.free_port(primary.port + 1), name="standby")
    assert standby.port != primary.port
    standby.data.mkdir(mode=0o700)
    os.chown(standby.data, standby.uid, standby.gid)
    made = pgcluster.as_user(
        [
            str(PG_BIN / "pg_basebackup"),
            "-h",
            str(primary.sock),
            "-p",
            str(primary.port),
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        ]
    )
    assert made.returncode == 0, made.stderr
    with (standby.data / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {standby.port}\nhot_standby = on\n")
    standby.start()
    return standby


def policy_text(primary: PgCluster, standby: PgCluster, backup_from: str) -> str:
    hosts = "".join(
        textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: {name}}}
        spec: {{address: local, root: {primary.base}/{name}root}}
        ---
        """)
        for name in ("db1", "db2")
    )
    return hosts + textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {{name: repo-key}}
        spec:
          passphrase: {{file: ./passphrase}}
        ---
        apiVersion: protectctl/v1
        kind: Storage
        metadata: {{name: primary}}
        spec: {{type: local, path: {primary.base}/repo, encryption: {{key: repo-key}}}}
        ---
        apiVersion: protectctl/v1
        kind: SLA
        metadata: {{name: db-tier}}
        spec:
          sync: every 5m
          full: daily at 20:00
          retention: {{disk: 14d}}
        ---
        apiVersion: protectctl/v1
        kind: ProtectionGroup
        metadata: {{name: {GROUP}}}
        spec:
          sla: db-tier
          storage: primary
          members:
            - name: {MEMBER}
              hosts: [db1, db2]
              postgresql:
                dataDir: {primary.data}
                port: {primary.port}
                socketDir: {primary.sock}
                osUser: {pgcluster.OS_USER}
                binDir: {pgcluster.PG_BIN}
                allowRestart: true
                spoolLimit: 64MiB
                backupFrom: {backup_from}
                perHost:
                  db2: {{dataDir: {standby.data}, port: {standby.port}}}
        """)


def pair_site(backup_from: str) -> Iterator[Pair]:
    base = pgcluster.base_dir("protectctl-pgpair-")
    try:
        primary = PgCluster(base).init(wal_keep_size="'256MB'").start()
        primary.sql("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
        standby = make_standby(primary)
        policy = write_policy(base / "site", policy_text(primary, standby, backup_from))
        (policy / "passphrase").write_text("pg pair test passphrase\n")
        os.chmod(policy / "passphrase", 0o600)
        yield Pair(policy, primary, standby)
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pair() -> Iterator[Pair]:
    yield from pair_site("primary")


@pytest.fixture
def pair_from_standby() -> Iterator[Pair]:
    yield from pair_site("standby")


def insert(cluster: PgCluster, ids: range) -> datetime:
    """One transaction per row on `cluster`; returns an instant after the last commit."""
    for row in ids:
        cluster.sql(f"INSERT INTO ledger VALUES ({row}, clock_timestamp())")
        time.sleep(0.02)
    time.sleep(0.05)
    return datetime.now(UTC)


def rows_in(cluster: PgCluster, port: int) -> list[int]:
    out = cluster.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger", port=port)
    return [int(x) for x in out.split(",") if x]


def wait_replayed(primary: PgCluster, standby: PgCluster) -> None:
    want = primary.sql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + 30
    while standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{want}'::pg_lsn") != "t":
        assert time.monotonic() < deadline, "the standby did not catch up"
        time.sleep(0.05)


def points(pair: Pair) -> tuple[list[dict[str, Any]], list[str]]:
    listed = json.loads(cli(pair.policy, "points", "list", SOURCE, "--json").stdout)
    return listed["points"], listed["recovery_windows"][SOURCE]


def restore_rows(pair: Pair, when: datetime | str, name: str) -> tuple[list[int], dict[str, object]]:
    port = pgcluster.free_port(27000)
    when_text = when if isinstance(when, str) else when.isoformat()
    try:
        result = json.loads(
            cli(
                pair.policy,
                "restore",
                SOURCE,
                "--to-time",
                when_text,
                "--target",
                str(pair.base / name),
                "--port",
                str(port),
                "--json",
                timeout=120,
            ).stdout
        )
    except Exception:  # the restored server's own words, for whoever reads the failure
        log = pair.base / name / "protectctl-restore.log"
        print(log.read_text()[-5000:] if log.exists() else "(no restore log)")
        raise
    restored = PgCluster(pair.base, port, name)
    try:
        restored.wait_ready(port, timeout_s=10)
        return rows_in(restored, port), result["details"]
    finally:
        restored.stop("immediate")


def assert_one_source_both_hosts(pair: Pair) -> None:
    state = cli(pair.policy, "state", "list").stdout.split()
    assert [a for a in state if a.startswith("source.")] == [f"source.{SOURCE}"]
    schedules = {a for a in state if a.startswith("schedule.")}
    assert {
        f"schedule.{SOURCE}/sync",
        f"schedule.{SOURCE}/full",
        f"schedule.{SOURCE}/sync@db2",
        f"schedule.{SOURCE}/full@db2",
    } <= schedules, schedules
    for host in ("db1", "db2"):
        timers = list((pair.base / f"{host}root").rglob("*-sync.timer"))
        assert timers, f"no sync timer on {host}"
        assert (pair.base / f"{host}root/etc/protectctl/sources/{GROUP}--{MEMBER}.yaml").exists()
    for cluster, host in ((pair.primary, "db1"), (pair.standby, "db2")):
        assert cluster.sql("SHOW archive_mode") == "on"
        assert f"{host}root/var/lib/protectctl-spool" in cluster.sql("SHOW archive_command")


def test_pair_backs_up_the_primary_and_follows_a_failover(pair: Pair) -> None:
    primary, standby = pair.primary, pair.standby
    applied = cli(pair.policy, "apply", "--auto-approve")
    assert "0 failed" in applied.stdout, applied.stdout
    assert_one_source_both_hosts(pair)
    cli(pair.policy, "plan", "--detailed-exitcode")  # both nodes prepared: nothing left to change

    insert(primary, range(1, 4))
    full = cli(pair.policy, "run", "full", GROUP)
    assert f"{SOURCE}: full point" in full.stdout, full.stdout
    # the standby's own timers: not the backup node, exit 0, no point
    for job in ("sync", "full"):
        skipped = cli(pair.policy, "--agent-config", pair.agent("db2"), "run", job, GROUP)
        assert "not the backup node: db2 is the standby" in skipped.stdout, skipped.stdout
    t1 = insert(primary, range(4, 7))
    time.sleep(0.1)
    insert(primary, range(7, 10))
    assert f"{SOURCE}: sync point" in cli(pair.policy, "--agent-config", pair.agent("db1"), "run", "sync", GROUP).stdout
    assert len(points(pair)[0]) == 2

    # failover: the primary stops, the standby is promoted (a new timeline). WAL written since
    # the sync (here a checkpoint) makes the shutdown switch segments: the old primary archives
    # that segment into its own spool, and only its agent can ship it.
    primary.sql("CHECKPOINT")
    wait_replayed(primary, standby)
    primary.stop("fast")
    promoted = pgcluster.as_user([str(PG_BIN / "pg_ctl"), "-D", str(standby.data), "-w", "-s", "promote"])
    assert promoted.returncode == 0, promoted.stderr
    assert standby.sql("SELECT pg_is_in_recovery()") == "f"
    leftover = cli(pair.policy, "--agent-config", pair.agent("db1"), "run", "sync", GROUP)
    assert f"{SOURCE}: sync point" in leftover.stdout, leftover.stdout
    down = cli(pair.policy, "--agent-config", pair.agent("db1"), "run", "sync", GROUP)
    assert "not the backup node: db1 is not reachable" in down.stdout, down.stdout

    t2 = insert(standby, range(10, 13))
    time.sleep(0.1)
    insert(standby, range(13, 16))
    after = cli(pair.policy, "run", "sync", GROUP)  # from the control machine: runs on db2 now
    assert f"{SOURCE}: sync point" in after.stdout, after.stdout

    listed, windows = points(pair)
    assert [p["kind"] for p in listed] == ["full", "sync", "sync", "sync"]
    assert [p["host"] for p in listed] == ["db1", "db1", "db1", "db2"]  # one series of points from both nodes
    shipped = [(w["name"], p["host"]) for p in listed for w in p["extra"]["pg"]["wal"]]
    assert any(name.startswith("00000002") and host == "db2" for name, host in shipped), (
        shipped,
        [p["extra"]["pg"]["history"] for p in listed],
    )
    assert len(windows) == 1 and windows[0].startswith("recoverable from"), windows  # continuous, no gap

    rows, details = restore_rows(pair, t1, "before")
    assert rows == list(range(1, 7)), details
    rows, details = restore_rows(pair, t2, "after")
    assert rows == list(range(1, 13)), details
    assert details["timeline"] == 3  # replayed timeline 1, then 2 (the failover), promoted onto 3

    # backups continue on the new primary
    again = cli(pair.policy, "run", "full", GROUP)
    assert f"{SOURCE}: full point" in again.stdout, again.stdout
    assert points(pair)[0][-1]["host"] == "db2"
    assert rows_in(standby, standby.port) == list(range(1, 16))


def test_pair_full_from_the_standby(pair_from_standby: Pair) -> None:
    pair = pair_from_standby
    primary, standby = pair.primary, pair.standby
    cli(pair.policy, "apply", "--auto-approve")
    insert(primary, range(1, 4))
    primary.sql("CHECKPOINT")  # a restart point for the standby's backup to start from
    wait_replayed(primary, standby)

    skipped = cli(pair.policy, "--agent-config", pair.agent("db1"), "run", "full", GROUP)
    assert "not the backup node: db1 is the primary" in skipped.stdout, skipped.stdout
    full = cli(pair.policy, "--agent-config", pair.agent("db2"), "run", "full", GROUP)
    assert f"{SOURCE}: full point" in full.stdout, full.stdout
    # the standby's sync timer does nothing: WAL ships from the primary
    idle = cli(pair.policy, "--agent-config", pair.agent("db2"), "run", "sync", GROUP)
    assert "not run here" in idle.stdout, idle.stdout

    t = insert(primary, range(4, 7))
    time.sleep(0.1)
    insert(primary, range(7, 10))
    cli(pair.policy, "run", "sync", GROUP)

    listed, windows = points(pair)
    assert [(p["kind"], p["host"]) for p in listed] == [("full", "db2"), ("sync", "db1")]
    assert "BACKUP FROM: standby" in listed[0]["extra"]["pg"]["base"]["backup_label"]
    assert len(windows) == 1 and windows[0].startswith("recoverable from"), windows
    rows, details = restore_rows(pair, t, "fromstandby")
    assert rows == list(range(1, 7)), details
    assert rows_in(primary, primary.port) == list(range(1, 10))


def test_pair_validation_says_what_is_wrong(tmp_path: Path) -> None:
    cluster = PgCluster(tmp_path, port=5999)  # not started: validate reads the policy only
    good = policy_text(cluster, cluster, "primary")
    broken = good.replace("hosts: [db1, db2]", "hosts: [db1, db1, db9]\n      host: db1").replace(
        "db2: {dataDir", "db7: {dataDir"
    ) + textwrap.dedent("""\
            ---
            apiVersion: protectctl/v1
            kind: ProtectionGroup
            metadata: {name: files}
            spec:
              sla: db-tier
              storage: primary
              members:
                - {name: docs, hosts: [db1, db2], filesystem: {path: /srv/docs}}
            """)
    policy = write_policy(tmp_path / "bad", broken)
    out = cli(policy, "validate", expect=1).stderr
    assert "exactly one of `host: NAME` or `hosts: [NAME, NAME]`" in out, out
    policy = write_policy(tmp_path / "bad2", broken.replace("\n      host: db1", ""))
    out = cli(policy, "validate", expect=1).stderr
    assert "must be two or more different Hosts" in out, out
    assert "Host 'db9' is not defined" in out, out
    assert "perHost names 'db7'" in out, out
    spans = next(line for line in out.splitlines() if "`hosts:` is for sources that span several hosts (" in line)
    assert "postgresql" in spans.split("(", 1)[1].split(")", 1)[0], out  # every multi-host kind is named
    policy = write_policy(tmp_path / "good", good)
    (policy / "passphrase").write_text("x\n")
    plan = json.loads(cli(policy, "plan", "--json", expect=0).stdout)
    addresses = [c["address"] for c in plan["changes"]]
    assert addresses.count(f"source.{SOURCE}") == 1
    assert f"schedule.{SOURCE}/prune" in addresses and f"schedule.{SOURCE}/prune@db2" not in addresses
