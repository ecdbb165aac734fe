"""The key store: tape key-encryption keys (KEKs) with ids and creation dates.

Owns `DIR/keys/<id>.json` beside the state file: each KEK (32 random bytes) sealed under a
key derived with scrypt from its EncryptionKey's passphrase, plus clear metadata (name,
created, rotated, exported). `rotate` adds a new key that becomes current for its name;
older keys stay, so every cartridge labelled under them stays readable. `export` writes a
passphrase-protected file another site can `import`. Secrets are never printed or stored
unwrapped; passphrases come in as callables resolved only when a key is opened.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protectctl.engine.crypto import DEFAULT_KDF_N, KdfParams, Sealer, aad
from protectctl.errors import CorruptionError, TapeError, WrongKeyError
from protectctl.fsutil import atomic_write

KEY_FORMAT = "protectctl-key"
EXPORT_FORMAT = "protectctl-key-export"
VERSION = 1


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key's public facts (never the key)."""

    id: str
    name: str  # the EncryptionKey document whose passphrase wraps it
    created: datetime
    rotated: datetime | None = None  # when a newer key replaced it as current
    exported: datetime | None = None  # last `keys export`

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "created": self.created.isoformat(),
            "rotated": self.rotated.isoformat() if self.rotated else None,
            "exported": self.exported.isoformat() if self.exported else None,
            "current": self.rotated is None,
        }


@dataclass(frozen=True, slots=True)
class _Stored:
    info: KeyInfo
    kdf: KdfParams
    sealed: bytes


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(str(value)).astimezone(UTC) if value else None


def _key_aad(info: KeyInfo) -> bytes:
    return aad("tape-key", info.id.encode(), info.name.encode(), info.created.isoformat().encode())


class KeyStore:
    """Keys under `directory`; `passphrases` maps an EncryptionKey name to a resolver."""

    def __init__(
        self, directory: Path, passphrases: Mapping[str, Callable[[], bytes]], *, kdf_n: int = DEFAULT_KDF_N
    ) -> None:
        self.directory = directory
        self._passphrases = passphrases
        self._kdf_n = kdf_n
        self._open: dict[str, bytes] = {}

    # -- reading ----------------------------------------------------------------------------

    def _path(self, key_id: str) -> Path:
        return self.directory / f"{key_id}.json"

    def _read(self, path: Path) -> _Stored:
        try:
            d = json.loads(path.read_bytes())
            if d["format"] != KEY_FORMAT or d["version"] != VERSION:
                raise ValueError("not a protectctl key file of a known version")
            kdf = d["kdf"]
            info = KeyInfo(
                str(d["id"]),
                str(d["name"]),
                _time(d["created"]) or datetime.now(UTC),
                _time(d.get("rotated")),
                _time(d.get("exported")),
            )
            params = KdfParams(int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), base64.b64decode(kdf["salt"]))
            return _Stored(info, params, base64.b64decode(d["sealed"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TapeError(f"key file {path} is unreadable: {err}") from err

    def _write(self, stored: _Stored) -> None:
        info, kdf = stored.info, stored.kdf
        doc = {
            "format": KEY_FORMAT,
            "version": VERSION,
            **info.to_json(),
            "kdf": {"name": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": _b64(kdf.salt)},
            "sealed": _b64(stored.sealed),
        }
        doc.pop("current")
        try:
            atomic_write(self._path(info.id), json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
        except OSError as err:
            raise TapeError(f"writing key file {self._path(info.id)}: {err.strerror}") from err

    def _all(self) -> list[_Stored]:
        if not self.directory.is_dir():
            return []
        return [self._read(p) for p in sorted(self.directory.glob("*.json"))]

    def infos(self) -> list[KeyInfo]:
        """Every key, by name then creation."""
        return sorted((s.info for s in self._all()), key=lambda k: (k.name, k.created, k.id))

    def get(self, key_id: str) -> KeyInfo:
        path = self._path(key_id)
        if not path.exists():
            known = ", ".join(k.id for k in self.infos()) or "none"
            raise TapeError(f"no key {key_id!r} in {self.directory}", hint=f"keys here: {known}")
        return self._read(path).info

    def current(self, name: str) -> KeyInfo | None:
        mine = [k for k in self.infos() if k.name == name and k.rotated is None]
        return mine[-1] if mine else None

    def resolve(self, key: str) -> list[KeyInfo]:
        """KEY as given on the command line: a key id, or an EncryptionKey name (all its keys)."""
        by_name = [k for k in self.infos() if k.name == key]
        return by_name or [self.get(key)]

    # -- creating -----------------------------------------------------------------------------

    def _passphrase(self, name: str) -> bytes:
        resolver = self._passphrases.get(name)
        if resolver is None:
            raise TapeError(
                f"no EncryptionKey named {name!r} in the policy",
                hint="a key is wrapped by the passphrase of the EncryptionKey of that name",
            )
        return resolver()

    def _seal(self, info: KeyInfo, kek: bytes, passphrase: bytes) -> _Stored:
        kdf = KdfParams.fresh(self._kdf_n)
        return _Stored(info, kdf, Sealer(kdf.derive(passphrase)).seal(kek, _key_aad(info)))

    def create(self, name: str, *, now: datetime) -> KeyInfo:
        """A new random key for EncryptionKey `name`; it becomes current, any previous one is rotated."""
        passphrase = self._passphrase(name)
        kek = os.urandom(32)
        info = KeyInfo(os.urandom(8).hex(), name, now.astimezone(UTC))
        for old in self._all():
            if old.info.name == name and old.info.rotated is None:
                self._write(replace(old, info=replace(old.info, rotated=info.created)))
        self._write(self._seal(info, kek, passphrase))
        self._open[info.id] = kek
        return info

    def ensure(self, name: str, *, now: datetime) -> KeyInfo:
        """The current key of `name`, created on first use."""
        return self.current(name) or self.create(name, now=now)

    def rotate(self, name: str, *, now: datetime) -> KeyInfo:
        if name not in self._passphrases:
            self._passphrase(name)  # raises, naming the problem
        return self.create(name, now=now)

    def rewrap(self, name: str, old_passphrase: bytes) -> list[str]:
        """Keys of `name` sealed under `old_passphrase`, re-sealed under its current passphrase."""
        done = []
        for stored in self._all():
            if stored.info.name != name:
                continue
            try:
                kek = Sealer(stored.kdf.derive(old_passphrase)).open(stored.sealed, _key_aad(stored.info), "key")
            except CorruptionError:
                continue  # not under the old passphrase (already re-wrapped, or another one)
            self._write(self._seal(stored.info, kek, self._passphrase(name)))
            done.append(stored.info.id)
        return done

    # -- opening ------------------------------------------------------------------------------

    def kek(self, key_id: str) -> bytes:
        """The unwrapped key; WrongKeyError when its EncryptionKey's passphrase does not open it."""
        cached = self._open.get(key_id)
        if cached is not None:
            return cached
        path = self._path(key_id)
        if not path.exists():
            raise TapeError(
                f"key {key_id} is not in the key store {self.directory}",
                hint="import it with `protectctl keys import FILE` (from the site that exported it)",
            )
        stored = self._read(path)
        kek = self._unseal(stored, self._passphrase(stored.info.name), f"key {key_id}")
        self._open[key_id] = kek
        return kek

    @staticmethod
    def _unseal(stored: _Stored, passphrase: bytes, what: str) -> bytes:
        try:
            return Sealer(stored.kdf.derive(passphrase)).open(stored.sealed, _key_aad(stored.info), what)
        except CorruptionError as err:
            raise WrongKeyError(
                f"the passphrase does not open {what} ({stored.info.name})",
                hint=f"check the passphrase of EncryptionKey {stored.info.name}",
            ) from err

    # -- export and import ----------------------------------------------------------------------

    def export_doc(self, keys: Sequence[KeyInfo], passphrase: bytes, *, now: datetime) -> dict[str, object]:
        """The export document of `keys`, sealed under `passphrase` (scrypt)."""
        entries = []
        for info in keys:
            kek = self.kek(info.id)
            sealed = self._seal(info, kek, passphrase)
            entries.append(
                {
                    **info.to_json(),
                    "kdf": {
                        "n": sealed.kdf.n,
                        "r": sealed.kdf.r,
                        "p": sealed.kdf.p,
                        "salt": _b64(sealed.kdf.salt),
                    },
                    "sealed": _b64(sealed.sealed),
                }
            )
        return {
            "format": EXPORT_FORMAT,
            "version": VERSION,
            "exported": now.astimezone(UTC).isoformat(),
            "keys": entries,
        }

    def mark_exported(self, keys: Sequence[KeyInfo], *, now: datetime) -> None:
        """Record that `keys` were exported (after the export file is safely written)."""
        for info in keys:
            stored = self._read(self._path(info.id))
            self._write(replace(stored, info=replace(stored.info, exported=now.astimezone(UTC))))

    def export(self, keys: Sequence[KeyInfo], dest: Path, passphrase: bytes, *, now: datetime) -> None:
        """Write `keys` to `dest`, sealed under `passphrase` (scrypt); marks them exported."""
        doc = self.export_doc(keys, passphrase, now=now)
        try:
            atomic_write(dest, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
        except OSError as err:
            raise TapeError(f"writing {dest}: {err.strerror}") from err
        self.mark_exported(keys, now=now)

    def import_file(self, source: Path, passphrase: Callable[[str], bytes], *, now: datetime) -> list[KeyInfo]:
        """Read an export; `passphrase(name)` opens it. Keys are re-wrapped under the local passphrase."""
        try:
            doc = json.loads(source.read_bytes())
        except (OSError, ValueError) as err:
            raise TapeError(f"{source} is not a protectctl key export: {err}") from err
        return self.import_doc(doc, passphrase, now=now, origin=str(source))

    def import_doc(
        self, doc: Mapping[str, Any], passphrase: Callable[[str], bytes], *, now: datetime, origin: str
    ) -> list[KeyInfo]:
        """`import_file` of an export document already read (`origin` names it in errors)."""
        source = origin
        try:
            if doc["format"] != EXPORT_FORMAT or doc["version"] != VERSION:
                raise ValueError("not a protectctl key export")
            entries = list(doc["keys"])
        except (ValueError, KeyError, TypeError) as err:
            raise TapeError(f"{source} is not a protectctl key export: {err}") from err
        imported = []
        for entry in entries:
            info = KeyInfo(
                str(entry["id"]),
                str(entry["name"]),
                _time(entry["created"]) or now,
                _time(entry.get("rotated")),
                _time(entry.get("exported")),
            )
            kdf = entry["kdf"]
            stored = _Stored(
                info,
                KdfParams(int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), base64.b64decode(kdf["salt"])),
                base64.b64decode(entry["sealed"]),
            )
            kek = self._unseal(stored, passphrase(info.name), f"key {info.id} in {source}")
            if self._path(info.id).exists():
                imported.append(self.get(info.id))
                continue
            local = info
            current = self.current(info.name)
            if local.rotated is None and current is not None and current.created > local.created:
                local = replace(local, rotated=current.created)  # ours is newer: it stays current
            elif local.rotated is None and current is not None:
                cur = self._read(self._path(current.id))
                self._write(replace(cur, info=replace(cur.info, rotated=local.created)))
            self._write(self._seal(local, kek, self._passphrase(info.name)))
            self._open[info.id] = kek
            imported.append(local)
        return imported


def unexported_warnings(keys: Sequence[KeyInfo], cartridges_by_key: Mapping[str, int]) -> list[str]:
    """Pure: a warning for every key that protects data and has never been exported."""
    out = []
    for key in keys:
        if key.exported is not None:
            continue
        held = cartridges_by_key.get(key.id, 0)
        what = f"{held} cartridge(s)" if held else "tape data"
        out.append(
            f"tape key {key.id} (EncryptionKey {key.name}, created {key.created:%Y-%m-%d}) protects "
            f"{what} but was never exported; a key on one machine dies with it: run "
            f"`protectctl keys export {key.id} --to FILE` and keep FILE off-site"
        )
    return out
