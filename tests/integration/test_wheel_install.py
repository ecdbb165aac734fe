"""Installed the normal way (a wheel, as pip and pipx install it), protectctl does everything,
the fleet included: the agent wheelhouse is packed from the installed distributions, with no
source tree and no package index.

One scenario, over real sshd: a wheel of this tree is installed into a fresh virtual
environment (its dependencies come from the system site-packages, where CI installed them);
that environment's `protectctl` applies a policy to an SSH host — building the wheelhouse
from installed files — and the agent it installed there backs the member up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sshd import SshdServer, keygen, one_member_docs, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory, project_wheel: Path) -> Path:
    """A fresh venv holding the session's wheel of this tree (not an editable install)."""
    base = tmp_path_factory.mktemp("wheel-install")
    venv = base / "venv"
    # without pip of its own (ensurepip is slow): the system pip serves it through system-site-packages
    assert _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]).returncode == 0
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(project_wheel)])
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.fixture(scope="module")
def host(wheel_venv: Path) -> Iterator[tuple[SshdServer, Path]]:
    base = Path(tempfile.mkdtemp(prefix="protectctl-wheel-", dir="/tmp"))
    key = base / "client_ed25519"
    server = SshdServer("w1", "127.0.0.23", base / "w1", keygen(key, "protectctl-control"))
    server.start()
    try:
        yield server, key
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_wheel_install_provisions_an_ssh_host_and_its_agent_backs_up(
    wheel_venv: Path, host: tuple[SshdServer, Path], tmp_path: Path
) -> None:
    server, key = host
    python = str(wheel_venv / "bin" / "python")
    where = _run(
        [python, "-c", "import protectctl, protectctl.providers.filesystem as f; print(protectctl.__file__)"],
        cwd=tmp_path,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(wheel_venv)), where.stdout + where.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("installed from a wheel\n")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: w1}}
        spec:
          address: {server.address}
          port: {server.port}
          identityFile: {key}
          hostKey: "{server.host_key}"
          scheduler: cron
          root: {server.root}
        ---
        """)
        + one_member_docs("repo", "type: local\npath: ./repo", "w1", data)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PROTECTCTL_WHEELHOUSE", "PROTECTCTL_AGENT_CONFIG")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # a wheelhouse of its own, packed now
    applied = _run(
        [str(wheel_venv / "bin" / "protectctl"), "-C", str(policy), "apply", "--auto-approve"], env=env, cwd=tmp_path
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    (house,) = (tmp_path / "cache" / "protectctl" / "wheelhouse").iterdir()
    wheels = {p.name.split("-")[0].lower() for p in house.glob("*.whl")}
    assert {"protectctl", "pip", "pydantic", "cryptography", "zstandard"} <= wheels, wheels
    (ours,) = house.glob("protectctl-*.whl")
    assert "protectctl/providers/filesystem.py" in zipfile.ZipFile(ours).namelist()
    agent = server.root / "opt" / "protectctl" / "bin" / "protectctl"
    config = server.root / "etc" / "protectctl" / "agent.yaml"
    synced = _run([str(agent), "--agent-config", str(config), "run", "sync", "g"], env=env, cwd=tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert os.listdir(policy / "repo" / "points")
