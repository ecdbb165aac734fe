"""The agent's cache of passphrase-derived keys: a timer-started job skips scrypt.

Opening a repository derives a wrapping key from the passphrase with scrypt (crypto.py:
32 MiB and ~0.1 s quiet, ~0.9 s on a loaded 2-core host) on every run. An agent reads its
passphrase from a root-only copy apply made (etc/protectctl/keys/KEY.passphrase, 0600 in a
0700 directory). This cache keeps the derived wrapping key per key file, so later runs open
the key file without scrypt. It lives in the agent's state directory (root-only, 0700:
STATE_DIR/keys/KEY.passphrase.kdf-cache, 0600 in a 0700 directory), not beside the passphrase
copy, because the sandboxed sync service may write there and /etc is read-only to it.

What it holds, and why it is no weaker than the passphrase file:
- one entry per key file the passphrase opened, named by a hash of that key file's KDF
  parameters and salt: a key file rotated or replaced (new salt) finds no entry;
- each entry is the derived key sealed with AES-256-GCM under a key hashed (BLAKE3) from the
  passphrase: after the passphrase changes, no entry opens. Only the user who can read the
  passphrase copy (root, the owner of both root-only directories) can read this file, and the
  derived key opens nothing the passphrase does not.
- Never trusted: an entry that does not open, a file of the wrong owner or with group/other
  access, a damaged file, or a derived key that does not open the key file are all ignored
  and the job derives the key as without a cache (and rewrites the entry). Nothing of it is
  logged, and no secret is ever in argv.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import blake3

from protectctl.fsutil import atomic_write

CACHE_SUFFIX = ".kdf-cache"
_MAX_ENTRIES = 16  # one per repository key file this passphrase opens; a few storages share a key
_CONTEXT = "protectctl 2026-12 agent kdf cache v1"


def cache_path_for(state_dir: Path, passphrase_file: Path | str) -> Path:
    """Where the agent caches the keys derived from a passphrase file: under its state directory
    (root-only, and writable by the sandboxed sync service, unlike /etc)."""
    return state_dir / "keys" / f"{Path(passphrase_file).name}{CACHE_SUFFIX}"


class DerivedKeyCache:
    """Derived wrapping keys of key files, by KDF parameters, sealed under the passphrase."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lookup(self, fingerprint: str, passphrase: bytes) -> bytes | None:
        """The derived key stored for `fingerprint`, or None (no entry, or any doubt)."""
        try:
            entries = self._read()
            sealed = entries.get(fingerprint)
            if not isinstance(sealed, str):
                return None
            from protectctl.engine.crypto import Sealer

            derived = Sealer(_seal_key(passphrase)).open(
                base64.b64decode(sealed, validate=True), _aad(fingerprint), "kdf cache"
            )
            return derived if len(derived) == 32 else None
        except Exception:  # noqa: BLE001 - a cache never stops a job: derive the key instead
            return None

    def store(self, fingerprint: str, passphrase: bytes, derived: bytes) -> None:
        """Record `derived` for `fingerprint`; best effort (a failure only costs the next run a KDF)."""
        try:
            from protectctl.engine.crypto import Sealer

            try:
                entries = self._read()
            except (OSError, ValueError):
                entries = {}
            entries.pop(fingerprint, None)
            sealed = Sealer(_seal_key(passphrase)).seal(derived, _aad(fingerprint))
            entries[fingerprint] = base64.b64encode(sealed).decode()
            kept = dict(list(entries.items())[-_MAX_ENTRIES:])
            self._write(json.dumps({"version": 1, "entries": kept}, sort_keys=False).encode())
        except Exception:  # noqa: BLE001,S110 - best effort, never a reason for a job to fail
            pass

    def _read(self) -> dict[str, object]:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise ValueError("kdf cache: not a private file of this user")
            with os.fdopen(fd, "rb", closefd=False) as f:
                document = json.loads(f.read(1 << 20))
        finally:
            os.close(fd)
        if (
            not isinstance(document, dict)
            or document.get("version") != 1
            or not isinstance(document.get("entries"), dict)
        ):
            raise ValueError("kdf cache: unknown format")
        entries: dict[str, object] = document["entries"]
        return entries

    def _write(self, data: bytes) -> None:
        """Crash-safe: a private temporary file, fsync, rename over the old cache."""
        parent = self.path.parent
        parent.mkdir(mode=0o700, exist_ok=True)
        st = os.stat(parent)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return  # a directory others can enter: no secret of ours goes there
        atomic_write(self.path, data, mode=0o600)  # a private (mkstemp) temporary file, fsync, rename


def kdf_fingerprint(n: int, r: int, p: int, salt: bytes) -> str:
    """Names a key file's KDF (parameters and salt): the same passphrase gives the same key."""
    return blake3.blake3(json.dumps([n, r, p, salt.hex()]).encode()).hexdigest()[:32]


def _seal_key(passphrase: bytes) -> bytes:
    return blake3.blake3(passphrase, derive_key_context=_CONTEXT).digest()


def _aad(fingerprint: str) -> bytes:
    return f"kdf-cache\0{fingerprint}".encode()
