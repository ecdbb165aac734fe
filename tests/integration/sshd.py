"""Real sshd servers on loopback aliases for the fleet tests.

Each `SshdServer` has its own host key, its own root directory (the Host's `root:`), its own
authorized_keys file and listens on 127.0.0.N:PORT. They are started with a generated
sshd_config and stopped by PID (the listener and every session process it forked): no test
touches a system sshd, and no packet leaves the machine (127.0.0.0/8 is loopback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next(
    (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server") if os.path.exists(p)),
    "internal-sftp",
)


def sshd_available() -> str | None:
    """None when the fleet tests can run here, else why not."""
    if not os.path.exists(SSHD):
        return "sshd is not installed (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "sshd test servers need root (they log in as root with keys)"
    return None


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "") -> str:
    """A new ed25519 key pair at path (and path.pub); returns the public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True, capture_output=True
    )
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class SshdServer:
    name: str
    address: str
    base: Path  # everything of this server lives here
    client_public_key: str
    port: int = 0
    host_key: str = ""  # "ssh-ed25519 AAAA..." as a Host's hostKey
    pid: int | None = None
    children_seen: set[int] = field(default_factory=set)
    log_level: str = "VERBOSE"  # DEBUG1 logs each forwarded (direct-tcpip) connection

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def authorized_keys(self) -> Path:
        return self.base / "authorized_keys"

    @property
    def home(self) -> Path:
        """The sessions' HOME: a fresh host's, so this machine's ~/.bashrc (pyenv init, whose
        rehash lock a killed session would leave behind) is not run by every command."""
        return self.base / "home"

    @property
    def log(self) -> Path:
        return self.base / "sshd.log"

    def prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        key = self.base / "ssh_host_ed25519_key"
        if not key.exists():
            keygen(key, f"host-{self.name}")
        self.host_key = " ".join(Path(f"{key}.pub").read_text().split()[:2])
        if not self.authorized_keys.exists():  # a restarted host keeps the keys apply added, as a real one does
            self.authorized_keys.write_text(self.client_public_key + "\n")
            self.authorized_keys.chmod(0o600)
        if not self.port:
            self.port = free_port(self.address)
        (self.base / "sshd_config").write_text(
            textwrap.dedent(f"""\
            ListenAddress {self.address}:{self.port}
            HostKey {key}
            PidFile {self.base / "sshd.pid"}
            AuthorizedKeysFile {self.authorized_keys}
            StrictModes no
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            UseDNS no
            MaxStartups 100:30:200
            MaxSessions 100
            Subsystem sftp {SFTP_SERVER}
            LogLevel {self.log_level}
            SetEnv HOME={self.home}
            """)
        )
        self.home.mkdir(exist_ok=True)

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.prepare()
        pidfile = self.base / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run([SSHD, "-f", str(self.base / "sshd_config"), "-E", str(self.log)], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                try:
                    with socket.create_connection((self.address, self.port), timeout=0.5):
                        self.pid = int(pidfile.read_text().strip())
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"sshd {self.name} did not start: {self.log.read_text() if self.log.exists() else ''}")

    def descendants(self) -> list[int]:
        if self.pid is None:
            return []
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                except (OSError, ValueError):
                    continue
        out, frontier = [], [self.pid]
        while frontier:
            pid = frontier.pop()
            kids = [c for c, p in parents.items() if p == pid]
            out += kids
            frontier += kids
        return out

    def stop(self) -> None:
        """Kill the listener and every session it forked (as a crashed or unplugged host)."""
        if self.pid is None:
            return
        for pid in [self.pid, *self.descendants()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid = None

    def host_doc(
        self, *, identity_file: Path, scheduler: str = "systemd", host_key: str | None = None, extra: str = ""
    ) -> str:
        return (
            textwrap.dedent(f"""\
            apiVersion: protectctl/v1
            kind: Host
            metadata: {{name: {self.name}}}
            spec:
              address: {self.address}
              port: {self.port}
              user: root
              identityFile: {identity_file}
              hostKey: "{host_key or self.host_key}"
              scheduler: {scheduler}
              root: {self.root}
              authorizedKeys: {self.authorized_keys}
            """)
            + extra
        )


def start_fleet(base: Path, names: list[str], client_public_key: str, first_octet: int = 2) -> list[SshdServer]:
    servers = []
    try:
        for i, name in enumerate(names):
            server = SshdServer(name, f"127.0.0.{first_octet + i}", base / name, client_public_key)
            server.start()
            servers.append(server)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@pytest.fixture(scope="session")
def pinned_wheelhouse() -> Iterator[Path]:
    """The agent wheelhouse, built once (cached across sessions) and pinned for the session:
    other work in the tree must not make every plan show an agent upgrade mid-test."""
    from protectctl.provision.agent_install import wheelhouse

    before = os.environ.pop("PROTECTCTL_WHEELHOUSE", None)
    path = wheelhouse().path
    os.environ["PROTECTCTL_WHEELHOUSE"] = str(path)
    from protectctl.provision.agent_install import source_digest

    source_digest.cache_clear()
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("PROTECTCTL_WHEELHOUSE", None)
        else:
            os.environ["PROTECTCTL_WHEELHOUSE"] = before
        source_digest.cache_clear()


def group_docs(storage: str, storage_spec: str, members: Sequence[tuple[str, str, Path]]) -> str:
    """Policy documents around group `g` of filesystem members (name, host, path): EncryptionKey
    `k` (a file passphrase the first apply creates), the Storage `storage` with `storage_spec`
    (its spec lines, without the encryption line), SLA `daily`."""
    spec = textwrap.indent(textwrap.dedent(storage_spec).strip() + "\nencryption: {key: k}", "  ")
    listed = "\n".join(
        f"    - {{name: {name}, host: {host}, filesystem: {{path: {path}}}}}" for name, host, path in members
    )
    return (
        textwrap.dedent("""\
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {name: k}
        spec:
          passphrase: {file: ./passphrase}
        ---
        apiVersion: protectctl/v1
        kind: Storage
        metadata: {name: STORAGE}
        spec:
        SPEC
        ---
        apiVersion: protectctl/v1
        kind: SLA
        metadata: {name: daily}
        spec:
          sync: every 1h
          full: daily at 20:00
          retention: {disk: 7d}
        ---
        apiVersion: protectctl/v1
        kind: ProtectionGroup
        metadata: {name: g}
        spec:
          sla: daily
          storage: STORAGE
          members:
        MEMBERS
        """)
        .replace("STORAGE", storage)
        .replace("SPEC", spec)
        .replace("MEMBERS", listed)
    )


def one_member_docs(storage: str, storage_spec: str, host: str, data: Path) -> str:
    """`group_docs` with one member, `g/m` on `host`."""
    return group_docs(storage, storage_spec, [("m", host, data)])
