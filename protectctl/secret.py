"""Secrets: a value whose repr is masked, resolved only where it is used."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.errors import ProtectctlError


@dataclass(frozen=True, slots=True)
class Secret:
    """Bytes that never print."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file; never the value."""

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"env {self.env}" if self.env else f"file {self.file}"

    def resolve(self) -> Secret:
        """Read the secret; raises ProtectctlError naming where it looked."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ProtectctlError(
                    f"environment variable {self.env} is not set",
                    hint=f"export {self.env}=... (the passphrase of this key)",
                )
            return Secret(value.encode("utf-8"))
        assert self.file is not None
        try:
            data = self.file.read_bytes()
        except OSError as err:
            raise ProtectctlError(
                f"cannot read passphrase file {self.file}: {err.strerror}",
                hint="create it with mode 0600, or point the EncryptionKey at the right file",
            ) from err
        secret = data.rstrip(b"\r\n")
        if not secret:
            raise ProtectctlError(f"passphrase file {self.file} is empty")
        return Secret(secret)
