"""The fleet over real sshd: three hosts provisioned in parallel, drift repaired, agents
syncing into one append-only repository on a backup server, restore elsewhere.

Hosts h1, h2 (protected) and b1 (backup server) are sshd servers on 127.0.0.2-4, each with
its own host key and root directory. The agent wheelhouse is built once and cached
(~/.cache/protectctl/wheelhouse), so only the first run on a machine pays for `pip wheel`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.sshd import SshdServer, keygen, sshd_available, start_fleet

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


def cli(policy: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args], capture_output=True, text=True, timeout=timeout
    )


def common_docs(storage: str) -> str:
    return (
        textwrap.dedent("""\
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {name: repo-key}
        spec:
          passphrase: {file: ./passphrase}
        ---
        apiVersion: protectctl/v1
        kind: SLA
        metadata: {name: hourly}
        spec:
          sync: every 1h
          full: daily at 20:00
          retention: {disk: 7d}
        ---
        """)
        + storage
        + "\n"
    )


@dataclass
class Fleet:
    policy: Path
    servers: dict[str, SshdServer]
    client_key: Path
    data: dict[str, Path]
    applied: subprocess.CompletedProcess[str]  # the fixture's `apply --json`

    def ssh(self, name: str) -> object:
        from protectctl.provision.ssh import SshHost, SshParams

        s = self.servers[name]
        return SshHost(SshParams(name, s.address, s.port, "root", str(self.client_key), s.host_key))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pinned_wheelhouse: Path) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    client_key = base / "client_ed25519"
    public = keygen(client_key, "protectctl-control")
    servers = start_fleet(base / "hosts", ["h1", "h2", "b1"], public, first_octet=2)
    try:
        policy = base / "policy"
        policy.mkdir()
        data = {}
        for name in ("h1", "h2"):
            d = base / f"data-{name}"
            (d / "sub").mkdir(parents=True)
            (d / "hello.txt").write_text(f"hello from {name}\n")
            (d / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 400 + name.encode())
            data[name] = d
        by_name = {s.name: s for s in servers}
        repo = by_name["b1"].root / "srv" / "repo"
        storage = textwrap.dedent(f"""\
            apiVersion: protectctl/v1
            kind: Storage
            metadata: {{name: central}}
            spec:
              type: sftp
              host: b1
              path: {repo}
              encryption: {{key: repo-key}}""")
        docs = [common_docs(storage)] + [s.host_doc(identity_file=client_key) for s in servers]
        docs.append(
            textwrap.dedent(f"""\
            apiVersion: protectctl/v1
            kind: ProtectionGroup
            metadata: {{name: docs}}
            spec:
              sla: hourly
              storage: central
              members:
                - {{name: m1, host: h1, filesystem: {{path: {data["h1"]}}}}}
                - {{name: m2, host: h2, filesystem: {{path: {data["h2"]}}}}}
            """)
        )
        (policy / "fleet.yaml").write_text("---\n".join(docs))
        # Applied, and one point per member taken, here rather than by the first tests: every test
        # needs them, and the suite runs in a random order.
        applied = cli(policy, "apply", "--auto-approve", "--json")
        assert applied.returncode == 0, applied.stderr + applied.stdout
        fleet = Fleet(policy, by_name, client_key, data, applied)
        for host, member in (("h1", "m1"), ("h2", "m2")):
            status, out, err = run_on(fleet, host, "run", "sync", "docs", "--member", member)
            assert status == 0, out + err
        yield fleet
    finally:
        for s in servers:
            s.stop()


def test_one_apply_provisions_three_hosts_in_parallel(fleet: Fleet) -> None:
    result = fleet.applied
    report = json.loads(result.stdout)
    assert not report["failed"]
    for name, server in fleet.servers.items():
        venv = server.root / "opt" / "protectctl"
        assert (venv / "bin" / "protectctl").exists(), name
        marker = json.loads((venv / ".protectctl-install.json").read_text())
        assert marker["version"]
        config = server.root / "etc" / "protectctl" / "agent.yaml"
        assert config.stat().st_mode & 0o777 == 0o600
    for name in ("h1", "h2"):
        units = sorted((fleet.servers[name].root / "etc" / "systemd" / "system").glob("*.timer"))
        # sync, full, verify: no prune timer, an agent's key to the sftp repository is append-only
        assert [u.name.rsplit("-", 1)[1] for u in units] == ["full.timer", "sync.timer", "verify.timer"], units
        assert all(u.stat().st_mode & 0o777 == 0o644 for u in units)
        service = units[0].with_suffix(".service").read_text()
        assert str(fleet.servers[name].root / "opt/protectctl/bin/protectctl") in service
    # each agent got its own key, authorised on b1 only as an append-only forced command
    lines = fleet.servers["b1"].authorized_keys.read_text().splitlines()
    agent_lines = [line for line in lines if "protectctl-agent:" in line]
    assert len(agent_lines) == 2
    assert all(line.startswith('restrict,command="') and "--append-only" in line for line in agent_lines)
    # the three agent installs ran side by side, not one after another
    installs = [r for r in report["results"] if r["address"].startswith("agent.")]
    assert len(installs) == 3
    # each protected host got its own root-only copy of the passphrase, and its source config
    # points there; the backup server (no agent job needs the key there) got none
    passphrase = (fleet.policy / "passphrase").read_bytes().strip()
    for name in ("h1", "h2"):
        copy = fleet.servers[name].root / "etc" / "protectctl" / "keys" / "repo-key.passphrase"
        assert copy.read_bytes().strip() == passphrase
        assert copy.stat().st_mode & 0o777 == 0o600 and copy.parent.stat().st_mode & 0o777 == 0o700
        source = (fleet.servers[name].root / "etc" / "protectctl" / "sources").glob("*.yaml")
        assert str(copy) in next(source).read_text()
    assert not (fleet.servers["b1"].root / "etc" / "protectctl" / "keys").exists()
    assert passphrase.decode() not in result.stdout + result.stderr
    assert passphrase.decode() not in (fleet.policy / ".protectctl" / "state.json").read_text()


def test_second_plan_has_no_changes(fleet: Fleet) -> None:
    result = cli(fleet.policy, "plan", "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr


def test_timer_edited_by_hand_is_found_and_repaired(fleet: Fleet) -> None:
    timer = sorted((fleet.servers["h2"].root / "etc" / "systemd" / "system").glob("*-sync.timer"))[0]
    original = timer.read_text()
    timer.write_text(original.replace("OnCalendar", "#OnCalendar"))
    plain = cli(fleet.policy, "plan", "--detailed-exitcode")
    assert plain.returncode == 0  # without --refresh no host is read
    refreshed = cli(fleet.policy, "plan", "--refresh", "--detailed-exitcode")
    assert refreshed.returncode == 2, refreshed.stdout + refreshed.stderr
    assert "changed on the host" in refreshed.stdout and timer.name in refreshed.stdout
    applied = cli(fleet.policy, "apply", "--refresh", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert timer.read_text() == original
    assert cli(fleet.policy, "plan", "--refresh", "--detailed-exitcode").returncode == 0


def test_agent_version_drift_is_found(fleet: Fleet) -> None:
    marker = fleet.servers["h1"].root / "opt" / "protectctl" / ".protectctl-install.json"
    original = marker.read_text()
    marker.write_text(original.replace('"version": "', '"version": "0.0.0-'))
    try:
        refreshed = cli(fleet.policy, "plan", "--refresh", "--detailed-exitcode")
        assert refreshed.returncode == 2, refreshed.stdout + refreshed.stderr
        assert "agent.h1" in refreshed.stdout and "0.0.0-" in refreshed.stdout
    finally:
        marker.write_text(original)


def test_passphrase_copy_changed_on_a_host_is_found_and_repaired(fleet: Fleet) -> None:
    copy = fleet.servers["h2"].root / "etc" / "protectctl" / "keys" / "repo-key.passphrase"
    original = copy.read_bytes()
    copy.write_bytes(b"not-the-passphrase\n")
    refreshed = cli(fleet.policy, "plan", "--refresh", "--detailed-exitcode")
    assert refreshed.returncode == 2, refreshed.stdout + refreshed.stderr
    assert "secret.repo-key/h2" in refreshed.stdout and "no longer holds the passphrase" in refreshed.stdout
    assert "not-the-passphrase" not in refreshed.stdout + refreshed.stderr
    applied = cli(fleet.policy, "apply", "--refresh", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert copy.read_bytes() == original


def test_hosts_check(fleet: Fleet) -> None:
    result = cli(fleet.policy, "hosts", "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert set(hosts) == {"h1", "h2", "b1"}
    checks = {c["check"] for c in hosts["h1"]["checks"]}
    assert checks == {"reachable", "python", "agent", "timers", "disk", "sources"}


def run_on(fleet: Fleet, host: str, *args: str) -> tuple[int, str, str]:
    root = fleet.servers[host].root
    argv = (
        str(root / "opt/protectctl/bin/protectctl"),
        "--agent-config",
        str(root / "etc/protectctl/agent.yaml"),
        *args,
    )
    status, out, err = fleet.ssh(host).exec_bytes(argv, timeout_s=120)  # type: ignore[attr-defined]
    return status, out.decode(), err.decode()


def test_two_agents_sync_into_one_remote_repository_and_restore_elsewhere(fleet: Fleet, tmp_path: Path) -> None:
    # the agents read their own copies of the passphrase, not the control machine's file
    control_copy = fleet.policy / "passphrase"
    repo = fleet.servers["b1"].root / "srv" / "repo"
    before = len(list((repo / "points").iterdir()))
    hidden = control_copy.rename(tmp_path / "passphrase")
    try:
        for host, member in (("h1", "m1"), ("h2", "m2")):
            status, out, err = run_on(fleet, host, "run", "sync", "docs", "--member", member)
            assert status == 0, out + err
    finally:
        hidden.rename(control_copy)
    assert len(list((repo / "points").iterdir())) == before + 2  # one repository, a point from each
    target = tmp_path / "restored"
    # the control machine restores with its own passphrase, not the agent's copy
    agent_copy = fleet.servers["h2"].root / "etc" / "protectctl" / "keys" / "repo-key.passphrase"
    moved = agent_copy.rename(tmp_path / "agent-copy")
    try:
        result = cli(fleet.policy, "restore", "docs/m2", "--to-time", "latest", "--target", str(target))
    finally:
        moved.rename(agent_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    for rel in ("hello.txt", "sub/blob.bin"):
        assert (target / rel).read_bytes() == (fleet.data["h2"] / rel).read_bytes()
    points = cli(fleet.policy, "points", "list", "docs", "--json")
    assert points.returncode == 0, points.stderr


def sessions(server: SshdServer) -> int:
    return server.log.read_text().count("Starting session: command")


def test_restores_onto_ssh_hosts_run_there_by_their_agents(fleet: Fleet, tmp_path: Path) -> None:
    h2 = fleet.servers["h2"]
    # m1's data (from h1) onto h2: h2's agent restores it with its own key and passphrase copy
    before = sessions(h2)
    target = tmp_path / "m1-on-h2"
    moved = cli(fleet.policy, "restore", "docs/m1", "--to-time", "latest", "--target", f"h2:{target}", "--json")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert json.loads(moved.stdout)["target"] == str(target) and sessions(h2) > before
    for rel in ("hello.txt", "sub/blob.bin"):
        assert (target / rel).read_bytes() == (fleet.data["h1"] / rel).read_bytes()
    # m2 to its original place (on h2): its agent there, and a non-empty place needs --overwrite
    (fleet.data["h2"] / "hello.txt").write_text("damaged\n")
    refused = cli(fleet.policy, "restore", "docs/m2", "--to-time", "latest")
    assert refused.returncode == 1 and "host h2:" in refused.stderr and "Traceback" not in refused.stderr
    assert (fleet.data["h2"] / "hello.txt").read_text() == "damaged\n"
    back = cli(fleet.policy, "restore", "docs/m2", "--to-time", "latest", "--overwrite")
    assert back.returncode == 0, back.stdout + back.stderr
    assert (fleet.data["h2"] / "hello.txt").read_text() == "hello from h2\n"
    # b1 protects nothing in `central`: it has no key to read it, and says so
    nokey = cli(fleet.policy, "restore", "docs/m1", "--to-time", "latest", "--target", f"b1:{tmp_path / 'b'}")
    assert nokey.returncode == 1 and "host b1 has no key to storage central" in nokey.stderr, nokey.stderr
    assert not (tmp_path / "b").exists()


def test_an_agent_key_cannot_delete_or_overwrite_a_pack(fleet: Fleet) -> None:
    from protectctl.api import sources
    from protectctl.engine.storage.base import ObjectKind
    from protectctl.engine.storage.serve import AppendOnlyError
    from protectctl.provision.ssh import open_remote_storage

    repo = fleet.servers["b1"].root / "srv" / "repo"
    packs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
    assert packs
    pack = packs[0]
    before = pack.read_bytes()
    (target,) = sources(fleet.policy, agent_config=None, group="docs", member="m1", include_remote=True)
    storage = dict(target.inputs["storage"])
    # what the agent on h1 uses: its own key (the forced command decides what runs)
    storage["identity_file"] = str(fleet.servers["h1"].root / "etc/protectctl/ssh/central_ed25519")
    agent = open_remote_storage(storage)
    assert agent.get(ObjectKind.DATA, pack.name) == before  # reading is allowed
    with pytest.raises(AppendOnlyError):
        agent.delete(ObjectKind.DATA, pack.name)
    with pytest.raises(AppendOnlyError):
        agent.put(ObjectKind.DATA, pack.name, b"garbage")
    with pytest.raises(AppendOnlyError):
        agent.delete(ObjectKind.POINTS, next((repo / "points").iterdir()).name)
    agent.put(ObjectKind.DATA, pack.name, before)  # an identical retry is not an overwrite
    agent.close()
    assert pack.read_bytes() == before
    # even asking sshd for another command runs the forced `serve --append-only`
    from protectctl.provision.ssh import SshHost, SshParams

    b1 = fleet.servers["b1"]
    as_agent = SshHost(SshParams("b1", b1.address, b1.port, "root", storage["identity_file"], b1.host_key))
    status, out, _ = as_agent.exec_bytes(("rm", "-f", str(pack)), timeout_s=20)
    assert pack.exists() and pack.read_bytes() == before
    # the control machine, with the backup host's own key, has full rights (prune, check)
    check = cli(fleet.policy, "check", "central")
    assert check.returncode == 0, check.stdout + check.stderr


def test_keys_of_a_remote_repository_are_listed_and_exported(fleet: Fleet, tmp_path: Path) -> None:
    listed = cli(fleet.policy, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (row,) = [r for r in json.loads(listed.stdout)["keys"] if r["kind"] == "repository"]
    assert row["storage"] == "central" and row["name"] == "repo-key" and row["exported"] is None
    export_pass = tmp_path / "export-pass"
    export_pass.write_text("an export passphrase\n")
    dest = tmp_path / "central.key"
    exported = cli(fleet.policy, "keys", "export", "central", "--to", str(dest), "--passphrase-file", str(export_pass))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert dest.exists() and (fleet.policy / "passphrase").read_text().strip() not in dest.read_text()
    again = json.loads(cli(fleet.policy, "keys", "list", "--json").stdout)["keys"]
    assert [r["exported"] for r in again if r["kind"] == "repository"] != [None]


def test_destroy_counts_the_points_of_a_remote_repository(fleet: Fleet) -> None:
    points = len(list((fleet.servers["b1"].root / "srv" / "repo" / "points").iterdir()))
    refused = cli(fleet.policy, "destroy", "--auto-approve")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"storage.central ({points} recovery points)" in refused.stderr
    assert (fleet.servers["h1"].root / "opt" / "protectctl" / "bin" / "protectctl").exists()  # nothing touched
    backup = fleet.servers["b1"]
    backup.stop()
    try:
        blind = cli(fleet.policy, "destroy", "--auto-approve")
        assert blind.returncode == 1, blind.stdout + blind.stderr
        assert "cannot tell whether storage.central holds recovery points" in blind.stderr
        assert "Traceback" not in blind.stderr
    finally:
        backup.start()
    assert cli(fleet.policy, "plan", "--detailed-exitcode").returncode == 0
