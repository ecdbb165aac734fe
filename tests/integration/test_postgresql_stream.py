"""`streaming: true`: pg_receivewal run by the agent's `wal-stream` service, through the real CLI.

Apply renders the receiver as a long-running service beside the timers; the test starts that
command as the service would, commits rows, runs one sync (which must not switch WAL) and
then loses the source cluster entirely: `restore --to-time latest` must still return every
committed row, from the repository alone (the partial segment the sync shipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster
from tests.integration.test_postgresql_cli import GROUP, MEMBER, cli, insert, rows_in
from tests.integration.test_postgresql_rename_cli import pg_site

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

SOURCE = f"{GROUP}/{MEMBER}"


@pytest.fixture
def site() -> Iterator[tuple[Path, PgCluster]]:
    def streaming(text: str) -> str:
        return text.replace("spoolLimit: 64MiB", "spoolLimit: 256MiB\n        streaming: true")

    table = "CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)"
    yield from pg_site("protectctl-pgstream-", streaming, setup=[(table, "postgres")])


def start_receiver(policy: Path, agent_config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The command apply put in the stream service, started as systemd would."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "protectctl",
                "-C",
                str(policy),
                "--agent-config",
                str(agent_config),
                "agent",
                "wal-stream",
                GROUP,
                "--member",
                MEMBER,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(None),
        )


def wait_streaming(cluster: PgCluster, log: Path) -> None:
    deadline = time.monotonic() + 30
    while cluster.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'protectctl_%'") != "1":
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_streaming_ships_the_partial_segment_without_switching(site: tuple[Path, PgCluster]) -> None:
    policy, cluster = site
    root = cluster.base / "hostroot"
    cli(policy, "apply", "--auto-approve")
    assert f"schedule.{SOURCE}/stream" in cli(policy, "state", "list").stdout.split()
    (unit,) = root.glob("etc/systemd/system/*-stream.service")
    text = unit.read_text()
    assert "Restart=always" in text and f"agent wal-stream {GROUP} --member {MEMBER}" in text, text
    assert not list(root.glob("etc/systemd/system/*-stream.timer"))
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the unit as systemd reads it: no warning may name it
        checked = subprocess.run(
            [analyze, "verify", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | {"SYSTEMD_LOG_LEVEL": "info"},
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        assert not [line for line in checked.stderr.splitlines() if unit.name in line], checked.stderr

    log = cluster.base / "receiver.log"
    receiver = start_receiver(policy, root / "etc/protectctl/agent.yaml", log)
    try:
        wait_streaming(cluster, log)
        assert (
            cluster.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'protectctl_finance_ledger_db'")
            == "1"
        )
        insert(cluster, range(1, 3))
        cli(policy, "run", "full", GROUP)
        insert(cluster, range(3, 9))
        segment = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        archived = cluster.sql("SELECT archived_count FROM pg_stat_archiver")
        synced = cli(policy, "run", "sync", GROUP)
        assert f"{SOURCE}: sync point" in synced.stdout and "switching WAL instead" not in synced.stderr, synced
        # the sync did not switch WAL: same segment, nothing new archived
        assert cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())") == segment
        assert cluster.sql("SELECT archived_count FROM pg_stat_archiver") == archived

        listed = json.loads(cli(policy, "points", "list", SOURCE, "--json").stdout)
        last = listed["points"][-1]["extra"]["pg"]
        assert last["streamed"] is True and last["covered_through"] == segment, last
        assert segment in [w["name"] for w in last["wal"]]
    finally:
        receiver.send_signal(signal.SIGTERM)
        assert receiver.wait(timeout=30) == 0, log.read_text()
    assert "pg_receivewal started" in log.read_text()
    assert cluster.sql("SELECT count(*) FROM pg_stat_replication") == "0"  # the receiver went with it

    # the source host is lost: its pg_wal and spool cannot help; latest comes from the repository
    cluster.stop("immediate")
    shutil.move(cluster.data, cluster.base / "lost")
    for leftover in (root / "var/lib/protectctl-spool").rglob("0000*"):
        leftover.unlink()
    port = pgcluster.free_port(27500)
    result = json.loads(
        cli(
            policy,
            "restore",
            SOURCE,
            "--to-time",
            "latest",
            "--target",
            str(cluster.base / "back"),
            "--port",
            str(port),
            "--json",
            timeout=300,
        ).stdout
    )
    assert result["details"]["wal_files_from_source"] == 0, result["details"]
    restored = PgCluster(cluster.base, port, "back")
    try:
        restored.wait_ready(port)
        assert rows_in(restored, port) == list(range(1, 9))  # every committed row, RPO = the sync
    finally:
        restored.stop("immediate")
