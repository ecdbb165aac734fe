"""PostgreSQL through the real CLI, end to end: `apply` configures archiving, `run full` and
`run sync` ship a base backup and WAL, `points list --json` shows the recoverable window, and
`restore --to-time T --port P` brings back a cluster holding exactly the rows committed up to T.

Each step is `python -m protectctl -C POLICY ...` as a subprocess; exit codes are asserted and no
traceback may reach stderr. The cluster is the one tests/integration/pgcluster.py runs as the
`protectctl-pg` OS user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import cli_env, write_policy
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

GROUP = "finance"
MEMBER = "ledger-db"


def cli(
    policy: Path, *args: str, expect: int = 0, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == expect, (
        f"protectctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def policy_text(cluster: PgCluster) -> str:
    return textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: db1}}
        spec: {{address: local, root: {cluster.base}/hostroot}}
        ---
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {{name: repo-key}}
        spec:
          passphrase: {{file: ./passphrase}}
        ---
        apiVersion: protectctl/v1
        kind: Storage
        metadata: {{name: primary}}
        spec: {{type: local, path: {cluster.base}/repo, encryption: {{key: repo-key}}}}
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
              host: db1
              postgresql:
                dataDir: {cluster.data}
                port: {cluster.port}
                socketDir: {cluster.sock}
                osUser: {pgcluster.OS_USER}
                binDir: {pgcluster.PG_BIN}
                allowRestart: true
                spoolLimit: 64MiB
        """)


@pytest.fixture
def site() -> Iterator[tuple[Path, PgCluster]]:
    base = pgcluster.base_dir("protectctl-pgcli-")
    cluster = PgCluster(base).init().start()
    try:
        cluster.sql("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
        # the host root (spool, server log) must be reachable by the PostgreSQL OS user: pytest's
        # tmp_path is 0700, so it lives in the cluster's 0755 base (outside the policy directory)
        policy = write_policy(base / "site", policy_text(cluster))
        (policy / "passphrase").write_text("pg cli test passphrase\n")
        os.chmod(policy / "passphrase", 0o600)
        yield policy, cluster
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


def insert(cluster: PgCluster, ids: range) -> datetime:
    """One transaction per row; returns an instant after the last commit."""
    for row in ids:
        cluster.sql(f"INSERT INTO ledger VALUES ({row}, clock_timestamp())")
        time.sleep(0.02)
    time.sleep(0.05)
    return datetime.now(UTC)


def rows_in(cluster: PgCluster, port: int) -> list[int]:
    out = cluster.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger", port=port)
    return [int(x) for x in out.split(",") if x]


def test_cli_apply_backup_points_and_restore_to_time(site: tuple[Path, PgCluster]) -> None:
    policy, cluster = site
    source = f"{GROUP}/{MEMBER}"

    applied = cli(policy, "apply", "--auto-approve")
    assert "0 failed" in applied.stdout, applied.stdout
    assert cluster.sql("SHOW archive_mode") == "on"
    assert "protectctl-wal.py" in cluster.sql("SHOW archive_command")
    cli(policy, "plan", "--detailed-exitcode")  # archiving is in place: nothing left to change

    insert(cluster, range(1, 4))
    assert f"{source}: full point" in cli(policy, "run", "full", GROUP).stdout
    between = insert(cluster, range(4, 7))  # T: rows 1..6 committed, 7.. not yet
    time.sleep(0.1)
    insert(cluster, range(7, 10))
    assert f"{source}: sync point" in cli(policy, "run", "sync", GROUP).stdout

    listed = json.loads(cli(policy, "points", "list", source, "--json").stdout)
    points = listed["points"]
    assert [p["kind"] for p in points] == ["full", "sync"], points
    assert all(p["complete"] for p in points)
    assert points[0]["extra"]["pg"]["base"]["stop_lsn"]
    assert points[1]["extra"]["pg"]["wal"] and not points[1]["extra"]["pg"]["dropped"]
    (window,) = listed["recovery_windows"][source]  # one window, no gap
    assert window.startswith("recoverable from "), window
    _, _, start_text, _, end_text = window.split()
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (start_text, end_text))
    assert start < between < end, (window, between)

    # a time before the first base backup is refused before anything is written
    early = cli(
        policy,
        "restore",
        source,
        "--to-time",
        (start - timedelta(hours=1)).isoformat(),
        "--target",
        str(cluster.base / "never"),
        expect=1,
    )
    assert "before the first base backup" in early.stderr and "recoverable:" in early.stderr
    assert not (cluster.base / "never").exists()

    # T without a zone is the wall clock of the machine running protectctl (here UTC+05:30)
    zone = "IST-5:30"
    local_t = between.astimezone(timezone(timedelta(hours=5, minutes=30))).replace(tzinfo=None)
    target = cluster.base / "restored"
    port = pgcluster.free_port(27000)
    result = json.loads(
        cli(
            policy,
            "restore",
            source,
            "--to-time",
            local_t.isoformat(),
            "--target",
            str(target),
            "--port",
            str(port),
            "--json",
            env={"TZ": zone},
        ).stdout
    )
    details = result["details"]
    assert details["mode"] == "time" and details["target_time"] == between.isoformat(), details
    assert details["port"] == port and details["last_replayed_xact_time"] is not None
    assert result["point_id"] == points[0]["id"] and result["target"] == str(target)
    restored = PgCluster(cluster.base, port, "restored")
    try:
        # the restore promotes the copy and leaves it running on --port
        restored.wait_ready(port, timeout_s=10)
        assert rows_in(restored, port) == list(range(1, 7))
        assert restored.sql("SHOW archive_mode", port=port) == "off"  # never ships into the source's repository
        assert restored.sql("SELECT pg_is_in_recovery()", port=port) == "f"
    finally:
        restored.stop("immediate")
    assert not (target / "postmaster.pid").exists()
    assert rows_in(cluster, cluster.port) == list(range(1, 10))  # the source is untouched
