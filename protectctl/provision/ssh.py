"""`SshHost`: a `HostConnection` to a remote host over SSH (Fabric on paramiko).

Host keys are never accepted on first sight: the server's key must equal the pinned
`hostKey` or be listed for the host in the `knownHosts` file; anything else is refused with
its SHA256 fingerprint and the line that would trust it. Commands are argv lists, joined
with `shlex.join` for the remote shell (prefixed by `sudo -n --` under `become: sudo`);
file operations are small shell commands over the same exec channel, so they work the
same with and without sudo. Paramiko and socket errors become `RemoteError`s that say
which host and what went wrong (unreachable, authentication, host key, timeout). Data
written to a host is never logged; argv is logged only through `masked`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protectctl.errors import RemoteError
from protectctl.provision.host import CommandResult

if TYPE_CHECKING:
    import fabric
    import paramiko

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_COMMAND_TIMEOUT_S = 60.0
_SECRET_WORDS = ("passphrase", "password", "secret", "token")


class HostKeyRefusedError(RemoteError):
    """The server's host key is unknown or differs from the pinned one."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint, e.g. 'SHA256:abc...' (no padding)."""
    raw = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(raw).decode().rstrip("=")


def masked(argv: Sequence[str]) -> str:
    """argv for logs: values after a secret-looking option are replaced by ***."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
            continue
        low = arg.lower()
        if any(w in low for w in _SECRET_WORDS):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=***")
                continue
            hide = arg.startswith("-")
        out.append(arg)
    return shlex.join(out)


@dataclass(frozen=True, slots=True)
class SshParams:
    """How to reach one host (from the Host resource's inputs)."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None
    host_key: str | None = None
    known_hosts: str | None = None
    become: str | None = None
    gateway: SshParams | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    @classmethod
    def from_inputs(
        cls,
        name: str,
        inputs: Mapping[str, Any],
        hosts: Mapping[str, Mapping[str, Any]] | None = None,
        _seen: tuple[str, ...] = (),
    ) -> SshParams:
        gateway = None
        gw_name = inputs.get("gateway")
        if gw_name:
            if gw_name in _seen or hosts is None or gw_name not in hosts:
                raise RemoteError(f"host {name}: gateway {gw_name!r} is unknown or forms a loop")
            gateway = cls.from_inputs(str(gw_name), hosts[str(gw_name)], hosts, (*_seen, name))
        return cls(
            name=name,
            address=str(inputs["address"]),
            port=int(inputs.get("port") or 22),
            user=inputs.get("user"),
            identity_file=inputs.get("identity_file"),
            host_key=inputs.get("host_key"),
            known_hosts=inputs.get("known_hosts"),
            become=inputs.get("become"),
            gateway=gateway,
        )

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


def _expand(path: str) -> str:
    return posixpath.expanduser(path)


def known_host_keys(known_hosts: str, name: str, *, host: str) -> list[str]:
    """The keys (`TYPE BASE64`) a knownHosts file lists for `name` (`ADDR` or `[ADDR]:PORT`);
    HostKeyRefusedError, naming `host`, if the file cannot be read."""
    import paramiko

    try:
        entries = paramiko.HostKeys(_expand(known_hosts)).lookup(name) or {}
    except (OSError, paramiko.SSHException) as err:
        raise HostKeyRefusedError(f"host {host}: cannot read knownHosts {known_hosts}: {err}") from err
    return [f"{kind} {key.get_base64()}" for kind, key in sorted(entries.items())]


class _PinnedKeyPolicy:
    """A MissingHostKeyPolicy that accepts only the pinned key or a known_hosts entry."""

    def __init__(self, params: SshParams) -> None:
        self.params = params

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        p = self.params
        offered = f"{key.get_name()} {key.get_base64()}"
        trusted: list[str] = []
        if p.host_key:
            trusted.append(" ".join(p.host_key.split()[:2]))
        if p.known_hosts:
            trusted += known_host_keys(p.known_hosts, p.known_hosts_name, host=p.name)
        if offered in trusted:
            return
        fp = fingerprint(key)
        if not trusted:
            raise HostKeyRefusedError(
                f"host {p.name} ({p.known_hosts_name}): unknown host key {key.get_name()} {fp}; refused",
                hint=f"check the fingerprint out of band (ssh-keygen -lf on the host), then pin it with "
                f'`hostKey: "{offered}"` or add `{p.known_hosts_name} {offered}` to a knownHosts file',
            )
        raise HostKeyRefusedError(
            f"host {p.name} ({p.known_hosts_name}): host key MISMATCH: the server offered {key.get_name()} {fp}, "
            f"which is not the pinned/known key; refused (nothing was sent to it)",
            hint="if the host was reinstalled, verify the new fingerprint out of band and update `hostKey` "
            f'(or knownHosts) to "{offered}"; otherwise treat this as an attack',
        )


class SshHost:
    """A remote host reached over SSH; thread-safe (one transport, one channel per call)."""

    def __init__(self, params: SshParams, *, command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> None:
        self.name = params.name
        self.params = params
        self.command_timeout_s = command_timeout_s
        self._conn: fabric.Connection | None = None
        self._lock = threading.Lock()

    # --- connection ------------------------------------------------------------------

    def _fabric(self, params: SshParams) -> fabric.Connection:
        import fabric

        connect_kwargs: dict[str, Any] = {
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": params.connect_timeout_s,
            "auth_timeout": params.connect_timeout_s,
        }
        if params.identity_file:
            connect_kwargs["key_filename"] = [_expand(params.identity_file)]
        config = fabric.Config(overrides={"load_ssh_configs": False})
        gateway = self._fabric(params.gateway) if params.gateway else None
        conn = fabric.Connection(
            params.address,
            user=params.user or "root",
            port=params.port,
            config=config,
            connect_timeout=params.connect_timeout_s,
            connect_kwargs=connect_kwargs,
            gateway=gateway or False,
            inline_ssh_env=True,
        )
        conn.client.set_missing_host_key_policy(_PinnedKeyPolicy(params))
        return conn

    def connection(self) -> fabric.Connection:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            conn = self._fabric(self.params)
            try:
                conn.open()
            except Exception as err:  # noqa: BLE001 - translated below, never leaked
                raise self._connect_error(err) from None
            transport = conn.client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._conn = conn
            return conn

    def _connect_error(self, err: BaseException) -> RemoteError:
        import paramiko

        p = self.params
        where = f"host {p.name} ({p.user or 'root'}@{p.address}:{p.port})"
        if isinstance(err, RemoteError):
            return err
        if isinstance(err, paramiko.AuthenticationException):
            return RemoteError(
                f"{where}: authentication failed",
                hint="check `user` and `identityFile`, and that the public key is in the host's authorized_keys",
            )
        if isinstance(err, paramiko.BadHostKeyException):
            return HostKeyRefusedError(f"{where}: host key mismatch: {err}")
        if isinstance(err, (socket.timeout, TimeoutError)):
            return RemoteError(f"{where}: unreachable: connection timed out after {p.connect_timeout_s:g}s")
        if isinstance(err, (paramiko.ssh_exception.NoValidConnectionsError, OSError)):
            return RemoteError(f"{where}: unreachable: {getattr(err, 'strerror', None) or err}")
        if isinstance(err, paramiko.SSHException):
            return RemoteError(f"{where}: SSH error: {err}")
        return RemoteError(f"{where}: cannot connect: {type(err).__name__}: {err}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- commands --------------------------------------------------------------------

    def command_line(self, argv: Sequence[str]) -> str:
        line = shlex.join(argv)
        return f"sudo -n -- {line}" if self.params.become == "sudo" else line

    def exec_bytes(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run argv on the host; (status, stdout, stderr). Raises RemoteError if it cannot run."""
        import paramiko

        timeout = timeout_s or self.command_timeout_s
        conn = self.connection()
        try:
            transport = conn.client.get_transport()
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("connection lost")
            channel = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as err:
            self.close()
            raise RemoteError(
                f"host {self.name}: connection lost: {err}", hint="is the host up and sshd running?"
            ) from err
        try:
            channel.settimeout(timeout)
            channel.exec_command(self.command_line(argv))
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err_ = _drain(channel, time.monotonic() + timeout)
            status = channel.recv_exit_status()
        except TimeoutError as err:
            raise RemoteError(f"host {self.name}: `{masked(argv)}` timed out after {timeout:g}s") from err
        except (paramiko.SSHException, OSError, EOFError) as err:
            self.close()
            raise RemoteError(f"host {self.name}: connection lost running `{masked(argv)}`: {err}") from err
        finally:
            channel.close()
        log.debug("ssh_command", extra={"host": self.name, "argv": masked(argv), "status": status})
        return status, out, err_

    def run(self, argv: tuple[str, ...], *, timeout_s: float = 60) -> CommandResult:
        status, out, err = self.exec_bytes(argv, timeout_s=timeout_s)
        return CommandResult(tuple(argv), status, out.decode(errors="replace"), err.decode(errors="replace"))

    def _checked(self, argv: Sequence[str], what: str, *, stdin: bytes = b"", timeout_s: float | None = None) -> bytes:
        status, out, err = self.exec_bytes(argv, stdin=stdin, timeout_s=timeout_s)
        if status != 0:
            raise RemoteError(
                f"host {self.name}: {what} failed (exit {status}): {err.decode(errors='replace').strip()[-300:]}"
            )
        return out

    def has_command(self, name: str) -> bool:
        status, _, _ = self.exec_bytes(("sh", "-c", 'command -v "$1" >/dev/null', "sh", name))
        return status == 0

    # --- files -----------------------------------------------------------------------

    def write_file(self, path: str, data: bytes, *, mode: int) -> None:
        # temp name beside the target, then rename: a reader sees the old file or the new one
        script = (
            'set -e; d=$(dirname "$1"); mkdir -p "$d"; t="$d/.$(basename "$1").tmp.$$"; '
            'umask 077; cat > "$t"; chmod "$2" "$t"; sync "$t" 2>/dev/null || true; mv -f "$t" "$1"'
        )
        self._checked(("sh", "-c", script, "sh", path, f"{mode:o}"), f"writing {path}", stdin=data)

    def read_file(self, path: str) -> bytes | None:
        status, out, err = self.exec_bytes(("sh", "-c", 'test -e "$1" || exit 3; cat "$1"', "sh", path))
        if status == 3:
            return None
        if status != 0:
            raise RemoteError(f"host {self.name}: reading {path}: {err.decode(errors='replace').strip()[-300:]}")
        return out

    def remove_file(self, path: str) -> bool:
        status, _, err = self.exec_bytes(("sh", "-c", 'test -e "$1" || test -L "$1" || exit 3; rm -f "$1"', "sh", path))
        if status == 3:
            return False
        if status != 0:
            raise RemoteError(f"host {self.name}: removing {path}: {err.decode(errors='replace').strip()[-300:]}")
        return True

    def remove_empty_dirs(self, path: str, stop_at: str) -> None:
        script = (
            'p="$1"; s="$2"; while [ "$p" != "$s" ] && [ "${p#"$s"/}" != "$p" ]; do '
            'rmdir "$p" 2>/dev/null || exit 0; p=$(dirname "$p"); done'
        )
        self.exec_bytes(("sh", "-c", script, "sh", posixpath.normpath(path), posixpath.normpath(stop_at)))

    def make_dirs(self, path: str, *, mode: int = 0o755) -> None:
        self._checked(("sh", "-c", 'mkdir -p "$1" && chmod "$2" "$1"', "sh", path, f"{mode:o}"), f"creating {path}")

    def remove_tree(self, path: str) -> None:
        """rm -rf one directory (the agent venv); refuses '/' and relative paths."""
        if not posixpath.isabs(path) or posixpath.normpath(path) == "/":
            raise RemoteError(f"host {self.name}: refusing to remove {path!r}")
        self._checked(("rm", "-rf", "--", path), f"removing {path}")

    def upload(self, local_path: str, remote_path: str) -> None:
        """Copy a local file to the host (atomically, mode 0644)."""
        with open(local_path, "rb") as handle:
            data = handle.read()
        self.write_file(remote_path, data, mode=0o644)


def _drain(channel: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("command timed out")
        progressed = False
        if channel.recv_ready():
            out.append(channel.recv(65536))
            progressed = True
        if channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
            progressed = True
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            # the exit status may arrive before the last data: read until EOF
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out.append(chunk)
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            break
        if not progressed:
            time.sleep(0.002)
    return b"".join(out), b"".join(err)


class ChannelStream:
    """A byte stream over one SSH exec channel (for `protectctl serve`)."""

    def __init__(self, channel: paramiko.Channel, owner: SshHost) -> None:
        self._channel = channel
        self._owner = owner

    def send(self, data: bytes) -> None:
        self._channel.sendall(data)

    def recv(self, size: int) -> bytes:
        data: bytes = self._channel.recv(size)
        return data

    def close(self) -> None:
        self._channel.close()
        self._owner.close()


def open_stream(conn: SshHost, argv: Sequence[str], *, timeout_s: float = 300) -> ChannelStream:
    """Start argv on the host and return its stdin/stdout as a stream (stderr is discarded)."""
    import paramiko

    transport = conn.connection().client.get_transport()
    try:
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("connection lost")
        channel = transport.open_session(timeout=conn.params.connect_timeout_s)
        channel.settimeout(timeout_s)
        channel.set_combine_stderr(False)
        channel.exec_command(conn.command_line(argv))
    except (paramiko.SSHException, OSError, EOFError) as err:
        conn.close()
        raise RemoteError(f"host {conn.name}: cannot start `{masked(argv)}`: {err}") from err
    return ChannelStream(channel, conn)


def open_remote_storage(storage: Mapping[str, Any]) -> Any:
    """A RemoteStorage for an sftp Storage's inputs.

    With `identity_file` at the top level (a source's storage, on an agent host) the agent's
    own key is used, and the backup server forces `serve --append-only` whatever is asked;
    without, the control machine connects with the backup Host's own credentials and full
    rights (init, prune, check)."""
    from protectctl.engine.storage.sftp import RemoteStorage

    host = str(storage["host"])
    ssh = dict(storage["ssh"])
    hops = {name: dict(hop) for name, hop in (storage.get("ssh_hosts") or {}).items()}  # jump hosts
    agent_key = storage.get("identity_file")
    argv = [str(storage["serve"]), "serve", "--repo", str(storage["path"])]
    if agent_key:  # the agent's own key everywhere: a tunnel on each jump host, serve on the server
        for inputs in (ssh, *hops.values()):
            inputs.update(identity_file=agent_key, become=None)
        argv.insert(2, "--append-only")
    params = SshParams.from_inputs(host, ssh, hops)

    def connect() -> ChannelStream:
        return open_stream(SshHost(params), argv)

    return RemoteStorage(connect, f"{host}:{storage['path']}")
