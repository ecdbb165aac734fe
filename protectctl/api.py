"""Everything the CLI may call: one function per command, values in, results out.

Functions raise `ProtectctlError` for anything a user should read; they never print.
Heavy modules are imported inside functions so that `protectctl --version` and
`validate` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl import __version__
from protectctl.errors import PlanError, ProtectctlError, StateError

if TYPE_CHECKING:
    from protectctl.apply.walk import ResourceResult
    from protectctl.plan.diff import Observations
    from protectctl.plan.model import GroupEstimate, Plan
    from protectctl.plan.resources import HostFacts, Resource
    from protectctl.policy.load import Policy
    from protectctl.state.local import LocalStateBackend
    from protectctl.state.model import State

DEFAULT_LOCK_TIMEOUT_S = 0.0


# --- policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidateResult:
    policy_dir: Path
    documents: dict[str, int]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"format_version": "1.0", "valid": True, "policy_dir": str(self.policy_dir),
                "documents": self.documents, "warnings": list(self.warnings)}


def load(policy_dir: Path) -> Policy:
    from protectctl.policy.load import load_policy

    return load_policy(policy_dir)


def validate(policy_dir: Path) -> ValidateResult:
    policy = load(policy_dir)
    counts: dict[str, int] = {}
    for doc in policy.all():
        if not doc.ref.shipped:
            counts[doc.kind.value] = counts.get(doc.kind.value, 0) + 1
    return ValidateResult(policy.root, counts, tuple(str(w) for w in policy.warnings))


def host_facts(policy: Policy) -> dict[str, HostFacts]:
    from protectctl.plan.resources import HostFacts
    from protectctl.policy.model import Kind

    # `python -m protectctl` from the interpreter running apply: the local agent is this install
    argv = (sys.executable, "-m", "protectctl")
    return {name: HostFacts(agent_argv=argv, version=__version__) for name in policy.of(Kind.HOST)}


def resources(policy: Policy) -> list[Resource]:
    from protectctl.plan.resources import build_resources

    return build_resources(policy, host_facts(policy))


def estimates(policy: Policy) -> list[GroupEstimate]:
    from protectctl.plan.capacity import estimate
    from protectctl.plan.model import GroupEstimate
    from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec

    out = []
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        sla_doc = policy.get(Kind.SLA, spec.sla)
        assert sla_doc is not None and isinstance(sla_doc.spec, SLASpec)
        sla = sla_doc.spec
        e = estimate(size=spec.size_hint, change_rate=spec.change_rate, sync=sla.sync, full=sla.full,
                     disk_retention=sla.retention.disk)
        n = len(spec.members)
        out.append(GroupEstimate(
            group=doc.name, sla=spec.sla, sources=n, bytes_per_full=e.bytes_per_full,
            points_per_snapshot=e.points_per_snapshot, snapshots_retained=e.snapshots_retained,
            points_total=e.points_total, points_all_sources=e.points_total * n,
            disk_bytes=e.disk_bytes * n if e.disk_bytes is not None else None))
    return out


def graph_dot(policy_dir: Path) -> str:
    from protectctl.plan.graph import build_graph, check_acyclic, to_dot

    graph = build_graph(resources(load(policy_dir)))
    check_acyclic(graph)
    return to_dot(graph)


def schema_documents() -> dict[str, dict[str, Any]]:
    from protectctl.policy.schema import document_schemas

    return document_schemas()


def write_schemas(out_dir: Path) -> list[Path]:
    import json

    from protectctl.fsutil import atomic_write_text

    written = []
    for name, schema in schema_documents().items():
        path = out_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


# --- state ----------------------------------------------------------------------------


def state_backend(policy_dir: Path, policy: Policy | None = None) -> LocalStateBackend:
    from protectctl.policy.rules import settings_of
    from protectctl.state.local import LocalStateBackend

    if policy is None:
        policy = load(policy_dir)
    rel = settings_of(policy).state.path
    path = Path(rel) if Path(rel).is_absolute() else policy.root / rel
    return LocalStateBackend(path)


def read_state(policy_dir: Path) -> State:
    return state_backend(policy_dir).read()


def state_rm(policy_dir: Path, addresses: Sequence[str], lock_timeout_s: float) -> list[str]:
    backend = state_backend(policy_dir)
    with backend.lock("state rm", lock_timeout_s):
        state = backend.read()
        missing = [a for a in addresses if a not in state.resources]
        if missing:
            raise StateError(f"not in the state: {', '.join(missing)}", hint="see `protectctl state list`")
        for a in addresses:
            del state.resources[a]
        state.serial += 1
        backend.write(state)
    return list(addresses)


def state_unlock(policy_dir: Path, force: bool) -> str:
    return state_backend(policy_dir).unlock(force=force)


# --- plan and apply -------------------------------------------------------------------


def observe(state: State) -> Observations:
    """Cheap facts from the repositories in the state (how many points each holds)."""
    from protectctl.plan.diff import Observations

    points: dict[str, int] = {}
    for address, rec in state.resources.items():
        if rec.kind == "storage" and rec.inputs.get("type") == "local":
            points_dir = Path(str(rec.inputs["path"])) / "points"
            try:
                points[address] = sum(1 for p in points_dir.rglob("*") if p.is_file())
            except OSError:
                points[address] = 0
    return Observations(storage_points=points)


def make_plan(policy_dir: Path, state: State, *, policy: Policy | None = None, destroy: bool = False,
              delete_data: bool = False, now: datetime | None = None) -> Plan:
    from protectctl.plan.diff import make_plan as pure_plan

    policy = policy or load(policy_dir)
    return pure_plan(
        resources(policy), state, now=now or datetime.now(UTC), version=__version__,
        policy_dir=str(policy.root), destroy=destroy, delete_data=delete_data, observed=observe(state),
        estimates=[] if destroy else estimates(policy), warnings=[str(w) for w in policy.warnings])


def plan(policy_dir: Path, *, out: Path | None = None, destroy: bool = False, delete_data: bool = False,
         lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Plan:
    policy = load(policy_dir)
    backend = state_backend(policy_dir, policy)
    with backend.lock("plan", lock_timeout_s):
        result = make_plan(policy_dir, backend.read(), policy=policy, destroy=destroy, delete_data=delete_data)
    if out is not None:
        save_plan(result, out)
    return result


def save_plan(plan_: Plan, out: Path) -> None:
    from protectctl.fsutil import atomic_write

    try:
        atomic_write(out, plan_.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
    except OSError as err:
        raise ProtectctlError(f"writing plan {out}: {err.strerror}") from err


def read_plan(path: Path) -> Plan:
    from pydantic import ValidationError

    from protectctl.plan.model import PLAN_FORMAT, Plan

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PlanError(f"reading plan {path}: {err.strerror}") from err
    try:
        result = Plan.model_validate_json(raw)
    except ValidationError:
        raise PlanError(f"{path} is not a protectctl plan file",
                        hint="make one with `protectctl plan --out FILE`") from None
    if result.format_version.split(".")[0] != PLAN_FORMAT.split(".")[0]:
        raise PlanError(f"plan {path} has format {result.format_version}; this protectctl reads {PLAN_FORMAT}")
    return result


@dataclass(slots=True)
class ApplyReport:
    plan: Plan
    results: list[ResourceResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    applied: bool = False

    @property
    def failed(self) -> bool:
        return any(r.outcome != "ok" for r in self.results)

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": "1.0", "applied": self.applied, "failed": self.failed,
            "results": [{"address": r.address, "action": r.action.value, "outcome": r.outcome.value,
                         "host": r.host, "message": r.message, "duration_s": round(r.duration_s, 3)}
                        for r in self.results],
            "warnings": self.warnings,
        }


def apply(policy_dir: Path, *, plan_file: Path | None = None, confirm: Callable[[Plan], bool],
          parallelism: int = 10, destroy: bool = False, delete_data: bool = False,
          lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
          on_result: Callable[[ResourceResult], None] = lambda r: None) -> ApplyReport:
    """Plan (or read a saved plan), confirm, then execute it under the state lock."""
    from protectctl.apply.effects import ApplyContext
    from protectctl.apply.walk import apply_plan
    from protectctl.plan.diff import plan_is_applicable

    policy = load(policy_dir)
    backend = state_backend(policy_dir, policy)
    with backend.lock("destroy" if destroy else "apply", lock_timeout_s):
        state = backend.read()
        if plan_file is not None:
            the_plan = read_plan(plan_file)
            plan_is_applicable(the_plan, state)
        else:
            the_plan = make_plan(policy_dir, state, policy=policy, destroy=destroy, delete_data=delete_data)
        report = ApplyReport(the_plan)
        if not the_plan.changes or not confirm(the_plan):
            return report
        hosts = {r.address.name: dict(r.inputs) for r in resources(policy) if r.address.kind == "host"}
        for address, rec in state.resources.items():
            if rec.kind == "host":
                hosts.setdefault(address.split(".", 1)[1], rec.inputs)
        ctx = ApplyContext(hosts=hosts, warn=report.warnings.append)
        report.results = apply_plan(the_plan, state, backend, ctx, parallelism=parallelism, on_result=on_result)
        report.applied = True
    return report
