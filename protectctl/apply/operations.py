"""`plan`, `apply` and `destroy` as operations on a policy directory: observe what the plan
needs (repositories, the tape catalog, with `--refresh` the hosts), make the pure plan, and
apply it under the state lock. Results are data (`ApplyReport`); the CLI renders them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from protectctl import __version__
from protectctl.errors import PlanError, ProtectctlError

if TYPE_CHECKING:
    from protectctl.apply.walk import ResourceResult
    from protectctl.errors import Diagnostic
    from protectctl.plan.model import Plan
    from protectctl.policy.load import Policy
    from protectctl.state.backend import StateBackend
    from protectctl.state.model import State

DEFAULT_LOCK_TIMEOUT_S = 0.0


def state_backend(policy_dir: Path, policy: Policy | None = None) -> StateBackend:
    from protectctl.plan.compile import load
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import open_state_backend

    policy = policy or load(policy_dir)
    return open_state_backend(policy, settings_of(policy).state)


def make_plan(
    policy_dir: Path,
    state: State,
    *,
    policy: Policy | None = None,
    destroy: bool = False,
    delete_data: bool = False,
    refresh: bool = False,
    now: datetime | None = None,
) -> Plan:
    from protectctl.plan.compile import estimates, gc_paused, load, resources
    from protectctl.plan.diff import make_plan as pure_plan
    from protectctl.plan.observe import object_lock_notes, observe
    from protectctl.tape.session import tape_key_warnings, tape_observations

    policy = policy or load(policy_dir)
    tape = tape_observations(policy, state, now or datetime.now(UTC))
    observed = replace(
        observe(state, remote=destroy and not delete_data),
        keys_in_use=tape.get("keys_in_use", {}),
        libraries_in_use=tape.get("libraries_in_use", {}),
    )
    desired = resources(policy)
    refresh_warnings: list[str] = []
    if refresh:
        from concurrent.futures import ThreadPoolExecutor

        from protectctl.apply.drift import drift
        from protectctl.provision.sources import source_refresh

        # beside the drift read, not after it: an unreachable host costs one connect timeout, not two
        with ThreadPoolExecutor(max_workers=1) as pool:
            paths = pool.submit(source_refresh, [] if destroy else desired)  # a mistyped path shows now
            drifted = drift(state, refresh_warnings)
            lines, prepared = paths.result()  # a server setting changed by hand: prepare the source again
            refresh_warnings += lines
            for address, what in prepared.items():
                drifted[address] = f"{drifted[address]}; {what}" if address in drifted else what
            observed = replace(observed, drifted=drifted)
    warnings: list[str | Diagnostic] = [
        *policy.warnings,
        *tape_key_warnings(policy, observed.storage_points),
        *object_lock_notes(policy),
        *refresh_warnings,
    ]
    with gc_paused():
        return pure_plan(
            desired,
            state,
            now=now or datetime.now(UTC),
            version=__version__,
            policy_dir=str(policy.root),
            destroy=destroy,
            delete_data=delete_data,
            observed=observed,
            estimates=[] if destroy else estimates(policy),
            warnings=warnings,
        )


def plan(
    policy_dir: Path,
    *,
    out: Path | None = None,
    destroy: bool = False,
    delete_data: bool = False,
    refresh: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> Plan:
    from protectctl.plan.compile import load

    policy = load(policy_dir, allow_empty=destroy)
    backend = state_backend(policy_dir, policy)
    with backend.lock("plan", lock_timeout_s):
        result = make_plan(
            policy_dir, backend.read(), policy=policy, destroy=destroy, delete_data=delete_data, refresh=refresh
        )
    if out is not None:
        save_plan(result, out)
    return result


def save_plan(plan: Plan, out: Path) -> None:
    from protectctl.fsutil import atomic_write

    try:
        atomic_write(out, plan.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
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
        raise PlanError(
            f"{path} is not a protectctl plan file", hint="make one with `protectctl plan --out FILE`"
        ) from None
    if result.format_version.split(".")[0] != PLAN_FORMAT.split(".")[0]:
        raise PlanError(f"plan {path} has format {result.format_version}; this protectctl reads {PLAN_FORMAT}")
    return result


@dataclass(slots=True)
class ApplyReport:
    plan: Plan
    results: list[ResourceResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    applied: bool = False
    # host → (why, units): schedules written there that will not run
    inactive_schedules: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r.outcome != "ok" for r in self.results)

    def by_host(self) -> dict[str, dict[str, int]]:
        """Per host (or "-" for resources on no host): how many resources ok, failed, skipped."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            counts = out.setdefault(r.host or "-", {"ok": 0, "failed": 0, "skipped": 0})
            counts[r.outcome.value] += 1
        return dict(sorted(out.items()))


def apply(
    policy_dir: Path,
    *,
    plan_file: Path | None = None,
    confirm: Callable[[Plan], bool],
    parallelism: int = 10,
    destroy: bool = False,
    delete_data: bool = False,
    refresh: bool = False,
    allow_remove_all: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    on_result: Callable[[ResourceResult], None] = lambda r: None,
) -> ApplyReport:
    """Plan (or read a saved plan), confirm, then execute it under the state lock.

    Raises PlanError for a plan (not a destroy) that removes every schedule, unless
    `allow_remove_all`."""
    from protectctl.apply.effects import ApplyContext
    from protectctl.apply.walk import apply_plan
    from protectctl.plan.compile import load, resources
    from protectctl.plan.diff import plan_is_applicable

    # destroy needs no policy; a saved plan is what is applied (the policy only names hosts)
    policy = load(policy_dir, allow_empty=destroy or plan_file is not None)
    backend = state_backend(policy_dir, policy)
    with backend.lock("destroy" if destroy else "apply", lock_timeout_s):
        state = backend.read()
        if plan_file is not None:
            the_plan = read_plan(plan_file)
            if the_plan.serial == 0 and not backend.exists():
                # planned before any state was written (the first GitOps merge): the empty state
                # read then had a lineage of its own that was never saved; this one is its twin
                state.lineage = the_plan.lineage
            plan_is_applicable(the_plan, state)
        else:
            the_plan = make_plan(
                policy_dir, state, policy=policy, destroy=destroy, delete_data=delete_data, refresh=refresh
            )
        if not the_plan.destroy and not allow_remove_all:
            refuse_stopping_all_protection(the_plan, state)
        report = ApplyReport(the_plan)
        if not the_plan.changes or not confirm(the_plan):
            return report
        hosts = {r.address.name: dict(r.inputs) for r in resources(policy) if r.address.kind == "host"}
        for address, rec in state.resources.items():
            if rec.kind == "host":
                hosts.setdefault(address.split(".", 1)[1], rec.inputs)
        ctx = ApplyContext(hosts=hosts, warn=report.warnings.append)
        report.results = apply_plan(the_plan, state, backend, ctx, parallelism=parallelism, on_result=on_result)
        report.inactive_schedules = ctx.inactive
        report.applied = True
    return report


def refuse_stopping_all_protection(the_plan: Plan, state: State) -> None:
    from protectctl.plan.diff import stops_all_protection

    stopped = stops_all_protection(the_plan.changes, state)
    if stopped is not None:
        raise PlanError(
            f"refusing to apply: {stopped}",
            hint="if the policy was emptied by mistake, restore it; to stop protecting everything, run "
            "`protectctl destroy`, or pass --allow-remove-all to apply",
        )
