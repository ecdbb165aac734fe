"""`become: sudo` over real sshd: an unprivileged login user whose sudo runs every remote command.

The host root is owned by root and closed to the login user, so only commands run through
`sudo -n` can provision it; without `become` the same apply fails with a clear error.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sshd import SshdServer, keygen, one_member_docs, sshd_available

OPS_USER = "protectctl-ops"
# one file per pytest-xdist worker: a module-scoped fixture runs on every worker that got one of this
# module's tests, and one worker's teardown must not take sudo away from the other's test
SUDOERS = Path(f"/etc/sudoers.d/protectctl-test-ops-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")

pytestmark = [
    pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available())),
    pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed (apt-get install sudo)"),
]


def cli(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def ops_host(pinned_wheelhouse: Path) -> Iterator[tuple[SshdServer, Path, Path]]:
    try:
        pwd.getpwnam(OPS_USER)
    except KeyError:
        # another pytest-xdist worker may create it in between: "already exists" (9) is fine
        made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", OPS_USER], check=False)
        assert made.returncode in (0, 9), made
    # no password, but not locked ("!"): sshd refuses key logins to locked accounts
    subprocess.run(["usermod", "-p", "*", OPS_USER], check=True)
    SUDOERS.write_text(f"{OPS_USER} ALL=(root) NOPASSWD: ALL\n")
    SUDOERS.chmod(0o440)
    # sshd reads authorized_keys as the login user: everything it needs must be readable by it
    base = Path(tempfile.mkdtemp(prefix="protectctl-become-", dir="/tmp"))
    base.chmod(0o755)
    key = base / "client_ed25519"
    public = keygen(key, "protectctl-control")
    server = SshdServer("s1", "127.0.0.21", base / "s1", public)
    server.start()
    server.base.chmod(0o755)
    server.authorized_keys.chmod(0o644)
    server.root.chmod(0o700)  # root's: the login user can neither read nor write it
    try:
        yield server, key, base
    finally:
        server.stop()
        SUDOERS.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def policy_for(base: Path, server: SshdServer, key: Path, *, become: bool) -> Path:
    data = base / "data"
    data.mkdir(exist_ok=True)
    (data / "f.txt").write_text("provisioned through sudo\n")
    policy = base / ("policy-become" if become else "policy-plain")
    policy.mkdir(exist_ok=True)
    (policy / "p.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: s1}}
        spec:
          address: {server.address}
          port: {server.port}
          user: {OPS_USER}
          identityFile: {key}
          hostKey: "{server.host_key}"
          scheduler: cron
          root: {server.root}
        """)
        + ("  become: sudo\n" if become else "")
        + "---\n"
        + one_member_docs("repo", "type: local\npath: ./repo", "s1", data)
    )
    return policy


def test_without_become_the_unprivileged_login_cannot_provision(ops_host: tuple[SshdServer, Path, Path]) -> None:
    server, key, base = ops_host
    before = _tree(server.root)  # empty, or what the become test made (the tests run in any order)
    result = cli(policy_for(base, server, key, become=False), "apply", "--auto-approve")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    said = result.stdout + result.stderr
    assert "host.s1: create FAILED" in said and ("Permission denied" in said or "not permitted" in said), said
    assert _tree(server.root) == before  # nothing written


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_become_sudo_provisions_as_root_and_the_agent_runs(ops_host: tuple[SshdServer, Path, Path]) -> None:
    server, key, base = ops_host
    policy = policy_for(base, server, key, become=True)
    applied = cli(policy, "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    config = server.root / "etc" / "protectctl" / "agent.yaml"
    info = config.stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600
    copy = server.root / "etc" / "protectctl" / "keys" / "k.passphrase"
    assert copy.stat().st_uid == 0 and stat.S_IMODE(copy.stat().st_mode) == 0o600
    venv = server.root / "opt" / "protectctl"
    assert (venv / "bin" / "protectctl").exists() and venv.stat().st_uid == 0
    assert cli(policy, "plan", "--refresh", "--detailed-exitcode").returncode == 0  # read back through sudo
    # the agent, started through sudo as the cron line would, backs the member up
    from protectctl.provision.ssh import SshHost, SshParams

    conn = SshHost(SshParams("s1", server.address, server.port, OPS_USER, str(key), server.host_key, become="sudo"))
    status, out, err = conn.exec_bytes(
        (str(venv / "bin" / "protectctl"), "--agent-config", str(config), "run", "sync", "g"), timeout_s=120
    )
    conn.close()
    assert status == 0, (out + err).decode()
    assert os.listdir(policy / "repo" / "points")
