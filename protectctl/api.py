"""Everything the CLI may call: one function per command, values in, results out.

Functions raise `ProtectctlError` for anything a user should read; they never print.
Heavy modules are imported inside functions so that `protectctl --version` and
`validate` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl import __version__
from protectctl.errors import PlanError, ProtectctlError, StateError

if TYPE_CHECKING:
    from protectctl.agent.jobs import PointListing
    from protectctl.apply.walk import ResourceResult
    from protectctl.engine.points import DamagedPoint
    from protectctl.engine.repair import IndexRepair
    from protectctl.plan.diff import Observations
    from protectctl.plan.model import GroupEstimate, Plan
    from protectctl.plan.resources import HostFacts, Resource
    from protectctl.policy.load import Policy
    from protectctl.provision.sources import SourcePath
    from protectctl.state.backend import StateBackend
    from protectctl.state.model import State

DEFAULT_LOCK_TIMEOUT_S = 0.0


# --- policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidateResult:
    policy_dir: Path
    documents: dict[str, int]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": "1.0",
            "valid": True,
            "policy_dir": str(self.policy_dir),
            "documents": self.documents,
            "warnings": list(self.warnings),
        }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building big acyclic structures.

    Loading and planning allocate hundreds of thousands of small objects that form no cycles;
    with the collector on, each gen-2 pass walks all of them again: 40 % of `plan` for
    1,000 groups (tests/bench/bench_plan.py). Restored afterwards for long-running callers.
    """
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # what was built stays alive: move it out of the collector's sight, or the first
        # collection after re-enabling walks it all once more (0.7 s for 1,000 groups)
        gc.freeze()
        if was_enabled:
            gc.enable()


def load(policy_dir: Path, *, allow_empty: bool = False) -> Policy:
    from protectctl.policy.load import load_policy

    with _gc_paused():
        return load_policy(policy_dir, allow_empty=allow_empty)


def validate(policy_dir: Path) -> ValidateResult:
    policy = load(policy_dir)
    counts: dict[str, int] = {}
    for doc in policy.all():
        if not doc.ref.shipped:
            counts[doc.kind.value] = counts.get(doc.kind.value, 0) + 1
    return ValidateResult(policy.root, counts, tuple(str(w) for w in policy.warnings))


def host_facts(policy: Policy) -> dict[str, HostFacts]:
    from protectctl.plan.resources import HostFacts, installs_agent
    from protectctl.policy.model import Kind

    # the local agent is this install: its console script beside the interpreter running us, so
    # the plan is the same whether we were started as `protectctl`, `python -m` or `python3.11 -m`
    # (otherwise every schedule shows an update when CI and a shell start protectctl differently)
    script = Path(sys.executable).parent / "protectctl"
    argv = (str(script),) if script.is_file() else (sys.executable, "-m", "protectctl")
    facts = {}
    for name, doc in policy.of(Kind.HOST).items():
        facts[name] = _installed_agent_facts(doc) if installs_agent(doc) else HostFacts(argv, __version__)
    return facts


def _installed_agent_facts(doc: Any) -> HostFacts:
    """An SSH host, or the local host with root /, runs the agent apply installs:
    ROOT/opt/protectctl/bin/protectctl."""
    from protectctl.plan.resources import AGENT_VENV, HostFacts, host_path, host_root
    from protectctl.provision.agent_install import source_digest

    venv = host_path(host_root(doc), AGENT_VENV)
    return HostFacts(agent_argv=(f"{venv}/bin/protectctl",), version=__version__, digest=source_digest())


def alerts(policy_dir: Path, out: Path | None = None) -> str:
    """`protectctl alerts`: Prometheus alerting rules derived from each SLA (policy/alerts.py), as YAML;
    also written to `out` when given."""
    import io

    from ruamel.yaml import YAML

    from protectctl.fsutil import atomic_write
    from protectctl.policy.alerts import alert_rules

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    buffer = io.StringIO()
    buffer.write("# Prometheus alerting rules written by `protectctl alerts` (docs/monitoring.md)\n")
    yaml.dump(alert_rules(load(policy_dir)), buffer)
    text = buffer.getvalue()
    if out is not None:
        try:
            atomic_write(out, text.encode("utf-8"))
        except OSError as err:
            raise ProtectctlError(f"writing {out}: {err.strerror}") from err
    return text


def resources(policy: Policy) -> list[Resource]:
    from protectctl.plan.resources import build_resources

    return build_resources(policy, host_facts(policy))


def estimates(policy: Policy) -> list[GroupEstimate]:
    from protectctl.plan.capacity import estimate
    from protectctl.plan.model import GroupEstimate
    from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec
    from protectctl.policy.rules import long_term_snapshots

    out = []
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        sla_doc = policy.get(Kind.SLA, spec.sla)
        assert sla_doc is not None and isinstance(sla_doc.spec, SLASpec)
        sla = sla_doc.spec
        e = estimate(
            size=spec.size_hint,
            change_rate=spec.change_rate,
            sync=sla.sync,
            full=sla.full,
            disk_retention=sla.retention.disk,
            long_term=long_term_snapshots(sla),
        )
        n = len(spec.members)
        out.append(
            GroupEstimate(
                group=doc.name,
                sla=spec.sla,
                sources=n,
                bytes_per_full=e.bytes_per_full,
                points_per_snapshot=e.points_per_snapshot,
                snapshots_retained=e.snapshots_retained,
                points_total=e.points_total,
                points_all_sources=e.points_total * n,
                disk_bytes=e.disk_bytes * n if e.disk_bytes is not None else None,
            )
        )
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
    from protectctl.policy.schema import combined_schema

    written = []
    schemas = schema_documents()
    for name, schema in [*schemas.items(), ("protectctl", combined_schema(schemas))]:
        path = out_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def combined_schema() -> dict[str, Any]:
    """One JSON Schema for any document, chosen by `kind` (schemas/protectctl.json)."""
    from protectctl.policy.schema import combined_schema as combine

    return combine(schema_documents())


# --- state ----------------------------------------------------------------------------


def state_backend(policy_dir: Path, policy: Policy | None = None) -> StateBackend:
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import open_state_backend

    if policy is None:
        policy = load(policy_dir)
    return open_state_backend(policy, settings_of(policy).state)


def state_home(policy_dir: Path, policy: Policy | None = None) -> Path:
    """Where this machine keeps its own files beside the state (tape catalog, remote sources' views):
    the local state file's directory, whichever backend holds the state."""
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import local_state_path

    if policy is None:
        policy = load(policy_dir)
    return local_state_path(policy, settings_of(policy).state).parent


def state_migrate(policy_dir: Path, to: str, lock_timeout_s: float) -> tuple[str, str, str, int]:
    """Copy the state from the configured backend to `to` (its fields from the same Settings), with
    its lineage and serial; returns (from, to, lineage, serial)."""
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import migrate, open_state_backend

    policy = load(policy_dir)
    settings = settings_of(policy).state
    if to == settings.backend:
        raise StateError(
            f"the state is already in the {to} backend",
            hint="name another backend with --to; set its fields in Settings.spec.state first",
        )
    source = open_state_backend(policy, settings)
    target = open_state_backend(policy, settings, to)
    lineage, serial = migrate(source, target, lock_timeout_s=lock_timeout_s)
    return source.describe(), target.describe(), lineage, serial


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


def observe(state: State, *, remote: bool = False) -> Observations:
    """Facts from the repositories in the state (how many points each holds): local ones always
    (cheap), remote ones (sftp, over SSH) only when asked, for destroy's data guard; a remote
    repository that cannot be read then stops the plan rather than count as empty."""
    from protectctl.engine.storage.base import ObjectKind
    from protectctl.errors import PlanError, RepositoryError
    from protectctl.plan.diff import Observations

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
                    _close(storage)
            except (ProtectctlError, OSError) as err:
                why = err.message if isinstance(err, ProtectctlError) else (err.strerror or str(err))
                raise PlanError(
                    f"cannot tell whether {address} holds recovery points: {why}",
                    hint="make its host reachable, or pass --delete-data to destroy it with its data",
                ) from None
    return Observations(storage_points=points)


def _close(resource: object) -> None:
    """Close a host connection or storage if it holds one (SSH); local ones have nothing to close."""
    close = getattr(resource, "close", None)
    if close is not None:
        close()


def drift(state: State, warnings: list[str] | None = None) -> dict[str, str]:
    """What differs on the hosts from what apply wrote: address → description (`--refresh`).

    Hosts are read in parallel; an unreachable host is reported in `warnings` and its
    resources are left out (the plan leaves them untouched).
    """
    from concurrent.futures import ThreadPoolExecutor

    from protectctl.errors import RemoteError
    from protectctl.provision.host import connect

    hosts = {a.split(".", 1)[1]: rec.inputs for a, rec in state.resources.items() if rec.kind == "host"}
    by_host: dict[str, list[tuple[str, Any]]] = {}
    for address, rec in state.resources.items():
        if rec.host is not None and (
            rec.outputs.get("files") or rec.outputs.get("install") or rec.outputs.get("secret_files")
        ):
            by_host.setdefault(rec.host, []).append((address, rec))

    def read_host(host: str) -> tuple[dict[str, str], str | None]:
        inputs = hosts.get(host, {})
        conn = connect(host, str(inputs.get("address", "local")), inputs, hosts)
        found: dict[str, str] = {}
        try:
            for address, rec in by_host[host]:
                problems = _drift_of(conn, rec)
                if problems:
                    found[address] = "; ".join(problems)
        except RemoteError as err:
            return {}, f"host {host} could not be refreshed, its resources are left as they are: {err.message}"
        finally:
            _close(conn)
        return found, None

    drifted: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(by_host)))) as pool:
        for found, warning in pool.map(read_host, sorted(by_host)):
            drifted.update(found)
            if warning and warnings is not None:
                warnings.append(warning)
    return drifted


def _drift_of(conn: Any, rec: Any) -> list[str]:
    from protectctl.apply.effects import digest

    problems = []
    installed = rec.outputs.get("install")
    venv = (rec.inputs.get("install") or {}).get("venv")
    if installed and venv:
        from protectctl.provision.agent_install import read_marker

        marker = read_marker(conn, str(venv))
        if marker is None:
            problems.append(f"the agent in {venv} is missing")
        elif marker != installed:
            problems.append(
                f"the agent in {venv} is {marker.get('version')} (digest {marker.get('digest')}), "
                f"apply installed {installed.get('version')} (digest {installed.get('digest')})"
            )
    for path, want in sorted(rec.outputs.get("files", {}).items()):
        data = conn.read_file(path)
        if data is None:
            problems.append(f"{path} is missing")
        elif digest(data) != want:
            problems.append(f"{path} was changed on the host")
    if rec.outputs.get("secret_files"):
        from protectctl.apply.effects import secret_drift

        problems += secret_drift(conn, rec)
    return problems


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
    from dataclasses import replace

    from protectctl.plan.diff import make_plan as pure_plan

    policy = policy or load(policy_dir)
    observed = replace(
        observe(state, remote=destroy and not delete_data),
        **tape_observations(policy_dir, policy, state, now or datetime.now(UTC)),
    )
    desired = resources(policy)
    refresh_warnings: list[str] = []
    if refresh:
        from concurrent.futures import ThreadPoolExecutor

        from protectctl.provision.sources import source_warnings

        # beside the drift read, not after it: an unreachable host costs one connect timeout, not two
        with ThreadPoolExecutor(max_workers=1) as pool:
            paths = pool.submit(source_warnings, [] if destroy else desired)  # a mistyped path shows now
            observed = replace(observed, drifted=drift(state, refresh_warnings))
            refresh_warnings += paths.result()
    with _gc_paused():
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
            warnings=[str(w) for w in policy.warnings]
            + tape_key_warnings(policy_dir, policy, observed.storage_points)
            + object_lock_notes(policy)
            + refresh_warnings,
        )


def object_lock_notes(policy: Policy) -> list[str]:
    """What each object-locked Storage will lock, for the plan: its mode and the longest lock it sets."""
    from protectctl.plan.resources import lock_retention_s
    from protectctl.policy.model import Kind, StorageSpec
    from protectctl.units import Duration

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


def plan(
    policy_dir: Path,
    *,
    out: Path | None = None,
    destroy: bool = False,
    delete_data: bool = False,
    refresh: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> Plan:
    policy = load(policy_dir, allow_empty=destroy)
    backend = state_backend(policy_dir, policy)
    with backend.lock("plan", lock_timeout_s):
        result = make_plan(
            policy_dir, backend.read(), policy=policy, destroy=destroy, delete_data=delete_data, refresh=refresh
        )
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

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": "1.0",
            "applied": self.applied,
            "failed": self.failed,
            "hosts": self.by_host(),
            "results": [
                {
                    "address": r.address,
                    "action": r.action.value,
                    "outcome": r.outcome.value,
                    "host": r.host,
                    "message": r.message,
                    "duration_s": round(r.duration_s, 3),
                }
                for r in self.results
            ],
            "warnings": self.warnings,
            "inactive_schedules": [
                {"host": host, "reason": why, "units": sorted(units)}
                for host, (why, units) in sorted(self.inactive_schedules.items())
            ],
        }


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
            _refuse_stopping_all_protection(the_plan, state)
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


def _refuse_stopping_all_protection(the_plan: Plan, state: State) -> None:
    from protectctl.plan.diff import stops_all_protection

    stopped = stops_all_protection(the_plan.changes, state)
    if stopped is not None:
        raise PlanError(
            f"refusing to apply: {stopped}",
            hint="if the policy was emptied by mistake, restore it; to stop protecting everything, run "
            "`protectctl destroy`, or pass --allow-remove-all to apply",
        )


# --- the data path: run, points, restore, prune, check, status -------------------------


@dataclass(frozen=True, slots=True)
class SourceTarget:
    """A source's inputs (as apply recorded them) and where its agent keeps state."""

    inputs: dict[str, Any]
    state_dir: Path
    host: str
    remote: bool = False  # an SSH host's source, seen from the control machine (its data is not here)
    metrics_path: Path | None = None  # the agent's Prometheus textfile (None: under state_dir)
    agent: bool = False  # read from an agent config: the job may cache its derived key (engine/keycache.py)


def sources(
    policy_dir: Path,
    *,
    agent_config: Path | None,
    group: str | None = None,
    member: str | None = None,
    include_remote: bool = False,
) -> list[SourceTarget]:
    """The sources a job acts on: from the agent config on a host, or from the policy.

    `include_remote` (restore, points): also sources of SSH hosts, read from the control
    machine with its own rights on the repository (sftp storage)."""
    found = (
        _sources_from_agent(agent_config)
        if agent_config
        else _sources_from_policy(policy_dir, include_remote=include_remote)
    )
    chosen = [
        s
        for s in found
        if (group is None or s.inputs["group"] == group) and (member is None or s.inputs["member"] == member)
    ]
    if not chosen:
        what = f"{group}/{member}" if member else (group or "any source")
        known = ", ".join(sorted({str(s.inputs["source"]) for s in found})) or "none"
        raise ProtectctlError(f"no source matches {what}", hint=f"sources here: {known}")
    return chosen


def _sources_from_policy(policy_dir: Path, *, include_remote: bool = False) -> list[SourceTarget]:
    policy = load(policy_dir)
    all_resources = resources(policy)
    agents = {r.address.name: r.inputs for r in all_resources if r.address.kind == "agent"}
    hosts = {r.address.name: r.inputs for r in all_resources if r.address.kind == "host"}
    out = []
    for r in all_resources:
        if r.address.kind != "source":
            continue
        host = str(r.inputs["host"])
        if hosts[host]["address"] != "local":
            if include_remote:
                from protectctl.plan.resources import _storage_inputs

                # the control machine's view of the storage: its own credentials, knownHosts and
                # passphrase, not the agent's (append-only key, copies under the host root)
                inputs: dict[str, Any] = dict(r.inputs)
                name = str(inputs["storage"]["name"])
                inputs["storage"] = {"name": name, **_storage_inputs(policy, name)}
                out.append(SourceTarget(inputs, policy.root / ".protectctl" / "remote" / host, host, remote=True))
            continue  # jobs run on the host that holds the data
        out.append(
            SourceTarget(
                dict(r.inputs), Path(str(agents[host]["state_dir"])), host, metrics_path=_metrics_path(agents[host])
            )
        )
    return out


def _metrics_path(agent: Mapping[str, Any]) -> Path | None:
    path = agent.get("metrics_path")
    return Path(str(path)) if path else None


def _sources_from_agent(agent_config: Path) -> list[SourceTarget]:
    from protectctl.provision.config import read_yaml_mapping

    agent = read_yaml_mapping(agent_config, "agent config")
    out = []
    for path in sorted(Path(str(agent["sources_dir"])).glob("*.yaml")):
        inputs = read_yaml_mapping(path, "source config")
        out.append(
            SourceTarget(
                inputs, Path(str(agent["state_dir"])), str(agent["host"]), metrics_path=_metrics_path(agent), agent=True
            )
        )
    return out


def prepare_on_agent(source_config: Path, *, agent_config: Path | None) -> Any:
    """`agent prepare`: run the provider's host preparation for one source config of this agent."""
    from protectctl.provider import HostPreparer, PrepareOutcome, PrepareRequest, load_provider
    from protectctl.provision.config import read_yaml_mapping

    if agent_config is None:
        raise ProtectctlError("agent prepare runs on a provisioned host", hint="pass --agent-config")
    agent = read_yaml_mapping(agent_config, "agent config")
    inputs = read_yaml_mapping(source_config, "source config")
    provider = load_provider(str(inputs["provider"]))
    if not isinstance(provider, HostPreparer):
        return PrepareOutcome()
    return provider.prepare_host(
        PrepareRequest(str(inputs["source"]), dict(inputs["spec"]), Path(str(agent["state_dir"])))
    )


def source_job(target: SourceTarget) -> Any:
    """A SourceJob for the agent's job runner."""
    from protectctl.agent.jobs import SourceJob
    from protectctl.agent.retention import RetentionSpec
    from protectctl.agent.status import MetricsTarget

    i = target.inputs
    scripts = i.get("scripts") or {}
    throttle = i.get("throttle") or {}
    window = None
    if throttle.get("during"):
        from protectctl.units import TimeWindow

        window = TimeWindow.parse(str(throttle["during"])).contains
    return SourceJob(
        source=str(i["source"]),
        provider=str(i["provider"]),
        spec=dict(i["spec"]),
        storage=open_storage(i["storage"]),
        passphrase=passphrase_reader(i["storage"]),
        state_dir=target.state_dir,
        host=target.host,
        retention=RetentionSpec(**i["retention"]),
        pre_script=scripts.get("pre"),
        post_script=scripts.get("post"),
        script_timeout_s=int(scripts.get("timeout_s", 600)),
        throttle_bps=throttle.get("rate_bps"),
        throttle_window=window,
        sync_interval_s=int(i["sync_interval_s"]),
        full_interval_s=int(i["full_interval_s"]),
        parallelism=int(i["parallelism"]) if i.get("parallelism") else None,
        metrics=MetricsTarget(target.metrics_path, target.host, __version__) if target.metrics_path else None,
        remote=target.remote,
        key_cache=_agent_key_cache(i["storage"], target.state_dir) if target.agent else None,
    )


def _agent_key_cache(storage: dict[str, Any], state_dir: Path) -> Any:
    """The agent's cache of the keys derived from its root-only passphrase copy, in its state
    directory (engine/keycache.py); None when the passphrase is not a file (e.g. `env:`)."""
    ref = storage.get("passphrase")
    if not isinstance(ref, dict) or not ref.get("file"):
        return None
    from protectctl.engine.keycache import DerivedKeyCache, cache_path_for

    return DerivedKeyCache(cache_path_for(state_dir, str(ref["file"])))


def open_storage(storage: dict[str, Any]) -> Any:
    from protectctl.engine.storage.factory import open_storage as open_any

    return open_any(storage)


def passphrase_reader(storage: dict[str, Any]) -> Callable[[], bytes]:
    from protectctl.secret import SecretRef  # not apply.effects: a timer-started job needs no apply code

    given = storage["passphrase"]
    ref = SecretRef(env=given.get("env"), file=Path(given["file"]) if given.get("file") else None)
    return lambda: ref.resolve().value


def run_backup(
    policy_dir: Path, kind: str, group: str, member: str | None, *, agent_config: Path | None, progress: Any
) -> list[Any]:
    """Run sync or full for the chosen sources; one result per source, a failure included, so
    that one member's failure (a busy lock, a failed pre script) does not stop the others."""
    from protectctl.agent.jobs import run_backup as run

    results: list[Any] = []
    for target in sources(policy_dir, agent_config=agent_config, group=group, member=member):
        try:
            placed = _placed(target, kind)
            if isinstance(placed, BackupSkipped):
                results.append(placed)
                continue
            results.append(run(source_job(placed), kind, progress=progress))  # type: ignore[arg-type]
        except ProtectctlError as err:
            results.append(BackupFailure(str(target.inputs["source"]), kind, err.message, err.hint))
    return results


def _placed(target: SourceTarget, kind: str) -> SourceTarget | BackupSkipped:
    """The target on the node that must run `kind` (a primary/standby pair), or why not here."""
    from protectctl.provider import JobPlacer, load_provider

    provider = load_provider(str(target.inputs["provider"]))
    if not isinstance(provider, JobPlacer):
        return target
    placement = provider.place_job(
        str(target.inputs["source"]),
        target.inputs["spec"],
        kind,  # type: ignore[arg-type]
        target.state_dir,
    )
    if placement.spec is None:
        return BackupSkipped(str(target.inputs["source"]), kind, placement.reason)
    return SourceTarget(
        {**target.inputs, "spec": dict(placement.spec)},
        placement.state_dir or target.state_dir,
        placement.host or target.host,
        metrics_path=target.metrics_path,
        agent=target.agent,
    )


def stream_logs(
    policy_dir: Path, group: str, member: str, *, agent_config: Path | None, log: Callable[[str], None]
) -> None:
    """Run a source's log receiver until SIGTERM (the agent's `wal-stream` service), for a
    provider that streams logs (LogStreamer)."""
    from protectctl.provider import LogStreamer, load_provider

    (target,) = sources(policy_dir, agent_config=agent_config, group=group, member=member)
    kind = str(target.inputs["provider"])
    provider = load_provider(kind)
    if not isinstance(provider, LogStreamer):
        raise ProtectctlError(f"{group}/{member} does not stream logs", hint=f"{kind} sources have no log streaming")
    provider.stream_logs(str(target.inputs["source"]), target.inputs["spec"], target.state_dir, log)


@dataclass(frozen=True, slots=True)
class BackupSkipped:
    """A backup job this host does not run now (a standby of a pair backed up on its primary)."""

    source: str
    requested_kind: str
    reason: str
    ok: bool = True
    skipped: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "requested_kind": self.requested_kind,
            "ok": True,
            "skipped": True,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class BackupFailure:
    """A backup job that produced no recovery point."""

    source: str
    requested_kind: str
    message: str
    hint: str | None = None
    ok: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "requested_kind": self.requested_kind,
            "ok": False,
            "error": self.message,
            "hint": self.hint,
        }


def storages_of(targets: Sequence[SourceTarget]) -> dict[str, dict[str, Any]]:
    return {str(t.inputs["storage"]["path"]): t.inputs["storage"] for t in targets}


def list_points(
    policy_dir: Path, selector: str | None, *, agent_config: Path | None, include_removed: bool = False
) -> PointListing:
    """Readable points of the selected sources, oldest first; damaged manifests as problems.

    Points of a source no longer in the policy (its group or member removed) are listed when
    `include_removed` (`points list --all`) or when the selector names it; `removed` names them."""
    from protectctl.agent.jobs import PointListing

    found, problems, removed = _scan_points(
        policy_dir, selector, agent_config=agent_config, include_removed=include_removed
    )
    return PointListing(sorted((p for p, _ in found), key=lambda p: p.time), problems, tuple(sorted(removed)))


def _scan_points(
    policy_dir: Path, selector: str | None, *, agent_config: Path | None, include_removed: bool
) -> tuple[list[tuple[Any, dict[str, Any]]], tuple[str, ...], set[str]]:
    """(point, its storage) of the selected sources, the problems met, the removed sources seen."""
    from protectctl.agent.jobs import scan_points as points_of
    from protectctl.plan.address import SourceRef

    try:
        ref = SourceRef.parse(selector) if selector else None
    except ValueError as err:
        raise ProtectctlError(str(err)) from err
    every = _sources_from_agent(agent_config) if agent_config else _sources_from_policy(policy_dir, include_remote=True)
    current = {str(t.inputs["source"]) for t in every}
    targets = [t for t in every if _selected(str(t.inputs["source"]), ref)]
    chosen = {str(t.inputs["source"]) for t in targets}
    needed = storages_of(targets)
    storages = dict(needed)
    if agent_config is None and (include_removed or (ref is not None and not targets)):
        storages = {**_policy_storages(policy_dir), **needed}
    out: list[tuple[Any, dict[str, Any]]] = []
    removed: set[str] = set()
    problems: list[str] = []
    for key, storage in storages.items():
        try:
            listing = points_of(open_storage(storage), passphrase_reader(storage)(), None)
        except ProtectctlError:
            if key in needed:
                raise
            continue  # a storage no selected source uses, not created yet or unreachable
        for p in listing.points:
            if p.source not in current and _selected(p.source, ref):
                removed.add(p.source)
                out.append((p, storage))
            elif p.source in chosen:
                out.append((p, storage))
        problems += listing.problems
    if ref is not None and not targets and not removed:
        sources(policy_dir, agent_config=agent_config, group=ref.group, member=ref.member)  # raises: none matches
    return out, tuple(problems), removed


def _selected(source: str, ref: Any) -> bool:
    """`source` (GROUP/MEMBER) is what `ref` (a SourceRef or None: all) selects."""
    return ref is None or source == str(ref) or (ref.member is None and source.startswith(f"{ref.group}/"))


def _policy_storages(policy_dir: Path) -> dict[str, dict[str, Any]]:
    """Every Storage of the policy, as the control machine reaches it (path -> inputs)."""
    from protectctl.plan.resources import _storage_inputs
    from protectctl.policy.model import Kind

    policy = load(policy_dir)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(policy.documents.get(Kind.STORAGE, {})):
        storage: dict[str, Any] = {"name": name, **_storage_inputs(policy, name)}
        out[str(storage["path"])] = storage
    return out


def restore(
    policy_dir: Path,
    source: str,
    to_time: str,
    *,
    agent_config: Path | None,
    target: str | None,
    subpaths: Sequence[str],
    dry_run: bool,
    overwrite: bool,
    progress: Any,
    from_tape: bool = False,
    options: dict[str, object] | None = None,
    delete: bool = False,
    resume: bool = False,
) -> Any:
    """Restore a source to a time. `options` are the restore options its provider takes
    (RestoreOptions); any other is refused before anything runs. `delete`: remove what the target
    holds beyond the point (with `overwrite`); `resume`: continue an unfinished restore there."""
    from protectctl.agent.jobs import restore as run_restore
    from protectctl.catalog.timespec import parse_time
    from protectctl.errors import RestoreError
    from protectctl.plan.address import SourceRef
    from protectctl.provider import check_restore_options

    try:
        ref = SourceRef.parse(source)
    except ValueError as err:
        raise RestoreError(str(err)) from err
    if ref.member is None:
        raise RestoreError(f"restore needs one source, GROUP/MEMBER, not {source!r}")
    try:
        (job_target,) = sources(
            policy_dir, agent_config=agent_config, group=ref.group, member=ref.member, include_remote=True
        )
    except ProtectctlError:
        if agent_config is not None:
            raise
        job_target = _removed_target(policy_dir, source, target)
    check_restore_options(str(job_target.inputs["provider"]), source, options or {})
    when = parse_time(to_time, now=datetime.now(UTC))
    path = None
    on_host: str | None = job_target.host if job_target.remote and not target else None
    if target:
        host, colon, rest = target.partition(":")
        if colon and "/" not in host:
            if host != "local" and (host != job_target.host or job_target.remote):
                on_host = host  # another machine: its agent restores there
            target = rest
        if on_host is None:
            path = Path(target).absolute()
        elif not target.startswith("/"):
            raise RestoreError(f"--target {host}:{target}: a path on another host must be absolute")
        else:
            path = Path(target)
    if (delete or resume) and (on_host is not None or from_tape):
        raise RestoreError(
            "--delete and --resume work for restores from disk onto this machine",
            hint="restore here with --target PATH, then copy",
        )
    if on_host is not None:
        if from_tape:
            raise RestoreError(
                "restores from tape write on this machine (the library is here)",
                hint="restore to a path here (--target PATH), then copy",
            )
        return _restore_on_host(
            policy_dir,
            job_target,
            on_host,
            when,
            target=path,
            subpaths=subpaths,
            dry_run=dry_run,
            overwrite=overwrite,
            options=options or {},
        )
    if job_target.remote:  # what is still on that host (e.g. logs not yet shipped) cannot be read from here
        options = {**(options or {}), "source_host_reachable": False}
    job = source_job(job_target)
    if agent_config is not None and from_tape:
        raise RestoreError(
            "restores from tape run on the control machine, which holds the tape catalog",
            hint="run `protectctl -C POLICY_DIR restore ... --from tape` there",
        )
    # an agent (--agent-config) restores from its repository; tapes are the control machine's
    copy = None if agent_config is not None else _tape_copy_for_restore(policy_dir, job, when, from_tape=from_tape)
    if copy is not None and (delete or resume):
        raise RestoreError(
            "--delete and --resume work for restores from disk",
            hint="the point is read from tape here: restore to an empty --target",
        )
    if copy is not None:
        with tape_session(policy_dir, f"restore {source} from tape") as service:
            return service.restore(
                job, copy, target=path, subpaths=subpaths, dry_run=dry_run, overwrite=overwrite, progress=progress
            )
    return run_restore(
        job,
        when,
        target=path,
        subpaths=subpaths,
        dry_run=dry_run,
        overwrite=overwrite,
        progress=progress,
        options=options,
        delete=delete,
        resume=resume,
    )


def _removed_target(policy_dir: Path, source: str, target: str | None) -> SourceTarget:
    """A source whose group (or member) was removed from the policy, restorable while its points
    exist: to a --target only, since the policy no longer says where it belongs."""
    from protectctl.browse.service import source_root
    from protectctl.errors import RestoreError

    (found,) = browse_sources(policy_dir, source, agent_config=None)  # raises: no source matches
    if not target:
        with found.open_repository() as repo:
            points = repo.scan_points(found.source).points
        root = source_root(found.provider, {}, points[-1]) if points else None
        raise RestoreError(
            f"{source} is no longer in the policy: restore it with --target PATH",
            hint=f"it was protected at {root}" if root else "`points list --all` shows its points",
        )
    group, _, member = found.source.partition("/")
    inputs: dict[str, Any] = {
        "source": found.source,
        "group": group,
        "member": member,
        "provider": found.provider,
        "spec": {},
        "storage": dict(found.storage),
        "retention": {"keep_within_s": 0},
        "sync_interval_s": 900,
        "full_interval_s": 86400,
    }
    return SourceTarget(inputs, load(policy_dir).root / ".protectctl" / "removed", "local")


def _restore_on_host(
    policy_dir: Path,
    job_target: SourceTarget,
    host: str,
    when: Any,
    *,
    target: Path | None,
    subpaths: Sequence[str],
    dry_run: bool,
    overwrite: bool,
    options: Mapping[str, object],
) -> Any:
    """A restore onto an SSH host, run there by its agent (`agent restore`) with that host's own
    access to the storage: its append-only key (reads are allowed) and its passphrase copy. The
    control machine sends the source's inputs and the instant, already resolved to UTC."""
    import json

    from protectctl.agent.jobs import RestoreResult
    from protectctl.errors import RestoreError
    from protectctl.plan.address import Address
    from protectctl.plan.resources import _storage_inputs, agent_command, agent_storage
    from protectctl.provision.host import connect

    policy = load(policy_dir)
    by_address = {r.address: r for r in resources(policy)}
    host_res = by_address.get(Address("host", host))
    if host_res is None:
        raise RestoreError(f"no Host named {host!r} in the policy")
    host_inputs = dict(host_res.inputs)
    if str(host_inputs.get("address")) == "local":
        raise RestoreError(f"host {host} is this machine: give --target PATH")
    name = str(job_target.inputs["storage"]["name"])
    storage: dict[str, Any] = {"name": name, **_storage_inputs(policy, name)}
    access = by_address.get(Address("access", f"{name}/{host}"))
    secret = by_address.get(Address("secret", f"{storage['key']}/{host}"))
    creds = [by_address.get(Address("secret", f"{name}-s3-{f}/{host}")) for f in ("access-key-id", "secret-access-key")]
    s3_ready = (
        storage["type"] == "s3"
        and secret is not None
        and (all(creds) or not (storage.get("agent_credentials") or storage.get("credentials")))
    )
    if not s3_ready and (storage["type"] != "sftp" or access is None or secret is None):
        why = (
            f"storage {name} is a path on this machine"
            if storage["type"] == "local"
            else f"host {host} has no key to storage {name} (no member of it is protected there)"
        )
        raise RestoreError(
            f"host {host} cannot read {job_target.inputs['source']}'s recovery points: {why}",
            hint="restore here with --target PATH and copy the result over",
        )
    request = {
        "inputs": {
            **job_target.inputs,
            "storage": agent_storage(storage, access, secret, [c for c in creds if c] or None),
        },
        "to_time": when if isinstance(when, str) else when.astimezone(UTC).isoformat(),
        "target": str(target) if target is not None else None,
        "subpaths": list(subpaths),
        "dry_run": dry_run,
        "overwrite": overwrite,
        "options": {**options, "source_host_reachable": host == job_target.host},
    }
    argv = agent_command(str(host_inputs.get("root") or "/"), "agent", "restore")
    hosts = {a.name: dict(r.inputs) for a, r in by_address.items() if a.kind == "host"}
    conn = connect(host, str(host_inputs["address"]), host_inputs, hosts)
    try:
        status, out, err = conn.exec_bytes(
            argv,
            stdin=json.dumps(request).encode(),
            timeout_s=7 * 86400,
        )
    finally:
        _close(conn)
    if status != 0:
        said = [line.removeprefix("Error: ") for line in err.decode(errors="replace").strip().splitlines()]
        raise RestoreError(f"host {host}: {' '.join(said[:3]) or f'the agent restore exited {status}'}")
    return RestoreResult.from_json(json.loads(out))


def restore_on_agent(request: Mapping[str, Any], *, agent_config: Path | None) -> Any:
    """`agent restore`: a restore the control machine sent to this host (see _restore_on_host)."""
    from protectctl.agent.jobs import restore as run_restore
    from protectctl.provision.config import read_yaml_mapping

    if agent_config is None:
        raise ProtectctlError("agent restore runs on a provisioned host", hint="pass --agent-config")
    agent = read_yaml_mapping(agent_config, "agent config")
    target = SourceTarget(dict(request["inputs"]), Path(str(agent["state_dir"])), str(agent["host"]))
    when = request["to_time"]
    return run_restore(
        source_job(target),
        when if when == "latest" else datetime.fromisoformat(when),
        target=Path(request["target"]) if request.get("target") else None,
        subpaths=list(request.get("subpaths") or []),
        dry_run=bool(request.get("dry_run")),
        overwrite=bool(request.get("overwrite")),
        options=dict(request.get("options") or {}),
    )


def recovery_windows(points: Sequence[Any]) -> dict[str, list[str]]:
    """For sources whose provider rolls logs forward (RecoveryWindows): source → lines describing
    the recoverable time spans, gaps and dropped logs (what `points list` shows under the table)."""
    from protectctl.provider import RecoveryWindows

    by_source: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for p in points:
        kind = p.tags.get("provider")
        if kind:
            by_source.setdefault(p.source, []).append(p)
            kinds[p.source] = str(kind)
    out = {}
    for source, pts in sorted(by_source.items()):
        provider = _provider_or_none(kinds[source])
        if isinstance(provider, RecoveryWindows):
            out[source] = provider.recovery_windows(pts)
    return out


def _provider_or_none(kind: str) -> Any:
    """The provider of `kind`, or None when it is not installed here (points of a removed plug-in)."""
    from protectctl.provider import load_provider

    try:
        return load_provider(kind)
    except ProtectctlError:
        return None


def prune(
    policy_dir: Path,
    group: str | None,
    *,
    agent_config: Path | None,
    dry_run: bool,
    member: str | None = None,
    progress: Any = None,
) -> list[Any]:
    from protectctl.agent.jobs import prune as run_prune

    # from the control machine, remote sources too: prune needs the full rights an agent's
    # append-only key lacks (sftp storage)
    targets = sources(
        policy_dir, agent_config=agent_config, group=group, member=member, include_remote=agent_config is None
    )
    by_storage: dict[str, list[SourceTarget]] = {}
    for t in targets:
        by_storage.setdefault(str(t.inputs["storage"]["path"]), []).append(t)
    return [
        run_prune([source_job(t) for t in group_targets], now=datetime.now(UTC), dry_run=dry_run, progress=progress)
        for group_targets in by_storage.values()
    ]


@dataclass(frozen=True, slots=True)
class CheckResult:
    storage: str
    report: Any  # protectctl.engine.check.CheckReport

    @property
    def ok(self) -> bool:
        return bool(self.report.ok)

    def to_json(self) -> dict[str, object]:
        r = self.report
        return {
            "storage": self.storage,
            "ok": self.ok,
            "read_data": r.read_data,
            "errors": list(r.errors),
            "warnings": list(r.warnings),
            "damaged_packs": {k: list(v) for k, v in r.damaged_packs.items()},
            "damaged_points": list(r.damaged_points),
            "affected_points": list(r.affected_points),
            "affected": [
                {"id": a.id, "source": a.source, "time": a.time.isoformat() if a.time else None} for a in r.affected
            ],
            "points_checked": r.points_checked,
            "packs_checked": r.packs_checked,
            "blobs_checked": r.blobs_checked,
        }

    def summary(self) -> str:
        r = self.report
        lines = [
            f"{self.storage}: {r.points_checked} points, {r.packs_checked} packs, {r.blobs_checked} blobs "
            f"checked{' (every byte read)' if r.read_data else ''}"
        ]
        lines += [f"  warning: {w}" for w in r.warnings]
        lines += [f"  ERROR: {e}" for e in r.errors]
        if r.damaged_points:
            lines.append(f"  damaged point manifests: {', '.join(r.damaged_points)}")
        if r.affected:
            lines.append("  affected recovery points:")
            lines += [f"    {a.describe()}" for a in r.affected]
        lines.append("  no problems found" if self.ok else f"  {len(r.errors)} problem(s) found")
        return "\n".join(lines)


def check_storage(storage: dict[str, Any], *, read_data: bool, progress: Any) -> CheckResult:
    from protectctl.engine.repository import Repository

    backend = open_storage(storage)
    with Repository.open(backend, passphrase_reader(storage)()) as repo, repo.lock(exclusive=False, command="check"):
        report = repo.check(read_data=read_data, progress=progress)
    return CheckResult(backend.describe(), report)


def check(policy_dir: Path, storage_name: str, *, read_data: bool, progress: Any) -> CheckResult:
    (storage,) = _named_storages(policy_dir, storage_name)
    return check_storage(storage, read_data=read_data, progress=progress)


def _named_storages(policy_dir: Path, storage_name: str | None) -> list[dict[str, Any]]:
    """The inputs of the Storage named `storage_name`, or of every Storage in the policy."""
    from protectctl.policy.model import Kind

    policy = load(policy_dir)
    found = [
        dict(r.inputs)
        for r in resources(policy)
        if r.address.kind == "storage" and (storage_name is None or r.address.name == storage_name)
    ]
    if not found:
        known = ", ".join(sorted(policy.of(Kind.STORAGE))) or "none"
        what = f"no Storage named {storage_name!r}" if storage_name else "the policy has no Storage"
        raise ProtectctlError(what, hint=f"storages: {known}")
    return found


def repair_index(policy_dir: Path, storage_name: str | None, *, progress: Any) -> list[tuple[str, IndexRepair]]:
    """`repair index`: rebuild each storage's index from its packs' headers (see engine/repair.py)."""
    from protectctl.engine.repository import Repository

    out = []
    for storage in _named_storages(policy_dir, storage_name):
        backend = open_storage(storage)
        with Repository.open(backend, passphrase_reader(storage)()) as repo:
            out.append((backend.describe(), repo.repair_index(progress=progress)))
    return out


def repair_points(policy_dir: Path, storage_name: str | None, *, forget: bool) -> list[tuple[str, list[DamagedPoint]]]:
    """`repair points`: the manifests that do not open, per storage; forgotten with `forget`."""
    from protectctl.engine.repository import Repository

    out = []
    for storage in _named_storages(policy_dir, storage_name):
        backend = open_storage(storage)
        with Repository.open(backend, passphrase_reader(storage)()) as repo:
            out.append((backend.describe(), repo.forget_damaged_points(dry_run=not forget)))
    return out


def status(policy_dir: Path, group: str | None, *, agent_config: Path | None) -> list[Any]:
    from protectctl.agent.jobs import status as job_status

    targets = sources(policy_dir, agent_config=agent_config, group=group)
    rows = job_status([source_job(t) for t in targets], now=datetime.now(UTC))
    return _with_log_problems(targets, rows)


def _with_log_problems(targets: Sequence[SourceTarget], rows: list[Any]) -> list[Any]:
    """Sources whose provider reports more than point ages (StatusReporter, e.g. gaps in the logs
    that make part of the retained time unrecoverable): out of SLA, said plainly."""
    from dataclasses import replace

    from protectctl.provider import StatusReporter, load_provider

    reporters = {
        str(t.inputs["source"]): (t, provider)
        for t in targets
        if isinstance(provider := load_provider(str(t.inputs["provider"])), StatusReporter)
    }
    if not reporters:
        return rows
    loaded: list[Any] = []

    def load_points() -> list[Any]:
        # Read only when a reporter looks at them (the filesystem's leftover check never does).
        for storage in storages_of([t for t, _ in reporters.values()]).values():
            try:
                loaded.extend(list_points_of_storage(storage))
            except ProtectctlError:
                continue  # the status row already says the repository cannot be read
        return loaded

    points = _Lazy(load_points)
    out = []
    for row in rows:
        found = reporters.get(row.source)
        if found is not None:
            target, reporter = found
            extra = reporter.status_problems(row.source, target.inputs["spec"], points, target.state_dir)
            if extra:
                row = replace(row, problems=(*row.problems, *extra), sla_met=False)
        out.append(row)
    return out


class _Lazy(Sequence[Any]):
    """A list computed on first use."""

    def __init__(self, load: Callable[[], list[Any]]) -> None:
        self._load = load
        self._items: list[Any] | None = None

    def _all(self) -> list[Any]:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())


def list_points_of_storage(storage: dict[str, Any]) -> list[Any]:
    from protectctl.agent.jobs import list_points as points_of

    return points_of(open_storage(storage), passphrase_reader(storage)(), None)


# --- tape and keys (protectctl.tape) ---------------------------------------------------------


def tape_service(policy_dir: Path, policy: Policy | None = None) -> Any:
    """A protectctl.tape.service.TapeService for the policy: catalog and keys beside the state file."""
    from protectctl.tape.service import TapeService, context_from_policy

    policy = policy or load(policy_dir)
    home = state_home(policy_dir, policy)
    return TapeService(context_from_policy(policy, home), now=datetime.now(UTC))


TAPE_LOCK_TIMEOUT_S = 10.0  # interactive tape commands
TAPE_JOB_LOCK_TIMEOUT_S = 4 * 3600.0  # `run tape`: the tape timers of a group's members fire together


@contextmanager
def tape_session(
    policy_dir: Path, command: str, policy: Policy | None = None, *, timeout_s: float = TAPE_LOCK_TIMEOUT_S
) -> Iterator[Any]:
    """A TapeService that may move cartridges and change the catalog: one at a time per policy.

    Two runs must not load cartridges into the same drives or write the catalog over each other
    (each reads it at the start and writes it back); the lock (flock, released the moment its
    holder dies) is held from the catalog read to the last write. Readers (`tape list`, `keys
    list`, plan) need no lock: the catalog is replaced atomically."""
    from protectctl.agent.lock import source_lock

    policy = policy or load(policy_dir)
    home = state_home(policy_dir, policy)
    with source_lock(home / "tape", "library", command, timeout_s=timeout_s, what="the tape libraries of this policy"):
        service = tape_service(policy_dir, policy)
        service.release_drives()  # cartridges a killed run left loaded: nobody else holds the lock
        yield service


def tape_observations(policy_dir: Path, policy: Policy, state: State, now: datetime) -> dict[str, Any]:
    """Observations fields from the tape catalog: keys and libraries unexpired cartridges need.

    Read even when the policy no longer has a TapeLibrary (that is when it matters most)."""
    from protectctl.tape.catalog import load_catalog
    from protectctl.tape.guard import keys_in_use, libraries_in_use

    home = state_home(policy_dir, policy)
    catalog = load_catalog(home / "tape" / "catalog.json")  # TapeError when damaged: plan stops
    if not catalog.cartridges:
        return {}
    from protectctl.tape.keys import KeyStore  # imports cryptography: only when cartridges exist

    key_names = {k.id: k.name for k in KeyStore(home / "keys", {}).infos()}
    library_keys = {
        a.split(".", 1)[1]: str(r.inputs.get("key")) for a, r in state.resources.items() if r.kind == "library"
    }
    return {
        "keys_in_use": keys_in_use(catalog, key_names, library_keys, now),
        "libraries_in_use": libraries_in_use(catalog, now),
    }


def tape_key_warnings(policy_dir: Path, policy: Policy, points: Mapping[str, int] | None = None) -> list[str]:
    """Plan warnings: tape keys protecting data, and key files of repositories holding points
    (`points`: storage address → recovery points), that were never exported."""
    from protectctl.policy.model import Kind

    out: list[str] = []
    if policy.of(Kind.TAPE_LIBRARY):
        try:
            out += tape_service(policy_dir, policy).key_warnings()
        except ProtectctlError as err:
            out.append(f"tape keys could not be checked: {err.message}")
    if points is not None and any(points.values()):
        from protectctl.tape import repokeys

        try:
            home = state_home(policy_dir, policy)
            out += repokeys.unexported_warnings(
                repokeys.rows(repository_key_targets(policy_dir, policy, remote=False), home), points
            )
        except ProtectctlError as err:
            out.append(f"repository keys could not be checked: {err.message}")
    return out


def _tape_copy_for_restore(policy_dir: Path, job: Any, when: Any, *, from_tape: bool) -> Any:
    """The tape copy to restore from: asked for, or the disk has no point for `when` (or is gone)."""
    from protectctl.catalog.select import select_point
    from protectctl.errors import RepositoryError, RestoreError
    from protectctl.policy.model import Kind

    policy = load(policy_dir)
    if not policy.of(Kind.TAPE_LIBRARY):
        if from_tape:
            raise RestoreError("the policy has no TapeLibrary", hint="restore from disk (drop --from tape)")
        return None
    service = tape_service(policy_dir, policy)
    if from_tape:
        return service.choose(job.source, when)
    if not service.copies_of(job.source):
        return None
    try:
        from protectctl.agent.jobs import list_points as disk_points

        on_disk = [p for p in disk_points(job.storage, job.passphrase(), job.source) if p.source == job.source]
    except RepositoryError:
        on_disk = []
    try:
        tape_copy = service.choose(job.source, when)
    except RestoreError:
        return None
    try:
        disk_point = select_point(on_disk, when, source=job.source)
    except RestoreError:
        return tape_copy
    return tape_copy if tape_copy.point_time > disk_point.time else None


def run_tape(
    policy_dir: Path,
    group: str,
    member: str | None,
    *,
    all_points: bool = False,
    progress: Any = None,
    lock_timeout_s: float = TAPE_JOB_LOCK_TIMEOUT_S,
) -> Any:
    """D2D2T (or D2T): copy the group's points that are not on tape yet to its SLA's pool."""
    from protectctl.tape.service import group_target

    policy = load(policy_dir)
    target, copy_from = group_target(policy, group)
    jobs = [source_job(t) for t in sources(policy_dir, agent_config=None, group=group, member=member)]
    with tape_session(policy_dir, f"tape copy of {group}", policy, timeout_s=lock_timeout_s) as service:
        return service.copy_group(group, target, jobs, all_points=all_points, copy_from=copy_from, progress=progress)


def verify_tape(policy_dir: Path, group: str, member: str | None) -> Any:
    """Read back the cartridges holding the group's tape copies (and its pool's filling ones):
    a protectctl.tape.service.TapeVerifyResult, or None when the group's SLA has no tape copy."""
    from protectctl.tape.service import group_target, has_tape_copy

    policy = load(policy_dir)
    if not has_tape_copy(policy, group):
        return None
    target, _copy_from = group_target(policy, group)
    names = [str(t.inputs["source"]) for t in sources(policy_dir, agent_config=None, group=group, member=member)]
    with tape_session(policy_dir, f"verify tape copies of {group}", policy) as service:
        return service.verify_pool(group, target, names)


def tape_list(policy_dir: Path, pool: str | None = None) -> list[Any]:
    return list(tape_service(policy_dir).rows(pool))


def tape_label(policy_dir: Path, count: int, pool: str, library: str | None = None) -> list[Any]:
    with tape_session(policy_dir, "tape label") as service:
        made = {c.barcode for c in service.label(count, pool, library)}
        return [r for r in service.rows() if r.barcode in made]


def tape_move(policy_dir: Path, barcode: str, to: str) -> Any:
    with tape_session(policy_dir, f"tape move {barcode}") as service:
        service.move(barcode, to)
        return next(r for r in service.rows() if r.barcode == barcode)


def tape_recycle(policy_dir: Path, *, dry_run: bool = False) -> Any:
    with tape_session(policy_dir, "tape recycle") as service:
        return service.recycle(dry_run=dry_run)


def tape_inventory(policy_dir: Path, *, rebuild: bool = False) -> Any:
    with tape_session(policy_dir, "tape inventory") as service:
        return service.inventory(rebuild=rebuild)


def repository_key_targets(policy_dir: Path, policy: Policy | None = None, *, remote: bool = True) -> list[Any]:
    """The policy's Storages as protectctl.tape.repokeys targets; sftp ones (reached over SSH with
    the backup Host's own credentials) unless `remote` is False, as for plan, which stays offline."""
    from protectctl.plan.resources import _storage_inputs
    from protectctl.policy.model import Kind
    from protectctl.tape.repokeys import RepoKeyTarget

    policy = policy or load(policy_dir)
    out = []
    for name in sorted(policy.of(Kind.STORAGE)):
        inputs = _storage_inputs(policy, name)
        local = inputs["type"] == "local"
        if not local and not remote:
            continue
        ref = dict(inputs["passphrase"])  # type: ignore[call-overload]
        source = f"env {ref['env']}" if ref.get("env") else f"file {ref.get('file')}"
        out.append(
            RepoKeyTarget(
                name,
                str(inputs["key"]),
                source,
                open_storage(inputs),
                passphrase_reader(inputs),
                Path(str(inputs["path"])) if local else None,
            )
        )
    return out


def keys_list(policy_dir: Path) -> list[dict[str, object]]:
    """Tape keys, then every key file of the policy's (local) repositories."""
    from protectctl.tape import repokeys
    from protectctl.tape.service import key_rows

    policy = load(policy_dir)
    service = tape_service(policy_dir, policy)
    return key_rows(service.keys.infos(), service.cartridges_by_key()) + repokeys.rows(
        repository_key_targets(policy_dir, policy), service.ctx.home
    )


def keys_rotate(policy_dir: Path, name: str, *, old_passphrase_file: Path | None = None) -> dict[str, object]:
    """Tape: a new current KEK for `name` (and, given the old passphrase, older KEKs re-wrapped under
    the current one). Repositories whose Storage uses `name`: the master key re-wrapped under the
    passphrase `name` now gives (a new key file; the old passphrase's files removed), no data rewritten."""
    from protectctl.errors import TapeError
    from protectctl.policy.model import Kind
    from protectctl.tape import repokeys

    policy = load(policy_dir)
    service = tape_service(policy_dir, policy)
    if name not in service.ctx.passphrases:
        raise TapeError(f"no EncryptionKey named {name!r} in the policy")
    old = _passphrase_file(old_passphrase_file) if old_passphrase_file is not None else None
    out: dict[str, object] = {"id": None, "rewrapped": [], "repositories": []}
    uses_tape = any(c.key_name == name for c in service.ctx.libraries.values()) or any(
        k.name == name for k in service.keys.infos()
    )
    if uses_tape:
        if old is not None:
            out["rewrapped"] = service.keys.rewrap(name, old)
        out.update(service.keys.rotate(name, now=service.now).to_json())
    repos = [t for t in repository_key_targets(policy_dir, policy) if t.key_name == name]
    out["repositories"] = [repokeys.rotate(t, old) for t in repos]
    if not uses_tape and not repos:
        raise TapeError(
            f"EncryptionKey {name} protects no TapeLibrary and no local Storage",
            hint=f"libraries: {len(policy.of(Kind.TAPE_LIBRARY))}",
        )
    return out


def _passphrase_file(path: Path) -> bytes:
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

    policy = load(policy_dir)
    service = tape_service(policy_dir, policy)
    targets = repository_key_targets(policy_dir, policy)
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
            return _passphrase_file(passphrase_file)
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

    policy = load(policy_dir)
    service = tape_service(policy_dir, policy)

    def opener(name: str) -> bytes:
        if passphrase_file is not None:
            return _passphrase_file(passphrase_file)
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
            imported += repokeys.import_doc(
                part, repository_key_targets(policy_dir, policy), opener, origin=str(source)
            )
        else:
            imported += [k.id for k in service.keys.import_doc(part, opener, now=service.now, origin=str(source))]
    return imported


# --- hosts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostCheck:
    """`hosts check` of one host: each check is (what, ok, detail)."""

    host: str
    address: str
    checks: tuple[tuple[str, bool, str], ...]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "address": self.address,
            "ok": self.ok,
            "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.checks],
        }

    def text(self) -> str:
        lines = [f"{self.host} ({self.address}): {'ok' if self.ok else 'PROBLEMS'}"]
        lines += [f"  {'ok ' if ok else 'BAD'} {c}: {d}" for c, ok, d in self.checks]
        return "\n".join(lines)


def hosts_check(policy_dir: Path, name: str | None = None) -> list[HostCheck]:
    """Check every Host (or one): reachable with the pinned key, python, agent, timers, disk,
    and the paths its sources read."""
    from concurrent.futures import ThreadPoolExecutor

    from protectctl.provision.sources import wanted_paths

    policy = load(policy_dir)
    all_resources = resources(policy)
    hosts = {r.address.name: dict(r.inputs) for r in all_resources if r.address.kind == "host"}
    if name is not None and name not in hosts:
        raise ProtectctlError(f"no Host named {name!r}", hint=f"hosts: {', '.join(sorted(hosts)) or 'none'}")
    state = state_backend(policy_dir, policy).read()
    agents = {r.address.name: dict(r.inputs) for r in all_resources if r.address.kind == "agent"}
    chosen = [name] if name else sorted(hosts)
    paths = wanted_paths(all_resources)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(chosen)))) as pool:
        return list(pool.map(lambda h: _check_host(h, hosts, agents[h], state, paths.get(h, [])), chosen))


def _check_host(
    name: str, hosts: dict[str, dict[str, Any]], agent: dict[str, Any], state: State, paths: Sequence[SourcePath] = ()
) -> HostCheck:
    from protectctl.errors import RemoteError
    from protectctl.provision.host import connect
    from protectctl.provision.sources import missing_sources

    inputs = hosts[name]
    address = str(inputs["address"])
    conn = connect(name, address, inputs, hosts)
    checks: list[tuple[str, bool, str]] = []
    try:
        result = conn.run(("python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"))
        checks.append(
            (
                "reachable",
                True,
                "local"
                if address == "local"
                else f"{inputs.get('user') or 'root'}@{address}:{inputs.get('port', 22)}, host key verified",
            )
        )
        checks.append(("python", result.status == 0, result.stdout.strip() or result.stderr.strip()[-200:]))
        checks.append(_check_agent(conn, agent))
        checks.append(_check_timers(conn, name, state))
        df = conn.run(("df", "-Pk", str(inputs["root"])))
        fields = df.stdout.splitlines()[-1].split() if df.status == 0 and df.stdout.strip() else []
        if len(fields) >= 5:
            free = int(fields[3]) * 1024
            checks.append(
                ("disk", free > 1 << 30, f"{free / (1 << 30):.1f} GiB free under {inputs['root']} ({fields[4]} used)")
            )
        else:
            checks.append(("disk", False, f"df failed: {df.stderr.strip()[-200:]}"))
        if paths:
            missing = missing_sources(conn, paths)
            checks.append(
                ("sources", not missing, "; ".join(missing) if missing else f"{len(paths)} source path(s) present")
            )
    except RemoteError as err:
        checks.append(("reachable", False, err.message + (f" ({err.hint})" if err.hint else "")))
    finally:
        _close(conn)
    return HostCheck(name, address, tuple(checks))


def _check_agent(conn: Any, agent: dict[str, Any]) -> tuple[str, bool, str]:
    install = agent.get("install")
    if not install:
        return ("agent", True, f"protectctl {__version__} (this installation)")
    from protectctl.provision.agent_install import read_marker

    marker = read_marker(conn, str(install["venv"]))
    if marker is None:
        return ("agent", False, f"not installed in {install['venv']} (run apply)")
    current = marker.get("version") == __version__ and marker.get("digest") == install["digest"]
    return (
        "agent",
        current,
        f"protectctl {marker.get('version')} (digest {marker.get('digest')})"
        + ("" if current else f"; the policy wants {__version__} (digest {install['digest']}): run apply"),
    )


def _check_timers(conn: Any, host: str, state: State) -> tuple[str, bool, str]:
    from protectctl.apply.effects import digest

    files = {
        p: d
        for rec in state.resources.values()
        if rec.kind == "schedule" and rec.host == host
        for p, d in rec.outputs.get("files", {}).items()
    }
    bad = [p for p, want in sorted(files.items()) if (data := conn.read_file(p)) is None or digest(data) != want]
    if bad:
        return (
            "timers",
            False,
            f"{len(bad)} of {len(files)} schedule file(s) missing or changed: "
            f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} (plan --refresh shows them)",
        )
    return ("timers", True, f"{len(files)} schedule file(s) in place")


# --- browsing: ls, cat, versions, diff, find, mount (protectctl/browse) -------------------


def browse_sources(policy_dir: Path, selector: str, *, agent_config: Path | None) -> list[Any]:
    """GROUP[/MEMBER] as `BrowseSource`s: the policy's sources, else those of a group removed from
    the policy whose points are still in one of its storages."""
    from protectctl.plan.address import SourceRef

    try:
        ref = SourceRef.parse(selector)
    except ValueError as err:
        raise ProtectctlError(str(err)) from err
    try:
        targets = sources(
            policy_dir, agent_config=agent_config, group=ref.group, member=ref.member, include_remote=True
        )
    except ProtectctlError as err:
        if agent_config is not None:
            raise
        removed = removed_sources(policy_dir, selector)
        if not removed:
            raise err from None
        return removed
    return [
        _browse_source(t.inputs["source"], t.inputs["provider"], t.inputs["spec"], t.inputs["storage"]) for t in targets
    ]


def _browse_source(
    source: object, provider: object, spec: Mapping[str, Any], storage: Mapping[str, Any], in_policy: bool = True
) -> Any:
    from protectctl.agent.jobs import open_repository
    from protectctl.browse.service import BrowseSource

    stored = dict(storage)
    return BrowseSource(
        str(source),
        str(provider),
        dict(spec),
        stored,
        lambda: open_repository(open_storage(stored), passphrase_reader(stored)()),
        in_policy,
    )


def removed_sources(policy_dir: Path, selector: str | None = None) -> list[Any]:
    """Sources with points in the policy's storages but no longer in the policy (a group or member
    removed): reachable by GROUP/MEMBER for as long as their points exist."""
    found, _, removed = _scan_points(policy_dir, selector, agent_config=None, include_removed=True)
    out: dict[str, Any] = {}
    for p, storage in found:
        if p.source in removed and p.source not in out:
            out[p.source] = _browse_source(p.source, p.tags.get("provider", ""), {}, storage, in_policy=False)
    return list(out.values())


def browse_ls(policy_dir: Path, source: str, path: str, to_time: str, *, agent_config: Path | None) -> Any:
    from protectctl.browse import service

    return service.ls(
        service.one_source(browse_sources(policy_dir, source, agent_config=agent_config), source), path, to_time
    )


def browse_cat(
    policy_dir: Path,
    source: str,
    path: str,
    to_time: str,
    write: Callable[[bytes], object],
    *,
    agent_config: Path | None,
) -> int:
    from protectctl.browse import service

    return service.cat(
        service.one_source(browse_sources(policy_dir, source, agent_config=agent_config), source), path, to_time, write
    )


def browse_versions(policy_dir: Path, source: str, path: str, *, agent_config: Path | None) -> Any:
    from protectctl.browse import service

    return service.versions(
        service.one_source(browse_sources(policy_dir, source, agent_config=agent_config), source), path
    )


def browse_diff(policy_dir: Path, source: str, before: str, after: str, *, agent_config: Path | None) -> Any:
    from protectctl.browse import service

    return service.diff(
        service.one_source(browse_sources(policy_dir, source, agent_config=agent_config), source), before, after
    )


def browse_find(
    policy_dir: Path, selector: str, pattern: str, *, since: str | None, until: str | None, agent_config: Path | None
) -> Any:
    from protectctl.browse import service

    return service.find(
        browse_sources(policy_dir, selector, agent_config=agent_config), selector, pattern, since=since, until=until
    )


def browse_mount(
    policy_dir: Path,
    mountpoint: Path,
    selector: str | None,
    *,
    allow_other: bool,
    agent_config: Path | None,
    ready: Callable[[], None] | None = None,
) -> None:
    """`protectctl mount`: the points of the selected sources (default: every source, removed ones
    included) as a read-only filesystem, served until unmounted or interrupted."""
    from protectctl.browse.mount import MountError, serve

    if selector:
        chosen = browse_sources(policy_dir, selector, agent_config=agent_config)
    else:
        every = (
            _sources_from_agent(agent_config) if agent_config else _sources_from_policy(policy_dir, include_remote=True)
        )
        chosen = [
            _browse_source(t.inputs["source"], t.inputs["provider"], t.inputs["spec"], t.inputs["storage"])
            for t in every
        ] + ([] if agent_config else removed_sources(policy_dir))
    if not chosen:
        raise MountError("there is no source to mount", hint="protect a group first (apply, then run sync)")
    storages = {repr(sorted(s.storage.items())) for s in chosen}
    if len(storages) > 1:
        raise MountError(
            f"the sources selected are in {len(storages)} storages; one mount serves one storage",
            hint="mount each group on its own mountpoint: protectctl mount MOUNTPOINT GROUP",
        )
    with chosen[0].open_repository() as repo:
        serve(repo, [s.source for s in chosen], str(mountpoint.absolute()), allow_other=allow_other, ready=ready)
