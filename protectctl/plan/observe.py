"""What the plan looks at before it is made: the repositories in the state (how many recovery
points each holds) and the notes an object-locked Storage deserves.

Effects for the plan (it reads repositories); the plan itself (plan/diff.py) stays pure and
receives these as `Observations`.
"""

from __future__ import annotations

from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.factory import close_storage, open_storage
from protectctl.errors import PlanError, ProtectctlError, RepositoryError
from protectctl.plan.diff import Observations
from protectctl.plan.resources import lock_retention_s
from protectctl.policy.load import Policy
from protectctl.policy.model import Kind, StorageSpec
from protectctl.state.model import State
from protectctl.units import Duration


def observe(state: State, *, remote: bool = False) -> Observations:
    """Facts from the repositories in the state (how many points each holds): local ones always
    (cheap), remote ones (sftp, over SSH) only when asked, for destroy's data guard; a remote
    repository that cannot be read then stops the plan rather than count as empty."""
    points: dict[str, int] = {}
    for address, rec in state.resources.items():
        if rec.kind != "storage":
            continue
        kind = rec.inputs.get("type")
        if kind == "local":
            try:
                points[address] = sum(1 for _ in open_storage(rec.inputs).list(ObjectKind.POINTS))
            except (RepositoryError, OSError):
                points[address] = 0
        elif remote:
            try:
                storage = open_storage(rec.inputs)
                try:
                    points[address] = sum(1 for _ in storage.list(ObjectKind.POINTS))
                finally:
                    close_storage(storage)
            except (ProtectctlError, OSError) as err:
                why = err.message if isinstance(err, ProtectctlError) else (err.strerror or str(err))
                raise PlanError(
                    f"cannot tell whether {address} holds recovery points: {why}",
                    hint="make its host reachable, or pass --delete-data to destroy it with its data",
                ) from None
    return Observations(storage_points=points)


def object_lock_notes(policy: Policy) -> list[str]:
    """What each object-locked Storage will lock, for the plan: its mode and the longest lock it sets."""
    notes = []
    for doc in policy.of(Kind.STORAGE).values():
        spec = doc.spec
        if isinstance(spec, StorageSpec) and spec.object_lock is not None:
            longest = Duration(lock_retention_s(policy, doc.name))
            notes.append(
                f"storage.{doc.name}: object lock {spec.object_lock.mode}: every object a point needs is "
                f"locked until the point's retention ends (longest lock set: {longest})"
            )
    return notes
