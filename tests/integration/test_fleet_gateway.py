"""An sftp repository behind a jump host, over real sshd: the agent reaches it through a tunnel
its key may open to the backup server only, and pins both hosts by knownHosts entries that
apply copied to it (the control machine's knownHosts file is not on the agent's host).

Hosts: a1 (protected, runs the agent), gw (jump host), bk (backup server, `gateway: gw`),
sshd servers on 127.0.0.11-13.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.sshd import SshdServer, keygen, one_member_docs, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


def cli(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args], capture_output=True, text=True, timeout=300
    )


@dataclass
class Site:
    policy: Path
    servers: dict[str, SshdServer]
    client_key: Path
    data: Path

    def ssh(self, name: str, identity: Path | None = None) -> object:
        from protectctl.provision.ssh import SshHost, SshParams

        s = self.servers[name]
        return SshHost(SshParams(name, s.address, s.port, "root", str(identity or self.client_key), s.host_key))


def host_doc(server: SshdServer, key: Path, known_hosts: Path | None = None, gateway: str | None = None) -> str:
    pin = f"knownHosts: {known_hosts}" if known_hosts else f'hostKey: "{server.host_key}"'
    jump = f"\n  gateway: {gateway}" if gateway else ""
    return (
        textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: {server.name}}}
        spec:
          address: {server.address}
          port: {server.port}
          user: root
          identityFile: {key}
          {pin}
          scheduler: cron
          root: {server.root}
          authorizedKeys: {server.authorized_keys}""")
        + jump
        + "\n"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pinned_wheelhouse: Path) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("gateway")
    key = base / "client_ed25519"
    public = keygen(key, "protectctl-control")
    servers: dict[str, SshdServer] = {}
    try:
        for i, name in enumerate(("a1", "gw", "bk")):
            server = SshdServer(
                name,
                f"127.0.0.{11 + i}",
                base / "hosts" / name,
                public,
                log_level="DEBUG1" if name == "gw" else "VERBOSE",
            )
            server.start()
            servers[name] = server
        known_hosts = base / "known_hosts"
        known_hosts.write_text("".join(f"[{s.address}]:{s.port} {s.host_key}\n" for s in servers.values()))
        data = base / "data"
        (data / "sub").mkdir(parents=True)
        (data / "a.txt").write_text("behind the jump host\n")
        (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
        repo = servers["bk"].root / "srv" / "repo"
        policy = base / "policy"
        policy.mkdir()
        docs = [
            host_doc(servers["a1"], key),
            host_doc(servers["gw"], key, known_hosts=known_hosts),
            host_doc(servers["bk"], key, known_hosts=known_hosts, gateway="gw"),
            one_member_docs("vault", f"type: sftp\nhost: bk\npath: {repo}", "a1", data),
        ]
        (policy / "site.yaml").write_text("---\n".join(docs))
        # applied here, not by a test: every test needs it, and the tests run in any order
        applied = cli(policy, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        yield Site(policy, servers, key, data)
    finally:
        for server in servers.values():
            server.stop()


def test_agent_backs_up_through_the_jump_host(site: Site, tmp_path: Path) -> None:
    gw, bk, a1 = site.servers["gw"], site.servers["bk"], site.servers["a1"]
    # the agent's key on the jump host: a tunnel to the backup server's sshd, nothing else
    tunnel = [line for line in gw.authorized_keys.read_text().splitlines() if "protectctl-agent:" in line]
    assert tunnel == [
        line
        for line in tunnel
        if line.startswith(f'restrict,port-forwarding,permitopen="{bk.address}:{bk.port}",command="/bin/false" ')
    ]
    assert len(tunnel) == 1
    # both hops pinned on the agent's host by the entries apply copied there
    copied = (a1.root / "etc" / "protectctl" / "ssh" / "known_hosts").read_text()
    assert gw.host_key in copied and bk.host_key in copied and a1.host_key not in copied

    root = a1.root
    argv = (
        str(root / "opt/protectctl/bin/protectctl"),
        "--agent-config",
        str(root / "etc/protectctl/agent.yaml"),
        "run",
        "sync",
        "g",
    )
    status, out, err = site.ssh("a1").exec_bytes(argv, timeout_s=120)  # type: ignore[attr-defined]
    assert status == 0, (out + err).decode()
    assert f"target {bk.address} port {bk.port}" in gw.log.read_text()  # it went through the tunnel
    assert len(list((bk.root / "srv" / "repo" / "points").iterdir())) == 1

    # the control machine reads the repository through the jump host with its own credentials
    target = tmp_path / "restored"
    restored = cli(site.policy, "restore", "g/m", "--to-time", "latest", "--target", str(target))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert (target / "a.txt").read_text() == "behind the jump host\n"
    assert (target / "sub" / "b.bin").read_bytes() == (site.data / "sub" / "b.bin").read_bytes()
    assert cli(site.policy, "plan", "--refresh", "--detailed-exitcode").returncode == 0


def test_the_agent_key_can_neither_run_commands_nor_tunnel_elsewhere_on_the_jump_host(site: Site) -> None:
    import paramiko

    agent_key = site.servers["a1"].root / "etc" / "protectctl" / "ssh" / "vault_ed25519"
    conn = site.ssh("gw", identity=agent_key)
    status, out, _ = conn.exec_bytes(("echo", "hello"), timeout_s=30)  # type: ignore[attr-defined]
    assert status != 0 and b"hello" not in out
    transport = conn.connection().client.get_transport()  # type: ignore[attr-defined]
    a1 = site.servers["a1"]
    with pytest.raises(paramiko.ChannelException):
        transport.open_channel("direct-tcpip", (a1.address, a1.port), ("127.0.0.1", 0), timeout=10)
    conn.close()  # type: ignore[attr-defined]
