"""Connections to hosts: the one place files are written and commands run on a host.

`LocalHost` serves `address: local`; an SSH host (Fabric) implements the same Protocol.
Commands are argv lists, never shell strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from protectctl.errors import RemoteError
from protectctl.fsutil import atomic_write


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str


def digest(data: bytes) -> str:
    """What apply records of each file it writes on a host, and drift and `hosts check` compare."""
    return hashlib.sha256(data).hexdigest()


class HostConnection(Protocol):
    name: str

    def write_file(self, path: str, data: bytes, *, mode: int) -> None:
        """Write an absolute path on the host atomically, creating parent directories."""

    def read_file(self, path: str) -> bytes | None:
        """The file's content, or None when it does not exist."""

    def remove_file(self, path: str) -> bool:
        """Remove a file; False when it was already gone."""

    def remove_empty_dirs(self, path: str, stop_at: str) -> None:
        """Remove `path` and its parents while empty, never `stop_at` or above."""

    def make_dirs(self, path: str, *, mode: int = 0o755) -> None: ...

    def run(self, argv: tuple[str, ...], *, timeout_s: float = 60) -> CommandResult: ...

    def has_command(self, name: str) -> bool: ...

    def exec_bytes(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run argv with `stdin`; (status, stdout, stderr). RemoteError when it cannot run at all."""

    def remove_tree(self, path: str) -> None:
        """Remove one directory tree (an agent venv, an sftp repository); refuses '/' and relative paths."""

    def upload(self, local_path: str, remote_path: str) -> None:
        """Copy a local file to the host (mode 0644)."""

    def close(self) -> None:
        """Release the connection (SSH); a no-op for the local host."""


class LocalHost:
    """The machine running protectctl."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write_file(self, path: str, data: bytes, *, mode: int) -> None:
        try:
            atomic_write(Path(path), data, mode=mode)
        except OSError as err:
            raise RemoteError(f"host {self.name}: writing {path}: {err.strerror}") from err

    def read_file(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise RemoteError(f"host {self.name}: reading {path}: {err.strerror}") from err

    def remove_file(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as err:
            raise RemoteError(f"host {self.name}: removing {path}: {err.strerror}") from err

    def remove_empty_dirs(self, path: str, stop_at: str) -> None:
        current = Path(path)
        stop = Path(stop_at)
        while current != stop and stop in current.parents:
            with contextlib.suppress(OSError):
                current.rmdir()
            if current.exists():
                return
            current = current.parent

    def make_dirs(self, path: str, *, mode: int = 0o755) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as err:
            raise RemoteError(f"host {self.name}: creating {path}: {err.strerror}") from err

    def run(self, argv: tuple[str, ...], *, timeout_s: float = 60) -> CommandResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RemoteError(f"host {self.name}: running {argv[0]}: {err}") from err
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def has_command(self, name: str) -> bool:
        return shutil.which(name) is not None

    def exec_bytes(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        try:
            proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout_s or 600, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RemoteError(f"host {self.name}: running {argv[0]}: {err}") from err
        return proc.returncode, proc.stdout, proc.stderr

    def remove_tree(self, path: str) -> None:
        """Remove one directory tree (the agent venv); refuses '/' and relative paths."""
        if not os.path.isabs(path) or os.path.normpath(path) == "/":
            raise RemoteError(f"host {self.name}: refusing to remove {path!r}")
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError as err:
            raise RemoteError(f"host {self.name}: removing {path}: {err.strerror}") from err

    def upload(self, local_path: str, remote_path: str) -> None:
        with open(local_path, "rb") as handle:
            self.write_file(remote_path, handle.read(), mode=0o644)

    def close(self) -> None:
        return None


def connect(
    name: str,
    address: str,
    inputs: Mapping[str, Any] | None = None,
    hosts: Mapping[str, Mapping[str, Any]] | None = None,
) -> HostConnection:
    """A connection to the host: `LocalHost` for `local`, else an `SshHost` (provision/ssh.py).

    `inputs` are the Host resource's inputs (port, user, identity_file, host_key, ...);
    `hosts` holds every host's inputs, for a gateway. Connecting is lazy: the first command
    or file operation opens the SSH connection.
    """
    if address == "local":
        return LocalHost(name)
    from protectctl.provision.ssh import SshHost, SshParams

    return SshHost(SshParams.from_inputs(name, {**(inputs or {}), "address": address}, hosts))
