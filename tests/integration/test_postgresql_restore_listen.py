"""Where a restored PostgreSQL copy listens, and how a restore that cannot reach it ends (issue 11).

The source cluster is started with its socket directory on the server's command line
(`pg_ctl -o "-k DIR"`), unlike its postgresql.conf, as the user who found a restore polling
silently for 24 h had it: the copy must listen in the socket directory, on 127.0.0.1 and the
port protectctl chose, whatever the copied files say; a port in use is refused before anything
is written; a missing role is reported in the server's words, by apply (through the CLI) and by
a restore; a copy protectctl cannot find ends with its log after `recoveryTimeout` without
progress instead of hanging. One cluster, one base backup for the module.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import ProviderError, RestoreError
from protectctl.progress import NullProgress
from protectctl.provider import PrepareRequest, load_provider
from protectctl.providers.postgresql import restore_cluster, restore_config
from tests.conftest import cli_env, write_policy
from tests.integration import pgcluster
from tests.integration.pgcluster import PG_BIN, PgCluster

pytestmark = pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))

PASS = b"pg listen test passphrase"
SOURCE = "finance/ledger-db"


class Site:
    def __init__(self, base: Path, cluster: PgCluster, cmdline_sock: Path) -> None:
        self.base = base
        self.cluster = cluster
        self.sock = cmdline_sock  # where the source really listens (its command line)
        storage = LocalStorage(base / "repo")
        Repository.init(storage, PASS, kdf_n=2**10)
        self.job = self.job_with()
        self.restores = 0

    def job_with(self, **spec: object) -> SourceJob:
        return SourceJob(
            source=SOURCE,
            provider="postgresql",
            spec=self.cluster.spec(socket_dir=str(self.sock), spool_limit="64MiB", **spec),
            storage=LocalStorage(self.base / "repo"),
            passphrase=lambda: PASS,
            state_dir=self.base / "state",
            host="local",
            retention=RetentionSpec(keep_within_s=86400),
        )

    def target(self) -> Path:
        self.restores += 1
        return self.base / f"restored{self.restores}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    base = pgcluster.base_dir("protectctl-pglisten-")
    cluster = PgCluster(base).init(archive_mode="on")  # archiving on from the start: apply needs no restart
    cmdline_sock = base / "cmdline-sock"
    cmdline_sock.mkdir()
    shutil.chown(cmdline_sock, pgcluster.OS_USER)
    try:
        result = pgcluster.as_user(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(cluster.data),
                "-l",
                str(cmdline_sock / "source.log"),
                "-o",
                f"-k {cmdline_sock}",
                "-w",
                "-s",
                "start",
            ]
        )
        assert result.returncode == 0, result.stderr
        assert not (cluster.sock / f".s.PGSQL.{cluster.port}").exists()  # postgresql.conf's directory: unused
        site = Site(base, cluster, cmdline_sock)
        load_provider("postgresql").prepare_host(  # type: ignore[attr-defined]
            PrepareRequest(SOURCE, site.job.spec, base / "state")
        )
        assert run_backup(site.job, "full").ok
        yield site
    finally:
        for data in base.iterdir():
            if data.is_dir():
                pgcluster.stop_dir(data)
        shutil.rmtree(base, ignore_errors=True)


def psql(site: Site, port: int, sql: str, *, host: str | None = None) -> subprocess.CompletedProcess[str]:
    return pgcluster.as_user(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-At",
            "-w",
            "-h",
            host or str(site.sock),
            "-p",
            str(port),
            "-d",
            "postgres",
            "-c",
            sql,
        ]
    )


class Notes(NullProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, message: str) -> None:
        self.lines.append(message)


def test_the_copy_listens_where_protectctl_chose_and_tcp_is_not_trusted(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore_cluster, "PROGRESS_EVERY_S", 0.0)  # a progress line at every poll
    target = site.target()
    port = pgcluster.free_port(27000)
    notes = Notes()
    outcome = restore(site.job, "latest", target=target, options={"port": port}, progress=notes)
    assert any(line.startswith("waiting for recovery (") for line in notes.lines), notes.lines
    try:
        assert (site.sock / f".s.PGSQL.{port}").exists()  # the socket directory of the spec
        assert not (site.cluster.sock / f".s.PGSQL.{port}").exists()  # not the one postgresql.conf names
        assert psql(site, port, "SHOW listen_addresses").stdout.strip() == "127.0.0.1"
        assert psql(site, port, "SELECT pg_is_in_recovery()").stdout.strip() == "f"
        # initdb -A trust wrote `host all all 127.0.0.1/32 trust`: the copy asks for a password over TCP
        assert outcome.details["hba_trust_rewritten"] >= 1
        over_tcp = psql(site, port, "SELECT 1", host="127.0.0.1")
        assert over_tcp.returncode != 0 and "password" in over_tcp.stderr, over_tcp.stderr
        records = [
            line.split()
            for line in (target / "pg_hba.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert ["local", "all", "all", "trust"] in records  # the socket's trust stays
        assert not [r for r in records if r[0].startswith("host") and "trust" in r]
        assert any("scram-sha-256" in note for note in outcome.notes)
    finally:
        pgcluster.stop_dir(target)


def test_a_port_in_use_is_refused_before_anything_is_written(site: Site) -> None:
    target = site.target()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(RestoreError, match=rf"port {taken} is in use \(something listens on 127.0.0.1:{taken}\)"):
            restore(site.job, "latest", target=target, options={"port": taken})
    with pytest.raises(RestoreError, match=rf"a server listens on {site.sock}/.s.PGSQL.{site.cluster.port}"):
        restore(site.job, "latest", target=target, options={"port": site.cluster.port})  # the source's own
    assert not target.exists()


def test_a_missing_role_is_reported_in_the_servers_words(site: Site) -> None:
    job = site.job_with(user="nosuch_role")
    with pytest.raises(
        ProviderError, match='cannot reach PostgreSQL .* as role nosuch_role: FATAL: role "nosuch_role" does not exist'
    ):
        load_provider("postgresql").prepare_host(  # type: ignore[attr-defined]
            PrepareRequest(SOURCE, job.spec, site.base / "state")
        )
    target = site.target()
    with pytest.raises(RestoreError, match='cannot connect to it .*FATAL: role "nosuch_role" does not exist'):
        restore(job, "latest", target=target, options={"port": pgcluster.free_port(27200)})
    assert not (target / "postmaster.pid").exists()  # the copy was stopped


def test_a_copy_protectctl_cannot_find_ends_with_its_log(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's hang, reproduced by starting the copy with another socket directory."""
    elsewhere = site.base / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    shutil.chown(elsewhere, pgcluster.OS_USER)
    real = restore_config.server_options

    def astray(**kwargs: object) -> str:
        return real(**{**kwargs, "socket_dir": elsewhere})  # type: ignore[arg-type]

    monkeypatch.setattr(restore_cluster, "server_options", astray)
    target = site.target()
    # how far the copy got before the 2 s without progress depends on the machine's load: not asserted
    with pytest.raises(
        RestoreError,
        match=r"made no recovery progress for 2 s .*connecting says: .*No such file"
        r".*; end of its log: ",
    ):
        restore(
            site.job, "latest", target=target, options={"port": pgcluster.free_port(27400), "recovery_timeout_s": 2}
        )
    assert not (target / "postmaster.pid").exists()


def protectctl(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(None),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_cli_apply_says_why_it_cannot_connect(site: Site) -> None:
    from tests.integration.test_postgresql_cli import policy_text

    text = re.sub(
        r"( +)socketDir: .*",
        lambda m: f"{m[1]}socketDir: {site.sock}\n{m[1]}user: nosuch_role",
        policy_text(site.cluster),
    )
    policy = write_policy(site.base / "site", text.replace("user: nosuch_role", "user: -U"))
    (policy / "passphrase").write_bytes(PASS + b"\n")  # the module's repository
    proc = protectctl(policy, "validate")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "user" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    write_policy(site.base / "site", text)
    proc = protectctl(policy, "apply", "--auto-approve")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert 'FATAL: role "nosuch_role" does not exist' in proc.stdout + proc.stderr, proc.stdout + proc.stderr
