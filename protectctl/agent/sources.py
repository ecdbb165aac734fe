"""The sources a job acts on, and the jobs built for them.

A source is read from the agent config on a host (`--agent-config`: what apply wrote there) or
from the policy (on the control machine). The policy path loads the policy models and the plan
code; the agent path must not (a timer-started sync stays cheap: tests/integration/
test_agent_startup.py), so the policy side is imported only when it is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protectctl import __version__
from protectctl.errors import ProtectctlError

if TYPE_CHECKING:
    from protectctl.agent.jobs import BackupResult, PointListing, PruneResult, SourceJob, SourceStatus
    from protectctl.engine.check import CheckReport
    from protectctl.engine.keycache import DerivedKeyCache
    from protectctl.engine.points import DamagedPoint
    from protectctl.engine.repair import IndexRepair
    from protectctl.engine.storage.base import StorageBackend
    from protectctl.plan.address import SourceRef
    from protectctl.progress import Progress
    from protectctl.provider import Point, PrepareOutcome, PrepareRequest

BackupKind = Literal["sync", "full"]
StorageInputs = dict[str, Any]  # a Storage's inputs as plan/resources.py makes them (JSON values)


@dataclass(frozen=True, slots=True)
class SourceTarget:
    """A source's inputs (as apply recorded them) and where its agent keeps state."""

    inputs: dict[str, Any]
    state_dir: Path
    host: str
    remote: bool = False  # an SSH host's source, seen from the control machine (its data is not here)
    metrics_path: Path | None = None  # the agent's Prometheus textfile (None: under state_dir)
    agent: bool = False  # read from an agent config: the job may cache its derived key (engine/keycache.py)

    @property
    def source(self) -> str:
        return str(self.inputs["source"])

    @property
    def provider(self) -> str:
        return str(self.inputs["provider"])


def all_sources(policy_dir: Path, *, agent_config: Path | None, include_remote: bool = False) -> list[SourceTarget]:
    """Every source here: of the agent config, or of the policy (SSH hosts' too with `include_remote`)."""
    if agent_config is not None:
        return sources_from_agent(agent_config)
    return sources_from_policy(policy_dir, include_remote=include_remote)


def select_sources(
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
    found = all_sources(policy_dir, agent_config=agent_config, include_remote=include_remote)
    chosen = [
        s
        for s in found
        if (group is None or s.inputs["group"] == group) and (member is None or s.inputs["member"] == member)
    ]
    if not chosen:
        what = f"{group}/{member}" if member else (group or "any source")
        known = ", ".join(sorted({s.source for s in found})) or "none"
        raise ProtectctlError(f"no source matches {what}", hint=f"sources here: {known}")
    return chosen


def sources_from_policy(policy_dir: Path, *, include_remote: bool = False) -> list[SourceTarget]:
    from protectctl.plan.compile import load, resources
    from protectctl.plan.resources import storage_inputs

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
                # the control machine's view of the storage: its own credentials, knownHosts and
                # passphrase, not the agent's (append-only key, copies under the host root)
                inputs: dict[str, Any] = dict(r.inputs)
                name = str(inputs["storage"]["name"])
                inputs["storage"] = {"name": name, **storage_inputs(policy, name)}
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


def read_agent_config(agent_config: Path | None, command: str) -> dict[str, Any]:
    """The agent config of this host; `command` (e.g. "agent restore") runs only on one."""
    from protectctl.provision.config import read_yaml_mapping

    if agent_config is None:
        raise ProtectctlError(f"{command} runs on a provisioned host", hint="pass --agent-config")
    return read_yaml_mapping(agent_config, "agent config")


def sources_from_agent(agent_config: Path) -> list[SourceTarget]:
    from protectctl.provision.config import read_yaml_mapping

    agent = read_agent_config(agent_config, "an agent job")
    out = []
    for path in sorted(Path(str(agent["sources_dir"])).glob("*.yaml")):
        inputs = read_yaml_mapping(path, "source config")
        out.append(
            SourceTarget(
                inputs, Path(str(agent["state_dir"])), str(agent["host"]), metrics_path=_metrics_path(agent), agent=True
            )
        )
    return out


def prepare_on_agent(source_config: Path, *, agent_config: Path | None) -> PrepareOutcome:
    """`agent prepare`: run the provider's host preparation for one source config of this agent."""
    from protectctl.provider import HostPreparer, PrepareOutcome, PrepareRequest, load_provider
    from protectctl.provision.config import read_yaml_mapping

    agent = read_agent_config(agent_config, "agent prepare")
    inputs = read_yaml_mapping(source_config, "source config")
    provider = load_provider(str(inputs["provider"]))
    if not isinstance(provider, HostPreparer):
        return PrepareOutcome()
    return provider.prepare_host(
        PrepareRequest(str(inputs["source"]), dict(inputs["spec"]), Path(str(agent["state_dir"])))
    )


def prepare_request_json(provider: str, request: PrepareRequest) -> dict[str, Any]:
    """What `agent prepare-preview` reads on stdin: the provider's kind and the PrepareRequest."""
    return {
        "provider": provider,
        "source": request.source,
        "spec": dict(request.spec),
        "state_dir": str(request.state_dir),
    }


def prepare_request_from_json(data: object) -> tuple[str, PrepareRequest]:
    """`prepare_request_json` read back; ProtectctlError when it is not one."""
    from protectctl.provider import PrepareRequest

    if (
        not isinstance(data, dict)
        or not all(isinstance(data.get(k), str) for k in ("provider", "source", "state_dir"))
        or not isinstance(data.get("spec"), dict)
    ):
        raise ProtectctlError("agent prepare-preview: the request on stdin is not a prepare request")
    return str(data["provider"]), PrepareRequest(str(data["source"]), dict(data["spec"]), Path(str(data["state_dir"])))


def prepare_outcome_json(outcome: PrepareOutcome) -> dict[str, list[str]]:
    """What `agent prepare` and `agent prepare-preview` print."""
    return {"changes": list(outcome.changes), "warnings": list(outcome.warnings)}


def prepare_outcome_from_json(data: object) -> PrepareOutcome | None:
    """`prepare_outcome_json` read back; None when it is not one."""
    from protectctl.provider import PrepareOutcome

    if not isinstance(data, dict):
        return None
    changes, warnings = data.get("changes", []), data.get("warnings", [])
    if not isinstance(changes, list) or not isinstance(warnings, list):
        return None
    return PrepareOutcome(tuple(str(c) for c in changes), tuple(str(w) for w in warnings))


def preview_on_agent(data: object, *, agent_config: Path | None) -> PrepareOutcome:
    """`agent prepare-preview`: what the provider's prepare would change on this host now,
    reading only (`plan --refresh` on the control machine sends the request over SSH). The
    state directory is this agent's own."""
    from dataclasses import replace as with_

    from protectctl.provider import PrepareOutcome, PreparePreview, load_provider

    agent = read_agent_config(agent_config, "agent prepare-preview")
    kind, request = prepare_request_from_json(data)
    provider = load_provider(kind)
    if not isinstance(provider, PreparePreview):
        return PrepareOutcome()
    return provider.preview_prepare(with_(request, state_dir=Path(str(agent["state_dir"]))))


# --- jobs ---------------------------------------------------------------------------------


def open_storage(storage: Mapping[str, Any]) -> StorageBackend:
    from protectctl.engine.storage.factory import open_storage as open_any

    return open_any(storage)


def passphrase_reader(storage: Mapping[str, Any]) -> Callable[[], bytes]:
    from protectctl.secret import SecretRef  # not apply.effects: a timer-started job needs no apply code

    given = storage["passphrase"]
    ref = SecretRef(env=given.get("env"), file=Path(given["file"]) if given.get("file") else None)
    return lambda: ref.resolve().value


def source_job(target: SourceTarget) -> SourceJob:
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


def _agent_key_cache(storage: Mapping[str, Any], state_dir: Path) -> DerivedKeyCache | None:
    """The agent's cache of the keys derived from its root-only passphrase copy, in its state
    directory (engine/keycache.py); None when the passphrase is not a file (e.g. `env:`)."""
    ref = storage.get("passphrase")
    if not isinstance(ref, dict) or not ref.get("file"):
        return None
    from protectctl.engine.keycache import DerivedKeyCache, cache_path_for

    return DerivedKeyCache(cache_path_for(state_dir, str(ref["file"])))


@dataclass(frozen=True, slots=True)
class BackupSkipped:
    """A backup job this host does not run now (a standby of a pair backed up on its primary)."""

    source: str
    requested_kind: str
    reason: str
    ok: bool = True
    skipped: bool = True


@dataclass(frozen=True, slots=True)
class BackupFailure:
    """A backup job that produced no recovery point."""

    source: str
    requested_kind: str
    message: str
    hint: str | None = None
    ok: bool = False


def run_backups(
    targets: Sequence[SourceTarget],
    kind: BackupKind,
    *,
    progress: Progress | None,
    options: Mapping[str, object] | None = None,
) -> list[BackupResult | BackupSkipped | BackupFailure]:
    """Run sync or full for each target; one result per source, a failure included, so that one
    member's failure (a busy lock, a failed pre script) does not stop the others."""
    from protectctl.agent.jobs import run_backup

    results: list[BackupResult | BackupSkipped | BackupFailure] = []
    for target in targets:
        try:
            placed = place_job(target, kind)
            if isinstance(placed, BackupSkipped):
                results.append(placed)
                continue
            results.append(run_backup(source_job(placed), kind, progress=progress, options=options))
        except ProtectctlError as err:
            results.append(BackupFailure(target.source, kind, err.message, err.hint))
    return results


def place_job(target: SourceTarget, kind: BackupKind) -> SourceTarget | BackupSkipped:
    """The target on the node that must run `kind` (a primary/standby pair), or why not here."""
    from protectctl.provider import JobPlacer, load_provider

    provider = load_provider(target.provider)
    if not isinstance(provider, JobPlacer):
        return target
    placement = provider.place_job(target.source, target.inputs["spec"], kind, target.state_dir)
    if placement.spec is None:
        return BackupSkipped(target.source, kind, placement.reason)
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

    (target,) = select_sources(policy_dir, agent_config=agent_config, group=group, member=member)
    provider = load_provider(target.provider)
    if not isinstance(provider, LogStreamer):
        raise ProtectctlError(
            f"{target.source} does not stream logs", hint=f"{target.provider} sources have no log streaming"
        )
    provider.stream_logs(target.source, target.inputs["spec"], target.state_dir, log)


# --- points and status --------------------------------------------------------------------


def storages_of(targets: Sequence[SourceTarget]) -> dict[str, StorageInputs]:
    return {str(t.inputs["storage"]["path"]): t.inputs["storage"] for t in targets}


def parse_selector(selector: str) -> SourceRef:
    """GROUP[/MEMBER] as a SourceRef; a one-line error for anything else."""
    from protectctl.plan.address import SourceRef

    try:
        return SourceRef.parse(selector)
    except ValueError as err:
        raise ProtectctlError(str(err)) from err


def _selected(source: str, ref: SourceRef | None) -> bool:
    """`source` (GROUP/MEMBER) is what `ref` (None: all) selects."""
    return ref is None or source == str(ref) or (ref.member is None and source.startswith(f"{ref.group}/"))


@dataclass(frozen=True, slots=True)
class PointScan:
    """Points of the selected sources with the storage each is in, the problems met, and the
    sources seen that are no longer in the policy."""

    found: list[tuple[Point, StorageInputs]]
    problems: tuple[str, ...]
    removed: set[str]

    def listing(self) -> PointListing:
        from protectctl.agent.jobs import PointListing

        points = sorted((p for p, _ in self.found), key=lambda p: p.time)
        return PointListing(points, self.problems, tuple(sorted(self.removed)))


def scan_points(
    policy_dir: Path, selector: str | None, *, agent_config: Path | None, include_removed: bool
) -> PointScan:
    """Readable points of the selected sources; damaged manifests as problems. Points of a source
    no longer in the policy (its group or member removed) are listed when `include_removed` or
    when the selector names it."""
    from protectctl.agent.jobs import scan_points as points_of

    ref = parse_selector(selector) if selector else None
    every = all_sources(policy_dir, agent_config=agent_config, include_remote=True)
    current = {t.source for t in every}
    targets = [t for t in every if _selected(t.source, ref)]
    chosen = {t.source for t in targets}
    needed = storages_of(targets)
    storages = dict(needed)
    if agent_config is None and (include_removed or (ref is not None and not targets)):
        from protectctl.plan.compile import load, policy_storages

        storages = {**policy_storages(load(policy_dir)), **needed}
    out: list[tuple[Point, StorageInputs]] = []
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
        select_sources(policy_dir, agent_config=agent_config, group=ref.group, member=ref.member)  # raises
    return PointScan(out, tuple(problems), removed)


def points_of_storage(storage: Mapping[str, Any]) -> list[Point]:
    from protectctl.agent.jobs import list_points

    return list_points(open_storage(storage), passphrase_reader(storage)(), None)


def recovery_windows(points: Sequence[Point]) -> dict[str, list[str]]:
    """For sources whose provider rolls logs forward (RecoveryWindows): source → lines describing
    the recoverable time spans, gaps and dropped logs (what `points list` shows under the table)."""
    from protectctl.provider import RecoveryWindows, load_provider

    by_source: dict[str, list[Point]] = {}
    kinds: dict[str, str] = {}
    for p in points:
        kind = p.tags.get("provider")
        if kind:
            by_source.setdefault(p.source, []).append(p)
            kinds[p.source] = str(kind)
    out = {}
    for source, pts in sorted(by_source.items()):
        try:
            provider = load_provider(kinds[source])
        except ProtectctlError:
            continue  # not installed here (points of a removed plug-in)
        if isinstance(provider, RecoveryWindows):
            out[source] = provider.recovery_windows(pts)
    return out


def status_of(targets: Sequence[SourceTarget]) -> list[SourceStatus]:
    """Each source's status row; a provider that reports more than point ages (StatusReporter,
    e.g. gaps in the logs that make part of the retained time unrecoverable) puts it out of SLA."""
    from protectctl.agent.jobs import status as job_status
    from protectctl.provider import StatusReporter, load_provider

    rows = job_status([source_job(t) for t in targets], now=datetime.now(UTC))
    reporters = {
        t.source: (t, provider) for t in targets if isinstance(provider := load_provider(t.provider), StatusReporter)
    }
    if not reporters:
        return rows
    loaded: list[Point] = []

    def load_points() -> list[Point]:
        # Read only when a reporter looks at them (the filesystem's leftover check never does).
        for storage in storages_of([t for t, _ in reporters.values()]).values():
            try:
                loaded.extend(points_of_storage(storage))
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


class _Lazy(Sequence["Point"]):
    """A list computed on first use."""

    def __init__(self, load: Callable[[], list[Point]]) -> None:
        self._load = load
        self._items: list[Point] | None = None

    def _all(self) -> list[Point]:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[Point]:
        return iter(self._all())


# --- repositories: check and repair -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    storage: str  # the storage as it describes itself
    report: CheckReport

    @property
    def ok(self) -> bool:
        return bool(self.report.ok)


def check_storage(storage: Mapping[str, Any], *, read_data: bool, progress: Progress | None) -> CheckResult:
    from protectctl.engine.repository import Repository

    backend = open_storage(storage)
    with Repository.open(backend, passphrase_reader(storage)()) as repo, repo.lock(exclusive=False, command="check"):
        report = repo.check(read_data=read_data, progress=progress)
    return CheckResult(backend.describe(), report)


def repair_index_of(storage: Mapping[str, Any], *, progress: Progress | None) -> tuple[str, IndexRepair]:
    """Rebuild the storage's index from its packs' headers (see engine/repair.py)."""
    from protectctl.engine.repository import Repository

    backend = open_storage(storage)
    with Repository.open(backend, passphrase_reader(storage)()) as repo:
        return backend.describe(), repo.repair_index(progress=progress)


def repair_points_of(storage: Mapping[str, Any], *, forget: bool) -> tuple[str, list[DamagedPoint]]:
    """The manifests of the storage that do not open; forgotten with `forget`."""
    from protectctl.engine.repository import Repository

    backend = open_storage(storage)
    with Repository.open(backend, passphrase_reader(storage)()) as repo:
        return backend.describe(), repo.forget_damaged_points(dry_run=not forget)


# --- the commands on sources and storages --------------------------------------------------


def run_backup(
    policy_dir: Path,
    kind: BackupKind,
    group: str,
    member: str | None,
    *,
    agent_config: Path | None,
    progress: Progress | None,
    options: Mapping[str, object] | None = None,
) -> list[BackupResult | BackupSkipped | BackupFailure]:
    """`run sync|full`: one result per chosen source, a failure included; `options` go to each
    provider (SnapshotRequest.options, e.g. {"express": False})."""
    targets = select_sources(policy_dir, agent_config=agent_config, group=group, member=member)
    return run_backups(targets, kind, progress=progress, options=options)


def list_points(
    policy_dir: Path, selector: str | None, *, agent_config: Path | None, include_removed: bool = False
) -> PointListing:
    """`points list`: readable points of the selected sources, oldest first; damaged manifests as
    problems; points of sources removed from the policy with `include_removed` or when named."""
    return scan_points(policy_dir, selector, agent_config=agent_config, include_removed=include_removed).listing()


def status(policy_dir: Path, group: str | None, *, agent_config: Path | None) -> list[SourceStatus]:
    return status_of(select_sources(policy_dir, agent_config=agent_config, group=group))


def prune(
    policy_dir: Path,
    group: str | None,
    *,
    agent_config: Path | None,
    dry_run: bool,
    member: str | None = None,
    progress: Progress | None = None,
) -> list[PruneResult]:
    from protectctl.agent.jobs import prune as run_prune

    # from the control machine, remote sources too: prune needs the full rights an agent's
    # append-only key lacks (sftp storage)
    targets = select_sources(
        policy_dir, agent_config=agent_config, group=group, member=member, include_remote=agent_config is None
    )
    by_storage: dict[str, list[SourceTarget]] = {}
    for t in targets:
        by_storage.setdefault(str(t.inputs["storage"]["path"]), []).append(t)
    return [
        run_prune([source_job(t) for t in group_targets], now=datetime.now(UTC), dry_run=dry_run, progress=progress)
        for group_targets in by_storage.values()
    ]


def _named_storages(policy_dir: Path, storage_name: str | None) -> list[dict[str, object]]:
    from protectctl.plan.compile import load, named_storages

    return named_storages(load(policy_dir), storage_name)


def check(policy_dir: Path, storage_name: str, *, read_data: bool, progress: Progress | None) -> CheckResult:
    (storage,) = _named_storages(policy_dir, storage_name)
    return check_storage(storage, read_data=read_data, progress=progress)


def repair_index(
    policy_dir: Path, storage_name: str | None, *, progress: Progress | None
) -> list[tuple[str, IndexRepair]]:
    """`repair index`: rebuild each storage's index from its packs' headers (see engine/repair.py)."""
    return [repair_index_of(s, progress=progress) for s in _named_storages(policy_dir, storage_name)]


def repair_points(policy_dir: Path, storage_name: str | None, *, forget: bool) -> list[tuple[str, list[DamagedPoint]]]:
    """`repair points`: the manifests that do not open, per storage; forgotten with `forget`."""
    return [repair_points_of(s, forget=forget) for s in _named_storages(policy_dir, storage_name)]
