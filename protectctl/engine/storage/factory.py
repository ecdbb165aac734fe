"""The one place a Storage's inputs (plan/resources.py `storage_inputs`) become a StorageBackend.

The jobs (agent/sources.py), the plan's observation (plan/observe.py), apply (apply/effects.py),
restore and tape all open storage here. Inputs hold secrets only as references (`{env: NAME}` or
`{file: PATH}`), resolved now, at the moment of use. sftp needs an SSH connection, so that branch
imports provision/ssh.py when asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl.engine.storage.base import ObjectKind, ObjectLockedError, ObjectMissingError, StorageBackend
from protectctl.errors import ProtectctlError, RepositoryError
from protectctl.secret import SecretRef

if TYPE_CHECKING:
    from protectctl.engine.storage.s3 import S3Storage


def open_storage(inputs: Mapping[str, Any]) -> StorageBackend:
    """A backend for `inputs` (local, sftp or s3); ProtectctlError for an unknown type."""
    kind = inputs.get("type")
    if kind == "local":
        from protectctl.engine.storage.local import LocalStorage

        return LocalStorage(Path(str(inputs["path"])))
    if kind == "sftp":
        from protectctl.provision.ssh import open_remote_storage

        remote: StorageBackend = open_remote_storage(inputs)
        return remote
    if kind == "s3":
        return open_s3(inputs)
    raise ProtectctlError(f"storage type {kind!r} is not supported by this version", hint="use local, sftp or s3")


def close_storage(storage: StorageBackend) -> None:
    """Close a storage that holds a connection (sftp: its SSH session); the others hold none."""
    close = getattr(storage, "close", None)
    if close is not None:
        close()


def s3_location(inputs: Mapping[str, Any]) -> Any:
    from protectctl.engine.storage.s3 import S3Location

    return S3Location(
        bucket=str(inputs["bucket"]),
        prefix=str(inputs.get("prefix") or ""),
        endpoint=inputs.get("endpoint") or None,
        region=str(inputs.get("region") or "us-east-1"),
    )


def s3_credentials(refs: Mapping[str, Any] | None) -> Any:
    """An S3 key pair from its references; None (boto3's default chain) when the Storage names none."""
    from protectctl.engine.storage.s3 import S3Credentials

    if not refs:
        return None
    key_id, secret = (_resolve(refs[f], f) for f in ("access_key_id", "secret_access_key"))
    return S3Credentials(key_id, secret)


def _resolve(ref: Mapping[str, Any], what: str) -> str:
    secret_ref = SecretRef(env=ref.get("env"), file=Path(ref["file"]) if ref.get("file") else None)
    try:
        return secret_ref.resolve().value.decode()
    except ProtectctlError as err:
        raise ProtectctlError(
            f"s3 {what.replace('_', ' ')}: {err.message}",
            hint=f"set it ({secret_ref.describe()}); the Storage's `credentials` say where",
        ) from None


def open_s3(inputs: Mapping[str, Any]) -> S3Storage:
    from protectctl.engine.storage.s3 import ObjectLock, S3Storage

    lock = inputs.get("object_lock")
    return S3Storage(
        s3_location(inputs),
        s3_credentials(inputs.get("credentials")),
        lock=ObjectLock(str(lock["mode"]), int(lock["retain_s"])) if lock else None,
    )


def prepare_bucket(storage: Any) -> None:
    """Check that the bucket is there and, for an object-locked Storage, that it has object lock on
    (apply refuses to start a locked repository in a bucket that cannot lock)."""
    storage.check_bucket()


def delete_repository(storage: StorageBackend) -> None:
    """Every object of the repository (destroy --delete-data); locked ones stay and are named."""
    locked = 0
    for kind in ObjectKind:
        for info in list(storage.list(kind)):
            try:
                storage.delete(kind, info.name)
            except ObjectMissingError:
                continue
            except ObjectLockedError:
                locked += 1
    if locked:
        raise RepositoryError(
            f"{storage.describe()}: {locked} object(s) are under object-lock retention and stay until it ends",
            hint="run destroy --delete-data again after the retention ends",
        )
