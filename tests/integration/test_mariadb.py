"""MariaDB through the real CLI, against a real primary/replica pair of mariadbd
(tests/integration/mariadb_server.py: GTID replication, log_slave_updates) shared by the
module and declared as one source (`hosts: [db1, db2]`): `apply` checks binary logging on
both, `run full` streams mariadb-backup of the primary into the repository, `run sync` ships
its closed binlogs, and restores bring back exactly the rows committed by T: a new server on
--port (across several binlogs), one database under a new name into the running primary, and
`latest` after `kill -9` of the primary (the binlogs never shipped, read on the replica). A
sync killed after it stored a binlog leaves no gap: the next sync ships it again. After a
failover (the replica promoted, the old primary made its replica) syncs follow the new
primary and a restore rolls forward through both servers' binlogs.

Binlog times are whole seconds: T is taken more than a second after the last row it must
include, and the rows it must exclude are committed after T.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env, write_policy
from tests.integration import mariadb_server
from tests.integration.db_policy import db_policy
from tests.integration.mariadb_server import MariadbServer, stop_restored

pytestmark = pytest.mark.skipif(mariadb_server.available() is not None, reason=str(mariadb_server.available()))

GROUP = "shop"
MEMBER = "shop-db"
SOURCE = f"{GROUP}/{MEMBER}"


def cli(policy: Path, *args: str, expect: int = 0, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == expect, (
        f"protectctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def policy_text(server: MariadbServer, replica: MariadbServer) -> str:
    member = f"""\
        hosts: [db1, db2]
        mariadb:
          dataDir: {server.data}
          socket: {server.sock}
          osUser: {mariadb_server.OS_USER}
          serverBin: {mariadb_server.SERVER}
          allowRestart: false
          expressMaxPercent: 1000   # a tiny server: each express full's stream is mostly the redo log
          configFile: {server.base}/99-protectctl.cnf   # what apply keeps binlog_format in: not /etc
          perHost:
            db2: {{dataDir: {replica.data}, socket: {replica.sock}}}
        """
    return db_policy(server.base, member, group=GROUP, member=MEMBER, hosts=("db1", "db2"))


def insert(server: MariadbServer, ids: range, table: str = "orders") -> None:
    for row in ids:  # one transaction each
        server.sql(f"INSERT INTO shop.{table} VALUES ({row}, NOW(6))")


def rows(server: MariadbServer, sock: Path, database: str = "shop", table: str = "orders") -> list[int]:
    out = server.sql(f"SELECT id FROM {database}.{table} ORDER BY id", sock=sock)
    return [int(x) for x in out.split()]


def killed_run(policy: Path, kind: str, at: Callable[[str], bool]) -> None:
    """`run KIND` SIGKILLed at the first stderr line `at` accepts, before its point is saved."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "protectctl", "-C", str(policy), "run", kind, GROUP],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if at(line):
            proc.kill()
            break
    assert proc.wait() == -9, f"the {kind} finished before it could be killed"


def killed_sync(policy: Path) -> None:
    """`run sync` SIGKILLed right after it stored a binlog, before its point is saved."""
    killed_run(policy, "sync", lambda line: line.startswith("binlog ") and "shipped" in line)


@dataclass
class Site:
    policy: Path
    server: MariadbServer  # the first primary
    replica: MariadbServer
    t: datetime  # rows 1..6 committed before, 7..9 after
    points: list[dict[str, object]]
    windows: list[str]

    @property
    def servers(self) -> tuple[MariadbServer, MariadbServer]:
        """(primary, replica) now: a test may have failed over."""
        if self.replica.sql("SHOW ALL SLAVES STATUS"):
            return self.server, self.replica
        return self.replica, self.server


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    server = MariadbServer()
    replica = MariadbServer()
    try:
        server.init()
        replica.copy_of(server).start("--server-id=2")
        server.start()
        server.sql(
            "CREATE USER repl@'127.0.0.1' IDENTIFIED BY 'repl-pass'; GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1'"
        )
        replica.replicate_from(server)
        server.sql("CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, at DATETIME(6))")
        policy = write_policy(server.base / "site", policy_text(server, replica))
        (policy / "passphrase").write_text("mariadb test passphrase\n")
        (policy / "passphrase").chmod(0o600)
        applied = cli(policy, "apply", "--auto-approve")
        assert "0 failed" in applied.stdout, applied.stdout  # binary logging is on: nothing to change
        insert(server, range(1, 4))
        assert f"{SOURCE}: full point" in cli(policy, "run", "full", GROUP).stdout
        insert(server, range(4, 6))
        server.sql("FLUSH BINARY LOGS")  # the rows of T span several binlogs
        killed_sync(policy)  # the next sync ships what it stored: the chain stays whole
        insert(server, range(6, 7))
        time.sleep(1.1)  # binlog times are whole seconds
        t = datetime.now(UTC)
        insert(server, range(7, 10))
        assert f"{SOURCE}: sync point" in cli(policy, "run", "sync", GROUP).stdout
        insert(server, range(10, 12))  # committed, never shipped
        listed = json.loads(cli(policy, "points", "list", SOURCE, "--json").stdout)
        yield Site(policy, server, replica, t, listed["points"], listed["recovery_windows"][SOURCE])
    finally:
        for target in server.base.iterdir():
            if target.is_dir():
                stop_restored(target)
        replica.remove()
        server.remove()


def test_points_show_one_window_over_t(site: Site) -> None:
    assert [p["kind"] for p in site.points] == ["full", "sync"]
    full, sync = (p["extra"]["mariadb"] for p in site.points)  # type: ignore[index]
    assert full["base"]["binlog_file"].startswith("mariadb-bin.") and full["base"]["gtid"]
    assert len(sync["binlogs"]) >= 2  # the flushed one and the sync's own
    (window,) = [line for line in site.windows if line.startswith("recoverable")]
    assert any(line.startswith("GTIDs 0-1-") for line in site.windows), site.windows
    _, _, start, _, end = window.split()
    assert (
        datetime.fromisoformat(start.replace("Z", "+00:00"))
        < site.t
        < datetime.fromisoformat(end.replace("Z", "+00:00")) + timedelta(seconds=1)
    ), window


def test_plan_says_what_apply_changes_on_the_servers(site: Site) -> None:
    from protectctl import api
    from protectctl.state.model import State

    fresh = api.make_plan(site.policy, State())  # as before the first apply: the note on the source's creation
    (change,) = [c for c in fresh.changes if c.address == f"source.{SOURCE}"]
    assert any("each server of the pair" in n and "allowRestart: false refuses" in n for n in change.notes)
    primary, _ = site.servers
    host = "db1" if primary is site.server else "db2"
    primary.sql("SET GLOBAL binlog_format = 'MIXED'")
    try:
        out = cli(site.policy, "plan", "--refresh")
        said = out.stdout + out.stderr
        assert f"source {SOURCE} on host {host}: apply will set binlog_format MIXED -> ROW (at once" in said, said
        assert f"apply will write {site.server.base}/99-protectctl.cnf" in said and "apply will restart" not in said
        assert (
            "will be updated in-place (drift)" in said and f"# drift: host {host}: apply will set binlog_format" in said
        )
        repaired = cli(site.policy, "apply", "--refresh", "--auto-approve")  # drift: the source is prepared again
        assert primary.sql("SELECT @@GLOBAL.binlog_format") == "ROW", repaired.stdout
        assert "binlog_format = ROW" in (site.server.base / "99-protectctl.cnf").read_text()
    finally:
        primary.sql("SET GLOBAL binlog_format = 'ROW'")


def test_restore_to_time_is_a_new_server_with_exactly_the_rows_of_t(site: Site) -> None:
    target = site.server.base / "restored"
    port = mariadb_server.free_port(34000)
    try:
        out = json.loads(
            cli(
                site.policy,
                "restore",
                SOURCE,
                "--to-time",
                site.t.isoformat(),
                "--target",
                str(target),
                "--port",
                str(port),
                "--json",
            ).stdout
        )
        details = out["details"]
        assert details["mode"] == "time" and details["port"] == port and details["binlogs"] >= 2, details
        assert rows(site.server, target / "mysqld.sock") == list(range(1, 7))
        assert site.server.sql("SELECT @@port, @@bind_address, @@log_bin", sock=target / "mysqld.sock").split() == [
            str(port),
            "127.0.0.1",
            "0",
        ]
    finally:
        stop_restored(target)
    primary, _ = site.servers
    assert rows(primary, primary.sock) == list(range(1, 12))  # the source is untouched


def test_one_database_restored_under_a_new_name(site: Site) -> None:
    out = cli(
        site.policy,
        "restore",
        SOURCE,
        "--to-time",
        site.t.isoformat(),
        "--database",
        "shop",
        "--as",
        "shop_restored",
        "--target",
        str(site.server.base / "scratch"),
    )
    assert "loaded as shop_restored" in out.stdout, out.stdout
    primary, _ = site.servers  # loaded into the server that is primary now
    assert rows(primary, primary.sock, "shop_restored") == list(range(1, 7))
    assert rows(primary, primary.sock) == list(range(1, 12))
    assert list((site.server.base / "scratch").iterdir()) == []  # the temporary server is gone
    again = cli(
        site.policy,
        "restore",
        SOURCE,
        "--to-time",
        site.t.isoformat(),
        "--database",
        "shop",
        "--as",
        "shop_restored",
        expect=1,
    )
    assert "already exists" in again.stderr


def refused_in_process(policy: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The CLI in this process (no interpreter start): exit 1 and the one-line message on stderr."""
    from protectctl.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["-C", str(policy), *args])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_refused_before_anything_is_written(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    early = (site.t - timedelta(hours=1)).isoformat()
    never = site.server.base / "never"
    refused = refused_in_process(site.policy, capsys, "restore", SOURCE, "--to-time", early, "--target", str(never))
    assert "before the first full backup" in refused and "recoverable:" in refused
    busy = refused_in_process(
        site.policy,
        capsys,
        "restore",
        SOURCE,
        "--to-time",
        "latest",
        "--target",
        str(never),
        "--port",
        str(site.server.port),
    )
    assert f"port {site.server.port} is in use" in busy
    assert not never.exists()


def test_restore_to_a_gtid_stops_after_that_transaction(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    primary, _ = site.servers
    primary.sql("CREATE TABLE IF NOT EXISTS shop.by_gtid (id INT PRIMARY KEY, at DATETIME(6))")
    first = len(rows(primary, primary.sock, table="by_gtid")) + 1
    insert(primary, range(first, first + 2), "by_gtid")
    gtid = primary.sql("SELECT @@gtid_binlog_pos")  # one replication domain: the second row's transaction
    insert(primary, range(first + 2, first + 3), "by_gtid")  # after it: not restored
    assert f"{SOURCE}: sync point" in cli(site.policy, "run", "sync", GROUP).stdout
    target = site.server.base / "by-gtid"
    try:
        out = json.loads(
            cli(site.policy, "restore", SOURCE, "--to-gtid", gtid, "--target", str(target), "--json").stdout
        )
        assert out["details"]["mode"] == "gtid" and out["details"]["last_replayed_gtid"] == gtid, out["details"]
        assert rows(primary, target / "mysqld.sock", table="by_gtid") == list(range(1, first + 2))
    finally:
        stop_restored(target)
    domain, server_id, seqno = gtid.split("-")
    beyond = f"{domain}-{server_id}-{int(seqno) + 1000}"
    never = site.server.base / "never"
    refused = refused_in_process(site.policy, capsys, "restore", SOURCE, "--to-gtid", beyond, "--target", str(never))
    assert f"GTID {beyond} is beyond the shipped binlogs of {SOURCE}" in refused
    both = refused_in_process(
        site.policy,
        capsys,
        "restore",
        SOURCE,
        "--to-gtid",
        gtid,
        "--to-time",
        site.t.isoformat(),
        "--target",
        str(never),
    )
    assert "give --to-time or --to-gtid, not both" in both and not never.exists()


def test_latest_after_kill_replays_the_binlogs_never_shipped(site: Site) -> None:
    target = site.server.base / "latest"
    primary, replica = site.servers
    # committed and never shipped, whatever ran before (the fixture's rows 10 and 11 may be shipped by now)
    primary.sql("CREATE TABLE IF NOT EXISTS shop.late (id INT PRIMARY KEY, at DATETIME(6))")
    late = len(rows(primary, primary.sock, table="late")) + 1
    insert(primary, range(late, late + 1), "late")
    replica.caught_up(primary)
    primary.kill()
    try:
        out = json.loads(
            cli(site.policy, "restore", SOURCE, "--to-time", "latest", "--target", str(target), "--json").stdout
        )
        assert out["details"]["binlogs_from_source"] >= 1, out["details"]  # read on the replica
        assert rows(replica, target / "mysqld.sock") == list(range(1, 12))  # every committed row
        assert rows(replica, target / "mysqld.sock", table="late") == list(range(1, late + 1))
    finally:
        stop_restored(target)
        primary.start()  # crash recovery: the other tests find it running


def test_after_a_failover_syncs_follow_the_new_primary_and_restores_cross_it(site: Site) -> None:
    old, new = site.servers
    new.caught_up(old)
    new.sql("STOP SLAVE; RESET SLAVE ALL")  # promoted
    old.replicate_from(new)  # the old primary follows it
    new.sql("CREATE TABLE shop.after_failover (id INT PRIMARY KEY, at DATETIME(6))")
    insert(new, range(1, 3), "after_failover")
    time.sleep(1.1)  # binlog times are whole seconds
    t2 = datetime.now(UTC)
    insert(new, range(3, 4), "after_failover")
    assert f"{SOURCE}: sync point" in cli(site.policy, "run", "sync", GROUP).stdout
    target = site.server.base / "after-failover"
    try:
        out = json.loads(
            cli(site.policy, "restore", SOURCE, "--to-time", t2.isoformat(), "--target", str(target), "--json").stdout
        )
        assert out["details"]["replay_runs"] == 2, out["details"]  # the old primary's binlogs, then the new one's
        sock = target / "mysqld.sock"
        assert rows(new, sock) == list(range(1, 12))
        assert rows(new, sock, table="after_failover") == [1, 2]
    finally:
        stop_restored(target)


def test_ls_and_versions_list_databases_and_windows(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    from protectctl.cli.main import main

    def run(*args: str) -> dict[str, object]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["-C", str(site.policy), *args, "--json"])
        out = capsys.readouterr().out
        assert exited.value.code == 0, out
        doc: dict[str, object] = json.loads(out)
        return doc

    listing = run("ls", SOURCE, "--to-time", site.t.isoformat())
    full_id = site.points[0]["id"]
    assert listing["point"] == {"id": full_id, "time": site.points[0]["time"], "kind": "full"}
    (shop,) = listing["entries"]  # type: ignore[misc]  # the system schemas are not listed
    assert shop["name"] == "shop" and shop["type"] == "database" and isinstance(shop["size"], int)
    history = run("versions", SOURCE, "shop")
    window = history["versions"][0]  # type: ignore[index]  # later fulls (the express test's) add windows
    assert window["first_point"]["id"] == full_id and window["recoverable_from"] < site.t.isoformat()
    assert window["last_point"]["id"] != full_id and window["points"] >= 2  # its binlogs' points (a failover adds one)
    refused = refused_in_process(site.policy, capsys, "cat", SOURCE, "shop")
    assert "holds databases, not files" in refused and "--database shop --as" in refused


def in_process(policy: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """The CLI in this process (no interpreter start): its --json document."""
    from protectctl.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["-C", str(policy), *args, "--json"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, f"protectctl {' '.join(args)}: {out}\n{err}"
    doc: dict[str, Any] = json.loads(out)
    return doc


def run_full(policy: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`run full` (its one point's id: the pair's other host says it is not the backup node)."""
    out = in_process(policy, capsys, "run", "full", GROUP, *args)
    (point_id,) = [r["point_id"] for r in out["results"] if r.get("point_id")]
    return str(point_id)


def killed_full(policy: Path) -> None:
    """`run full` SIGKILLed while mariadb-backup streams into the repository."""
    killed_run(policy, "full", lambda line: "streaming into the repository" in line)


def test_express_fulls_store_changed_pages_and_restore_to_times_after_each(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    primary, _ = site.servers
    table = "SELECT id, v FROM shop.express ORDER BY id"
    primary.sql("CREATE TABLE IF NOT EXISTS shop.express (id INT PRIMARY KEY, v VARCHAR(40)); DELETE FROM shop.express")
    primary.sql("INSERT INTO shop.express VALUES " + ", ".join(f"({i}, 'first {i}')" for i in range(1, 201)))
    first = run_full(site.policy, capsys, "--no-express")  # a real one: the chain starts here
    primary.sql("UPDATE shop.express SET v = 'changed' WHERE id % 7 = 0; DELETE FROM shop.express WHERE id = 5")
    second = run_full(site.policy, capsys)
    primary.sql("INSERT INTO shop.express VALUES (1001, 'after the second')")
    time.sleep(1.1)  # binlog times are whole seconds
    t1, at_t1 = datetime.now(UTC), primary.sql(table)
    primary.sql("UPDATE shop.express SET v = 'after t1' WHERE id = 1")
    killed_full(site.policy)  # no half point: the next full builds on the same one
    third = run_full(site.policy, capsys)
    primary.sql("INSERT INTO shop.express VALUES (1002, 'after the third')")
    time.sleep(1.1)
    t2, at_t2 = datetime.now(UTC), primary.sql(table)
    primary.sql("DELETE FROM shop.express WHERE id < 100")
    assert in_process(site.policy, capsys, "run", "sync", GROUP)["results"][0]["ok"]  # ships the binlogs past t2
    listed = in_process(site.policy, capsys, "points", "list", SOURCE)
    bases = {p["id"]: p["extra"]["mariadb"]["base"] for p in listed["points"] if p["kind"] == "full"}
    assert list(bases)[-3:] == [first, second, third]  # nothing of the killed one
    assert (
        "express_of" not in bases[first] and bases[first]["real_because"] == "a real full was asked for (--no-express)"
    )
    assert bases[second]["express_of"] == first and bases[third]["express_of"] == second, bases
    assert bases[second]["from_lsn"] == bases[first]["to_lsn"] <= bases[second]["to_lsn"]
    windows = "\n".join(listed["recovery_windows"][SOURCE])
    assert (
        f"express full {third[:12]}: changed pages on full {second[:12]} (restore applies {first[:12]} <- " in windows
    )
    for when, expected, chain in ((t1, at_t1, [first, second]), (t2, at_t2, [first, second, third])):
        target = site.server.base / f"express-{len(chain)}"
        try:
            restore = ("restore", SOURCE, "--to-time", when.isoformat(), "--target", str(target), "--json")
            out = json.loads(cli(site.policy, *restore).stdout)  # a child: the server it starts is not this process's
            assert out["details"]["express_chain"] == chain, out["details"]
            assert primary.sql(table, sock=target / "mysqld.sock") == expected  # byte-exact rows
        finally:
            stop_restored(target)
