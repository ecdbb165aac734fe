"""The state backend a policy's Settings name: local file, s3 object, or postgres table.

Used by every command that reads or writes the state (api.py `state_backend`) and by
`state migrate`, which opens two of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from protectctl.errors import StateError
from protectctl.policy.load import Policy
from protectctl.policy.model import Kind, StateSettings, StorageSpec, StorageType
from protectctl.state.backend import StateBackend

BACKENDS = ("local", "s3", "postgres")


def open_state_backend(policy: Policy, settings: StateSettings, backend: str | None = None) -> StateBackend:
    """The backend `settings` describe (or the one named `backend`, its fields from the same settings)."""
    kind = backend or settings.backend
    if kind == "local":
        from protectctl.state.local import LocalStateBackend

        return LocalStateBackend(local_state_path(policy, settings))
    if kind == "s3":
        return _s3(policy, settings)
    if kind == "postgres":
        return _postgres(settings)
    raise StateError(f"unknown state backend {kind!r}", hint=f"one of: {', '.join(BACKENDS)}")


def local_state_path(policy: Policy, settings: StateSettings) -> Path:
    rel = settings.path
    return Path(rel) if Path(rel).is_absolute() else policy.root / rel


def _s3(policy: Policy, settings: StateSettings) -> StateBackend:
    from protectctl.engine.storage.factory import s3_credentials, s3_location
    from protectctl.engine.storage.s3 import make_client
    from protectctl.plan.resources import storage_inputs
    from protectctl.state.s3 import S3StateBackend

    doc = policy.get(Kind.STORAGE, settings.storage) if settings.storage else None
    if doc is None or not isinstance(doc.spec, StorageSpec) or doc.spec.type is not StorageType.S3:
        raise StateError(
            f"the s3 state backend needs `storage:` naming a Storage of type s3 (got {settings.storage!r})"
        )
    inputs = storage_inputs(policy, doc.name)
    location = s3_location(inputs)
    key = location.prefix + ("" if not location.prefix or location.prefix.endswith("/") else "/") + settings.key
    creds = inputs.get("credentials")
    client = make_client(location, s3_credentials(creds if isinstance(creds, Mapping) else None), max_attempts=3)
    return S3StateBackend(client, location.bucket, key, where=f"s3://{location.bucket}/{key}")


def _postgres(settings: StateSettings) -> StateBackend:
    from protectctl.secret import SecretRef
    from protectctl.state.postgres import PostgresStateBackend

    if settings.dsn is None:
        raise StateError("the postgres state backend needs `dsn: {env: VARIABLE}` (or `file:`)")
    ref = SecretRef(env=settings.dsn.env, file=Path(settings.dsn.file) if settings.dsn.file else None)
    dsn = ref.resolve().value.decode()
    return PostgresStateBackend(dsn, schema=settings.schema_, name=settings.name)


def migrate(source: StateBackend, target: StateBackend, *, lock_timeout_s: float) -> tuple[str, int]:
    """Copy the state, lineage and serial as they are, under both locks; returns (lineage, serial).

    Refuses a target that holds another lineage or a newer serial (it is someone else's state)."""
    with source.lock("state migrate", lock_timeout_s), target.lock("state migrate", lock_timeout_s):
        state = source.read()
        if not source.exists():
            raise StateError(f"{source.describe()} holds no state to migrate")
        if target.exists():
            there = target.read()
            if there.lineage != state.lineage:
                raise StateError(
                    f"{target.describe()} already holds another state (lineage {there.lineage})",
                    hint="point the settings at an empty key/name, or remove that state first",
                )
            if there.serial > state.serial:
                raise StateError(
                    f"{target.describe()} holds a newer serial ({there.serial} > {state.serial}) of this state",
                    hint="it was already migrated and used: switch `backend:` to it",
                )
        target.write(state)
        return state.lineage, state.serial
