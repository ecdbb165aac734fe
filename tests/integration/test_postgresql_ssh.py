"""PostgreSQL on an SSH host, over real sshd: apply prepares WAL archiving through the host's
agent (`agent prepare`, run over SSH on the host that holds the cluster, never on the control
machine), the agent's full and sync store points, and the control machine restores to a time.

The cluster and the sshd "host" share this machine (loopback), so what proves the path is the
agent: the archive_command apply installs points at the spool under the SSH host's root and
the state records the changes the agent reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.integration import pgcluster
from tests.integration.pgcluster import PgCluster
from tests.integration.sshd import SshdServer, keygen, sshd_available
from tests.integration.test_postgresql_cli import policy_text

pytestmark = [
    pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available())),
    pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available())),
]


def cli(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def site(pinned_wheelhouse: Path) -> Iterator[tuple[Path, PgCluster, SshdServer, Path]]:
    base = pgcluster.base_dir("protectctl-pgssh-")  # 0755: the PostgreSQL OS user reaches the spool
    cluster = PgCluster(base).init().start()
    key = base / "client_ed25519"
    server = SshdServer("db1", "127.0.0.31", base / "db1", keygen(key, "protectctl-control"))
    server.start()
    try:
        cluster.sql("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
        policy = base / "site"
        policy.mkdir()
        # test_postgresql_cli's policy, with its member's Host an SSH host instead of `local`
        text = policy_text(cluster)
        (policy / "policy.yaml").write_text(
            server.host_doc(identity_file=key, scheduler="cron") + text[text.index("---\n") :]
        )
        yield policy, cluster, server, key
    finally:
        server.stop()
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


def on_host(server: SshdServer, key: Path, *args: str) -> tuple[int, str]:
    from protectctl.provision.ssh import SshHost, SshParams

    conn = SshHost(SshParams("db1", server.address, server.port, "root", str(key), server.host_key))
    try:
        status, out, err = conn.exec_bytes(
            (
                str(server.root / "opt/protectctl/bin/protectctl"),
                "--agent-config",
                str(server.root / "etc/protectctl/agent.yaml"),
                *args,
            ),
            timeout_s=300,
        )
    finally:
        conn.close()
    return status, (out + err).decode()


def test_postgresql_on_an_ssh_host_is_prepared_backed_up_and_restored(
    site: tuple[Path, PgCluster, SshdServer, Path],
) -> None:
    policy, cluster, server, key = site
    first = cli(policy, "plan", "--refresh")  # no agent on db1 yet: what prepare changes is apply's to check
    assert (
        "host db1: no protectctl agent there yet (first apply): what apply would change for finance/ledger-db "
        "will be checked at apply" in first.stdout + first.stderr
    ), first.stdout + first.stderr
    applied = cli(policy, "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert cluster.sql("SHOW archive_mode") == "on"
    assert str(server.root) in cluster.sql("SHOW archive_command")  # the spool under the SSH host's root
    state = json.loads((policy / ".protectctl" / "state.json").read_text())
    prepared = state["resources"]["source.finance/ledger-db"]["outputs"]["prepared"]
    assert any("archive_mode" in change for change in prepared), prepared
    # db1's agent reads its own cluster (`agent prepare-preview`): nothing to prepare, no drift
    again = cli(policy, "plan", "--refresh", "--detailed-exitcode")
    assert again.returncode == 0 and "apply will" not in again.stdout + again.stderr, again.stdout + again.stderr

    def insert(ids: range) -> datetime:
        for row in ids:
            cluster.sql(f"INSERT INTO ledger VALUES ({row}, clock_timestamp())")
            time.sleep(0.02)
        time.sleep(0.05)
        return datetime.now(UTC)

    insert(range(1, 4))
    status, said = on_host(server, key, "run", "full", "finance")
    assert status == 0, said
    between = insert(range(4, 7))
    time.sleep(0.1)
    insert(range(7, 10))
    status, said = on_host(server, key, "run", "sync", "finance")
    assert status == 0, said

    listed = cli(policy, "points", "list", "finance/ledger-db", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [p["kind"] for p in json.loads(listed.stdout)["points"]] == ["full", "sync"]
    port = pgcluster.free_port(27100)
    target = cluster.base / "restored"
    restored = cli(
        policy,
        "restore",
        "finance/ledger-db",
        "--to-time",
        between.isoformat(),
        "--target",
        str(target),
        "--port",
        str(port),
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    copy = PgCluster(cluster.base, port, "restored")
    try:
        out = copy.sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger", port=port)
        assert [int(x) for x in out.split(",") if x] == [1, 2, 3, 4, 5, 6]
    finally:
        copy.stop("immediate")

    # onto the SSH host itself (db1:PATH) its agent would restore, but the repository here is a
    # path on this machine, which that host cannot read: refused, saying so, nothing written
    there = cli(
        policy,
        "restore",
        "finance/ledger-db",
        "--to-time",
        between.isoformat(),
        "--target",
        f"db1:{cluster.base / 'on-db1'}",
        "--port",
        str(pgcluster.free_port(27200)),
    )
    assert there.returncode == 1 and "storage primary is a path on this machine" in there.stderr, there.stderr
    assert not (cluster.base / "on-db1").exists()

    # archive_command changed by hand on db1: `plan --refresh` reads it there (the agent answers
    # over SSH) and shows it as drift, which `apply --refresh` repairs by preparing db1 again
    cluster.sql("ALTER SYSTEM SET archive_command = '/bin/true'")
    cluster.sql("SELECT pg_reload_conf()")
    drifted = cli(policy, "plan", "--refresh", "--detailed-exitcode")
    said = drifted.stdout + drifted.stderr
    assert drifted.returncode == 2, said
    assert "source finance/ledger-db on host db1: apply will set archive_command '/bin/true' -> spool WAL" in said
    assert "# drift: host db1: apply will set archive_command" in said, said
    repaired = cli(policy, "apply", "--refresh", "--auto-approve")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert str(server.root) in cluster.sql("SHOW archive_command")
