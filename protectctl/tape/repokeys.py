"""Repository master keys under the same `keys` commands as tape keys.

A repository's master key never leaves it unwrapped: it lives in the repository's key files
(`keys/<name>`, each the master key sealed under scrypt of a passphrase, AAD = repository id
and file name). Here:

* `list` — one row per key file: storage, key id (the key file's name), repository id,
  created (the file's mtime), where the passphrase comes from, exported or not.
* `export` — the master key re-wrapped (same key-file format) under the export passphrase,
  plus the repository id and storage name; never the raw key.
* `import` — opens an export with its passphrase and adds a key file under the local
  EncryptionKey's passphrase to the storage holding that repository id.
* `rotate` — the passphrase change: a new key file under the passphrase the EncryptionKey
  now gives, opened with the old passphrase; the key files the old passphrase opened are
  removed. The master key and every pack stay as they are: no data is rewritten.

When each repository key was exported is recorded in `DIR/repository-keys.json` beside the
state file (the key files themselves are in the repository and are not touched for that).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protectctl.engine.crypto import DEFAULT_KDF_N, KdfParams, MasterKeys, unwrap_keys, wrap_keys
from protectctl.engine.storage.base import ObjectKind, StorageBackend
from protectctl.errors import TapeError, WrongKeyError
from protectctl.fsutil import atomic_write

EXPORT_FORMAT = "protectctl-repository-key-export"
VERSION = 1


@dataclass(frozen=True, slots=True)
class RepoKeyTarget:
    """A Storage of the policy: how to reach it and its EncryptionKey."""

    storage_name: str
    key_name: str
    passphrase_source: str  # "file PATH" / "env VAR"
    storage: StorageBackend
    passphrase: Callable[[], bytes]
    local_path: Path | None = None  # for created times of local key files


def _ledger(home: Path) -> Path:
    return home / "repository-keys.json"


def exported_at(home: Path) -> dict[str, str]:
    try:
        return dict(json.loads(_ledger(home).read_bytes()).get("exported", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _mark_exported(home: Path, ids: Sequence[str], now: datetime) -> None:
    marks = exported_at(home)
    marks.update({i: now.astimezone(UTC).isoformat() for i in ids})
    atomic_write(_ledger(home), json.dumps({"exported": marks}, indent=1, sort_keys=True).encode(), mode=0o600)


def _repo_id(target: RepoKeyTarget) -> str:
    from protectctl.engine.repository import CONFIG_NAME

    try:
        return str(json.loads(target.storage.get(ObjectKind.CONFIG, CONFIG_NAME))["id"])
    except Exception as err:  # noqa: BLE001 - any unreadable config: no repository to list
        raise TapeError(f"storage {target.storage_name}: no readable repository ({err})") from err


def _key_names(target: RepoKeyTarget) -> list[str]:
    return sorted(i.name for i in target.storage.list(ObjectKind.KEYS))


def rows(targets: Sequence[RepoKeyTarget], home: Path) -> list[dict[str, object]]:
    """One row per key file of each repository that exists."""
    marks = exported_at(home)
    out: list[dict[str, object]] = []
    for t in targets:
        try:
            repo_id = _repo_id(t)
        except TapeError:
            continue
        for name in _key_names(t):
            created = None
            if t.local_path is not None and (t.local_path / "keys" / name).exists():
                mtime = (t.local_path / "keys" / name).stat().st_mtime
                created = datetime.fromtimestamp(mtime, UTC).isoformat()
            out.append(
                {
                    "kind": "repository",
                    "id": name,
                    "name": t.key_name,
                    "storage": t.storage_name,
                    "repository": repo_id,
                    "created": created,
                    "passphrase": t.passphrase_source,
                    "exported": marks.get(name),
                    "current": True,
                    "cartridges": 0,
                }
            )
    return out


def _open_master(t: RepoKeyTarget, repo_id: str, passphrase: bytes) -> tuple[MasterKeys, list[str]]:
    """The master key and the names of the key files `passphrase` opens."""
    opened: list[str] = []
    keys: MasterKeys | None = None
    for name in _key_names(t):
        try:
            keys = unwrap_keys(t.storage.get(ObjectKind.KEYS, name), passphrase, repo_id, name)
            opened.append(name)
        except WrongKeyError:
            continue
    if keys is None:
        raise WrongKeyError(
            f"the passphrase does not open repository {t.storage_name}",
            hint=f"check the passphrase of EncryptionKey {t.key_name}",
        )
    return keys, opened


def export_doc(
    t: RepoKeyTarget, passphrase: bytes, *, now: datetime, kdf_n: int = DEFAULT_KDF_N
) -> tuple[dict[str, Any], list[str]]:
    """The export document of `t`'s master key wrapped under `passphrase`, and the key files it came from."""
    repo_id = _repo_id(t)
    keys, opened = _open_master(t, repo_id, t.passphrase())
    name = os.urandom(16).hex()
    doc = {
        "format": EXPORT_FORMAT,
        "version": VERSION,
        "exported": now.astimezone(UTC).isoformat(),
        "storage": t.storage_name,
        "encryption_key": t.key_name,
        "repository": repo_id,
        "key_name": name,
        "wrapped": base64.b64encode(wrap_keys(keys, passphrase, repo_id, name, KdfParams.fresh(kdf_n))).decode(),
    }
    return doc, opened


def mark_exported(home: Path, ids: Sequence[str], now: datetime) -> None:
    """Record that the key files `ids` were exported (after the export file is safely written)."""
    _mark_exported(home, ids, now)


def export(
    t: RepoKeyTarget, dest: Path, passphrase: bytes, home: Path, *, now: datetime, kdf_n: int = DEFAULT_KDF_N
) -> list[str]:
    """Write the master key of `t`'s repository wrapped under `passphrase`; marks its key files exported."""
    doc, opened = export_doc(t, passphrase, now=now, kdf_n=kdf_n)
    try:
        atomic_write(dest, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
    except OSError as err:
        raise TapeError(f"writing {dest}: {err.strerror}") from err
    _mark_exported(home, opened, now)
    return opened


def import_file(
    source: Path, targets: Sequence[RepoKeyTarget], passphrase: Callable[[str], bytes], *, kdf_n: int = DEFAULT_KDF_N
) -> list[str]:
    """Add a key file for the exported master key to the storage holding that repository id."""
    try:
        doc: dict[str, Any] = json.loads(source.read_bytes())
    except (OSError, ValueError) as err:
        raise TapeError(f"{source} is not a protectctl repository key export: {err}") from err
    return import_doc(doc, targets, passphrase, origin=str(source), kdf_n=kdf_n)


def import_doc(
    doc: Mapping[str, Any],
    targets: Sequence[RepoKeyTarget],
    passphrase: Callable[[str], bytes],
    *,
    origin: str,
    kdf_n: int = DEFAULT_KDF_N,
) -> list[str]:
    """`import_file` of an export document already read (`origin` names it in errors)."""
    try:
        repo_id, name, wrapped = str(doc["repository"]), str(doc["key_name"]), base64.b64decode(doc["wrapped"])
    except (ValueError, KeyError, TypeError) as err:
        raise TapeError(f"{origin} is not a protectctl repository key export: {err}") from err
    keys = unwrap_keys(wrapped, passphrase(str(doc.get("encryption_key", ""))), repo_id, name)
    for t in targets:
        try:
            if _repo_id(t) != repo_id:
                continue
        except TapeError:
            continue
        local = t.passphrase()
        try:
            _open_master(t, repo_id, local)
            return []  # the local passphrase already opens it
        except WrongKeyError:
            pass
        new = os.urandom(16).hex()
        t.storage.put(ObjectKind.KEYS, new, wrap_keys(keys, local, repo_id, new, KdfParams.fresh(kdf_n)))
        return [new]
    raise TapeError(
        f"no Storage of this policy holds repository {repo_id} (exported from {doc.get('storage')})",
        hint="copy the repository first, point a Storage at it, then import",
    )


def rotate(t: RepoKeyTarget, old_passphrase: bytes | None, *, kdf_n: int = DEFAULT_KDF_N) -> dict[str, object]:
    """Re-wrap the master key under the passphrase the EncryptionKey now gives; no data is rewritten."""
    repo_id = _repo_id(t)
    new = t.passphrase()
    try:
        _, already = _open_master(t, repo_id, new)
        if old_passphrase is None:
            return {"storage": t.storage_name, "added": None, "removed": [], "note": "already under this passphrase"}
    except WrongKeyError:
        already = []
        if old_passphrase is None:
            raise TapeError(
                f"the current passphrase of {t.key_name} does not open repository {t.storage_name}",
                hint="give the previous one with --old-passphrase-file",
            ) from None
    keys, old_files = _open_master(t, repo_id, old_passphrase or new)
    name = os.urandom(16).hex()
    t.storage.put(ObjectKind.KEYS, name, wrap_keys(keys, new, repo_id, name, KdfParams.fresh(kdf_n)))
    removed = [f for f in old_files if f not in already]
    for f in removed:
        t.storage.delete(ObjectKind.KEYS, f)
    return {"storage": t.storage_name, "added": name, "removed": removed}


def unexported_warnings(rows_: Sequence[Mapping[str, object]], points: Mapping[str, int]) -> list[str]:
    """Pure: a warning per repository key file never exported, for repositories holding points."""
    out = []
    for r in rows_:
        held = points.get(f"storage.{r['storage']}", 0)
        if r["exported"] or not held:
            continue
        out.append(
            f"repository key {r['id']} (Storage {r['storage']}, EncryptionKey {r['name']}) protects "
            f"{held} recovery point(s) but was never exported; a key on one machine dies with it: run "
            f"`protectctl keys export {r['storage']} --to FILE` and keep FILE off-site"
        )
    return out
