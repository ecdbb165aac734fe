"""`keys list/rotate/export/import`: the policy's tape keys and repository key files, together.

An EncryptionKey protects tape keys (tape/keys.py) and the master keys of the repositories whose
Storage names it (tape/repokeys.py); these commands act on both, so one export restores a site.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protectctl.policy.load import Policy

from protectctl.tape.session import repository_key_targets, tape_service


def _load(policy_dir: Path) -> Policy:
    from protectctl.plan.compile import load

    return load(policy_dir)


def keys_list(policy_dir: Path) -> list[dict[str, object]]:
    """Tape keys, then every key file of the policy's (local) repositories."""
    from protectctl.tape import repokeys
    from protectctl.tape.service import key_rows

    policy = _load(policy_dir)
    service = tape_service(policy_dir, policy)
    return key_rows(service.keys.infos(), service.cartridges_by_key()) + repokeys.rows(
        repository_key_targets(policy), service.ctx.home
    )


def keys_rotate(policy_dir: Path, name: str, *, old_passphrase_file: Path | None = None) -> dict[str, object]:
    """Tape: a new current KEK for `name` (and, given the old passphrase, older KEKs re-wrapped under
    the current one). Repositories whose Storage uses `name`: the master key re-wrapped under the
    passphrase `name` now gives (a new key file; the old passphrase's files removed), no data rewritten."""
    from protectctl.errors import TapeError
    from protectctl.policy.model import Kind
    from protectctl.tape import repokeys

    policy = _load(policy_dir)
    service = tape_service(policy_dir, policy)
    if name not in service.ctx.passphrases:
        raise TapeError(f"no EncryptionKey named {name!r} in the policy")
    old = passphrase_file_value(old_passphrase_file) if old_passphrase_file is not None else None
    out: dict[str, object] = {"id": None, "rewrapped": [], "repositories": []}
    uses_tape = any(c.key_name == name for c in service.ctx.libraries.values()) or any(
        k.name == name for k in service.keys.infos()
    )
    if uses_tape:
        if old is not None:
            out["rewrapped"] = service.keys.rewrap(name, old)
        out.update(service.keys.rotate(name, now=service.now).to_json())
    repos = [t for t in repository_key_targets(policy) if t.key_name == name]
    out["repositories"] = [repokeys.rotate(t, old) for t in repos]
    if not uses_tape and not repos:
        raise TapeError(
            f"EncryptionKey {name} protects no TapeLibrary and no local Storage",
            hint=f"libraries: {len(policy.of(Kind.TAPE_LIBRARY))}",
        )
    return out


def passphrase_file_value(path: Path) -> bytes:
    from protectctl.secret import SecretRef

    return SecretRef(file=path).resolve().value


BUNDLE_FORMAT = "protectctl-key-bundle"


def keys_export(policy_dir: Path, key: str, dest: Path, *, passphrase_file: Path | None = None) -> list[str]:
    """Export KEY to a passphrase-protected file: an EncryptionKey name (every repository master key
    and tape key it protects, in one bundle), a tape key id, a Storage name or one of its repository
    key ids (that repository's master key, re-wrapped)."""
    import json

    from protectctl.errors import TapeError
    from protectctl.fsutil import atomic_write
    from protectctl.policy.model import Kind
    from protectctl.tape import repokeys

    policy = _load(policy_dir)
    service = tape_service(policy_dir, policy)
    targets = repository_key_targets(policy)
    by_key = policy.get(Kind.ENCRYPTION_KEY, key) is not None
    if by_key:
        # repositories not initialised yet hold no master key to export
        repo = [t for t in targets if t.key_name == key and repokeys.rows([t], service.ctx.home)]
        tape_keys = [k for k in service.keys.infos() if k.name == key]
        names = {key}
    else:
        repo = [t for t in targets if t.storage_name == key]
        if not repo:
            repo = [t for t in targets if any(r["id"] == key for r in repokeys.rows([t], service.ctx.home))]
        tape_keys = [] if repo else service.keys.resolve(key)
        names = {k.name for k in tape_keys} | {t.key_name for t in repo}
    if not repo and not tape_keys:
        raise TapeError(
            f"EncryptionKey {key} protects nothing yet: no repository was initialised with it and "
            "no tape key was made under it",
            hint="run `protectctl apply` first",
        )

    def passphrase_for(name: str, fallback: Callable[[], bytes] | None) -> bytes:
        if passphrase_file is not None:
            return passphrase_file_value(passphrase_file)
        resolver = service.ctx.passphrases.get(name) or fallback
        value = bytes(resolver()) if resolver is not None else b""
        if not value:
            raise TapeError(f"no passphrase for EncryptionKey {name}", hint="give --passphrase-file")
        return value

    parts: list[dict[str, object]] = []
    repo_ids: list[str] = []
    for target in repo:
        doc, opened = repokeys.export_doc(target, passphrase_for(target.key_name, target.passphrase), now=service.now)
        parts.append(doc)
        repo_ids.extend(opened)
    if tape_keys:
        (name,) = names if len(names) == 1 else (sorted(names)[0],)
        parts.append(service.keys.export_doc(tape_keys, passphrase_for(name, None), now=service.now))
    doc = parts[0] if len(parts) == 1 else {"format": BUNDLE_FORMAT, "version": 1, "parts": parts}
    try:
        atomic_write(dest, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
    except OSError as err:
        raise TapeError(f"writing {dest}: {err.strerror}") from err
    if repo_ids:
        repokeys.mark_exported(service.ctx.home, repo_ids, service.now)
    if tape_keys:
        service.keys.mark_exported(tape_keys, now=service.now)
    return repo_ids + [k.id for k in tape_keys]


def keys_import(policy_dir: Path, source: Path, *, passphrase_file: Path | None = None) -> list[str]:
    """Import keys exported at another site (one export or a bundle); they are re-wrapped under the
    local passphrase."""
    import json

    from protectctl.errors import TapeError
    from protectctl.tape import repokeys

    policy = _load(policy_dir)
    service = tape_service(policy_dir, policy)

    def opener(name: str) -> bytes:
        if passphrase_file is not None:
            return passphrase_file_value(passphrase_file)
        resolver = service.ctx.passphrases.get(name)
        if resolver is None:
            raise TapeError(
                f"the export holds keys of EncryptionKey {name}, which this policy lacks",
                hint="add that EncryptionKey, or give --passphrase-file",
            )
        return bytes(resolver())

    try:
        doc = json.loads(source.read_bytes())
    except (OSError, ValueError) as err:
        raise TapeError(f"{source} is not a protectctl key export: {err}") from err
    if not isinstance(doc, dict):
        raise TapeError(f"{source} is not a protectctl key export")
    parts = doc.get("parts") if doc.get("format") == BUNDLE_FORMAT else [doc]
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise TapeError(f"{source} is not a protectctl key export: a bundle without parts")
    imported: list[str] = []
    for part in parts:
        if part.get("format") == repokeys.EXPORT_FORMAT:
            imported += repokeys.import_doc(part, repository_key_targets(policy), opener, origin=str(source))
        else:
            imported += [k.id for k in service.keys.import_doc(part, opener, now=service.now, origin=str(source))]
    return imported
