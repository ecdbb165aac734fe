"""Desired resources vs recorded state → changes. Pure.

`make_plan` is a function of (resources, state, now, observations): the same inputs give
the same Plan, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from protectctl.errors import Diagnostic, PlanError
from protectctl.plan.graph import check_resources_acyclic, ordered
from protectctl.plan.model import (
    PLAN_FORMAT,
    Action,
    AttributeChange,
    Change,
    GroupEstimate,
    Plan,
    PlanWarning,
    Reason,
    trusted,
)
from protectctl.plan.resources import Resource
from protectctl.state.model import ResourceState, State


@dataclass(frozen=True, slots=True)
class Observations:
    """Facts gathered by effects before planning (`--refresh`, repository contents)."""

    storage_points: Mapping[str, int] = field(default_factory=dict)  # storage address → recovery points
    drifted: Mapping[str, str] = field(default_factory=dict)  # address → what differs on the host
    # key address → why unexpired tape cartridges still need it (never deleted or replaced)
    keys_in_use: Mapping[str, str] = field(default_factory=dict)
    # library address → its unexpired cartridges (kept unless --delete-data)
    libraries_in_use: Mapping[str, str] = field(default_factory=dict)


def make_plan(
    resources: Sequence[Resource],
    state: State,
    *,
    now: datetime,
    version: str,
    policy_dir: str,
    destroy: bool = False,
    delete_data: bool = False,
    observed: Observations | None = None,
    estimates: Sequence[GroupEstimate] = (),
    warnings: Sequence[str | Diagnostic] = (),
) -> Plan:
    """Raises PlanError for a dependency cycle or a refused deletion of data."""
    observed = observed or Observations()
    # each address and dependency list made once, for the cycle check and the changes
    by_address: dict[str, Resource] = {}
    depends_on: dict[str, list[str]] = {}
    for res in resources:
        address = str(res.address)
        by_address[address] = res
        depends_on[address] = [str(d) for d in res.depends_on]
    check_resources_acyclic(resources, depends_on)
    desired = {} if destroy else by_address
    changes: list[Change] = []
    recorded = state.resources
    for address, res in desired.items():
        change = _change_for(res, address, depends_on[address], recorded.get(address), observed)
        if change is not None:
            changes.append(change)
    for address, rec in state.resources.items():
        if address not in desired:
            changes.append(
                _delete(address, rec, Reason.DESTROY if destroy else Reason.REMOVED, delete_data, observed, state)
            )
    _refuse_key_loss(changes, observed)
    if destroy and not delete_data:
        _refuse_data_loss(state, observed)
    stopped = None if destroy else stops_all_protection(changes, state)
    if stopped is not None:
        warnings = [
            *warnings,
            f"{stopped}: apply refuses this plan unless given --allow-remove-all (or run `protectctl destroy`)",
        ]
    order = {addr: i for i, addr in enumerate(ordered(changes))}
    changes.sort(key=lambda c: order[c.address])
    return trusted(
        Plan,
        {
            "format_version": PLAN_FORMAT,
            "protectctl_version": version,
            "created_at": now,
            "lineage": state.lineage,
            "serial": state.serial,
            "policy_dir": policy_dir,
            "destroy": destroy,
            "delete_data": delete_data,
            "changes": changes,
            "estimates": list(estimates),
            "warnings": [str(w) for w in warnings],
            "diagnostics": [PlanWarning.of(w) for w in warnings],
        },
    )


def _change_for(
    res: Resource, address: str, depends_on: list[str], rec: ResourceState | None, observed: Observations
) -> Change | None:
    after = dict(res.inputs)
    common: dict[str, Any] = {
        "address": address,
        "kind": res.address.kind,
        "after": after,
        "depends_on": depends_on,
        "host": res.host,
        "holds_data": res.holds_data,
    }
    if rec is None:
        return _change(action=Action.CREATE, reason=Reason.NEW, notes=list(res.notes), **common)
    if rec.inputs == after:
        attrs: list[AttributeChange] = []
    else:
        attrs = diff_attributes(rec.inputs, after, res.replace_on)
    if not attrs:
        if address in observed.drifted:
            return _change(
                action=Action.UPDATE,
                reason=Reason.DRIFT,
                before=rec.inputs,
                notes=[f"drift: {observed.drifted[address]}", *res.notes],
                **common,
            )
        return None
    if any(a.forces_replace for a in attrs):
        notes = []
        if res.holds_data:
            notes.append("the old one is forgotten, not deleted: its data stays where it is")
        notes += res.notes
        return _change(
            action=Action.REPLACE,
            reason=Reason.FORCED_REPLACE,
            before=rec.inputs,
            attributes=attrs,
            notes=notes,
            **common,
        )
    return _change(
        action=Action.UPDATE,
        reason=Reason.CHANGED,
        before=rec.inputs,
        attributes=attrs,
        notes=list(res.notes),
        **common,
    )


def _change(
    *,
    address: str,
    kind: str,
    action: Action,
    reason: Reason,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    attributes: list[AttributeChange] | None = None,
    depends_on: list[str] | None = None,
    host: str | None = None,
    holds_data: bool = False,
    delete_data: bool = False,
    notes: list[str] | None = None,
) -> Change:
    """A Change from values this module made itself: pydantic's re-validation of 16,000 of them
    was a third of `plan` for 1,000 groups (tests/bench/bench_plan.py)."""
    return trusted(
        Change,
        {
            "address": address,
            "kind": kind,
            "action": action,
            "reason": reason,
            "before": before,
            "after": after,
            "attributes": [] if attributes is None else attributes,
            "depends_on": [] if depends_on is None else depends_on,
            "host": host,
            "holds_data": holds_data,
            "delete_data": delete_data,
            "notes": [] if notes is None else notes,
        },
    )


def _delete(
    address: str, rec: ResourceState, reason: Reason, delete_data: bool, observed: Observations, state: State
) -> Change:
    notes: list[str] = []
    data = rec.holds_data
    if data and not delete_data:
        points = observed.storage_points.get(address)
        held = f" ({points} recovery point(s))" if points else ""
        notes.append(
            f"data kept{held}: recovery points stay until their retention ends; pass --delete-data to delete it"
        )
    if rec.kind == "source":
        notes.append("its recovery points are kept until their retention ends")
    cartridges = observed.libraries_in_use.get(address)
    if cartridges:
        notes.append(
            f"{cartridges}; they are deleted with it"
            if data and delete_data
            else f"cartridges kept ({cartridges}); pass --delete-data to delete them"
        )
    return _change(
        address=address,
        kind=rec.kind,
        action=Action.DELETE,
        reason=reason,
        before=rec.inputs,
        depends_on=list(rec.depends_on),
        host=rec.host,
        holds_data=data,
        delete_data=data and delete_data,
        notes=notes,
    )


def _refuse_data_loss(state: State, observed: Observations) -> None:
    """Destroy without --delete-data stops when a repository holds points (or its key is needed)."""
    guarded: list[str] = []
    for address, rec in state.resources.items():
        if rec.kind == "storage" and observed.storage_points.get(address, 0) > 0:
            guarded += [
                f"{address} ({observed.storage_points[address]} recovery points)",
                f"key.{rec.inputs.get('key')}",
            ]
    if guarded:
        raise PlanError(
            f"destroy would delete protected data or the keys it needs: {', '.join(guarded)}",
            hint="pass --delete-data to delete repositories, their recovery points and keys; to stop "
            "protecting but keep the data, remove the groups from the policy and apply instead",
        )


def _refuse_key_loss(changes: Sequence[Change], observed: Observations) -> None:
    """Deleting or replacing a key that unexpired tape cartridges need is refused, --delete-data
    or not: such a key can only go once its cartridges have expired (`tape recycle`)."""
    lost = [
        f"{c.address} ({c.action.value}): {observed.keys_in_use[c.address]}"
        for c in changes
        if c.address in observed.keys_in_use and c.action in (Action.DELETE, Action.REPLACE)
    ]
    if lost:
        raise PlanError(
            "the plan would delete or replace an encryption key that unexpired tape cartridges need: "
            + "; ".join(lost),
            hint="keep the EncryptionKey (and its passphrase) in the policy until those cartridges expire "
            "and `protectctl tape recycle` returns them to scratch; --delete-data does not override this",
        )


def diff_attributes(
    before: Mapping[str, Any], after: Mapping[str, Any], replace_on: Sequence[str], prefix: str = ""
) -> list[AttributeChange]:
    """Attribute-level differences, nested mappings flattened to dotted paths."""
    out: list[AttributeChange] = []
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        forces = prefix == "" and key in replace_on
        if isinstance(old, dict) and isinstance(new, dict) and not forces:
            out.extend(diff_attributes(old, new, (), prefix=f"{path}."))
        else:
            out.append(trusted(AttributeChange, {"path": path, "before": old, "after": new, "forces_replace": forces}))
    return out


def stops_all_protection(changes: Sequence[Change], state: State) -> str | None:
    """What the changes stop when they leave no schedule where the state has some, else None.

    Such a plan is what an emptied or truncated policy makes: it removes every timer (and
    the agent configs) and protects nothing any more. Only `destroy`, or apply's
    --allow-remove-all, may carry it out (as Terraform asks for `destroy`)."""
    schedules = {a for a, rec in state.resources.items() if rec.kind == "schedule"}
    if not schedules:
        return None
    deleted = {c.address for c in changes if c.action is Action.DELETE}
    if any(c.kind == "schedule" and c.action is not Action.DELETE for c in changes) or schedules - deleted:
        return None
    agents = sum(1 for c in changes if c.kind == "agent" and c.action is Action.DELETE)
    also = f" and {agents} agent config(s)" if agents else ""
    return f"this plan removes all {len(schedules)} schedule(s){also} and creates none: nothing would be protected"


def plan_is_applicable(plan: Plan, state: State) -> None:
    """Raise StalePlanError when the state moved since the plan was made."""
    from protectctl.errors import StalePlanError

    if plan.lineage != state.lineage:
        raise StalePlanError(
            f"the saved plan belongs to another state (lineage {plan.lineage}, state has {state.lineage})",
            hint="make a new plan against this state",
        )
    if plan.serial != state.serial:
        raise StalePlanError(
            f"the state changed since this plan was made (plan serial {plan.serial}, state serial {state.serial})",
            hint="run `protectctl plan --out FILE` again and apply the new plan",
        )


__all__ = ["Observations", "PlanError", "diff_attributes", "make_plan", "plan_is_applicable", "stops_all_protection"]
