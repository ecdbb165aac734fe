"""The jobs the CLI and the timers run on an agent: backup, restore, list, prune, status.

Each job is one function taking plain values (a `SourceJob` names the source, its provider
spec, its storage and policy numbers) and returning a frozen result with `to_json()`.
Jobs never print; long work reports to `Progress`. Errors are `ProtectctlError`s.

Backup order, chosen for crash safety (a process killed at any instant leaves the
repository checking clean and the next run able to complete):
source lock → repository shared lock → pre script → snapshot into a write session →
session commit (packs, then index) → point saved (last) → journal committed → post script
→ status and metrics. A kill before the point is saved publishes nothing (and the old
journal still matches the previous point); a kill between the point and the journal commit
leaves an older journal, which is merely less helpful, since reused chunks are always
checked against the repository.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from protectctl.agent.lock import source_lock
from protectctl.agent.retention import PointRef, RetentionSpec, plan_prune
from protectctl.agent.scripts import run_script
from protectctl.agent.status import (
    JobRecord,
    MetricsTarget,
    default_metrics_path,
    read_status,
    record_job,
    record_retention,
    record_tape_copy,
)
from protectctl.agent.throttle import ThrottledStorage
from protectctl.browse.paths import point_relative
from protectctl.catalog.select import select_point
from protectctl.engine.keycache import DerivedKeyCache
from protectctl.engine.memory import tune_malloc
from protectctl.engine.points import DamagedPoint, Point, PointStats, new_point_id
from protectctl.engine.prefetch import read_parallelism
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind, StorageBackend
from protectctl.engine.storage.cache import CachedStorage, cache_dir_for
from protectctl.errors import ProtectctlError, ProviderError
from protectctl.progress import NullProgress, Progress
from protectctl.provider import (
    LogChain,
    PointChooser,
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SourceRoot,
    load_provider,
)
from protectctl.restore.workers import restore_parallelism

__all__ = [
    "BackupResult",
    "PruneResult",
    "RestoreResult",
    "RetentionSpec",
    "SourceJob",
    "SourceStatus",
    "PointListing",
    "list_points",
    "scan_points",
    "prune",
    "restore",
    "run_backup",
    "status",
]

log = logging.getLogger(__name__)

BackupKind = Literal["sync", "full"]
# An SLA is met while the newest good point is at most this many intervals old: a run may
# be late by half an interval (a long backup, a reboot) before monitoring calls it missed.
SLA_GRACE = 1.5


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SourceJob:
    """Everything a job needs about one source; built by the CLI from the agent config."""

    source: str  # "group/member"
    provider: str  # "filesystem"
    spec: Mapping[str, object]  # provider member spec, snake_case
    storage: StorageBackend
    passphrase: Callable[[], bytes] = field(repr=False)  # resolved lazily, never logged
    state_dir: Path  # per-host state: journals, locks, status, metrics
    host: str
    retention: RetentionSpec
    pre_script: str | None = None
    post_script: str | None = None
    script_timeout_s: int = 600
    throttle_bps: int | None = None  # upload cap
    throttle_window: Callable[[datetime], bool] | None = None  # True when the cap applies now
    sync_interval_s: int = 900
    full_interval_s: int = 86400
    lock_timeout_s: float = 0.0  # how long a second run of this source waits for the first
    parallelism: int | None = None  # Settings `parallelism`: the writer's compression threads (None: its default)
    metrics: MetricsTarget | None = None  # the Host's textfile; None: STATE_DIR/metrics/protectctl.prom
    remote: bool = False  # an SSH host's source seen from the control machine: its agent keeps the status
    key_cache: DerivedKeyCache | None = field(default=None, repr=False)  # the agent's derived keys (no scrypt)


def _json_time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class BackupResult:
    source: str
    kind: str  # what the point is: "full" for a source's first point, else as requested
    requested_kind: str
    point_id: str
    time: datetime
    complete: bool
    errors: tuple[str, ...]
    files: int
    dirs: int
    bytes_total: int
    bytes_read: int
    bytes_added: int
    chunks_new: int
    duration_s: float
    silent_changes: int = 0
    warnings: tuple[str, ...] = ()  # e.g. a failed post script
    notes: tuple[str, ...] = ()  # what went wrong after the point was saved; the run still succeeded

    @property
    def ok(self) -> bool:
        return self.complete and not self.warnings

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, object]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out.update(
            time=_json_time(self.time), errors=list(self.errors), warnings=list(self.warnings), notes=list(self.notes)
        )
        out.update(ok=self.ok, exit_code=self.exit_code)
        return out


@dataclass(frozen=True, slots=True)
class RestoreResult:
    source: str
    point_id: str
    point_time: datetime
    point_kind: str
    point_complete: bool
    target: Path
    dry_run: bool
    files: int
    dirs: int
    bytes_total: int
    bytes_needed: int
    bytes_free: int | None
    verified: int
    notes: tuple[str, ...] = ()
    details: Mapping[str, object] = field(default_factory=dict)  # provider facts (e.g. PostgreSQL replay)

    @property
    def fits(self) -> bool | None:
        return None if self.bytes_free is None else self.bytes_needed <= self.bytes_free

    @classmethod
    def of(
        cls, source: str, point: Point, outcome: RestoreOutcome, *, dry_run: bool, notes: tuple[str, ...] = ()
    ) -> RestoreResult:
        """The result of a provider's restore of `point` (from disk or from tape)."""
        return cls(
            source=source,
            point_id=point.id,
            point_time=point.time,
            point_kind=point.kind,
            point_complete=point.complete,
            target=outcome.target,
            dry_run=dry_run,
            files=outcome.files,
            dirs=outcome.dirs,
            bytes_total=outcome.bytes_total,
            bytes_needed=outcome.bytes_needed,
            bytes_free=outcome.bytes_free,
            verified=outcome.verified,
            notes=(*outcome.notes, *notes),
            details=dict(outcome.details),
        )

    def to_json(self) -> dict[str, object]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out.update(point_time=_json_time(self.point_time), target=str(self.target), notes=list(self.notes))
        out["details"] = dict(self.details)
        out["fits"] = self.fits
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RestoreResult:
        """The result an agent printed (`agent restore`), read back on the control machine."""
        fields = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        fields.update(
            point_time=datetime.fromisoformat(str(data["point_time"])),
            target=Path(str(data["target"])),
            notes=tuple(data.get("notes") or ()),
            details=dict(data.get("details") or {}),
        )
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class PointSummary:
    """A point as prune reports it."""

    id: str
    source: str
    time: datetime
    kind: str
    reasons: tuple[str, ...] = ()  # why kept; empty for a forgotten point

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "source": self.source,
            "time": _json_time(self.time),
            "kind": self.kind,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class PruneResult:
    dry_run: bool
    forgotten: tuple[PointSummary, ...]
    kept: tuple[PointSummary, ...]
    packs_deleted: int
    bytes_deleted: int
    packs_condemned: int
    gc_deferred_because: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # damage found (and contained): the run needs attention

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "forgotten": [p.to_json() for p in self.forgotten],
            "kept": [p.to_json() for p in self.kept],
            "packs_deleted": self.packs_deleted,
            "bytes_deleted": self.bytes_deleted,
            "packs_condemned": self.packs_condemned,
            "gc_deferred_because": list(self.gc_deferred_because),
            "problems": list(self.problems),
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class SourceStatus:
    source: str
    points: int | None  # None: the repository could not be read, so the count is unknown
    last_point_id: str | None
    last_point_time: datetime | None
    last_point_kind: str | None
    last_full_time: datetime | None
    sync_age_s: float | None  # age of the newest complete point of any kind
    full_age_s: float | None  # age of the newest complete full
    sync_interval_s: int
    full_interval_s: int
    last_failure_time: datetime | None
    last_failure_message: str | None
    repository_bytes: int | None  # the whole repository (shared by its sources, deduplicated)
    source_bytes_added: int  # bytes this source's surviving points added
    sla_met: bool
    problems: tuple[str, ...]  # why the SLA is not met, or what could not be checked

    def to_json(self) -> dict[str, object]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for name in ("last_point_time", "last_full_time", "last_failure_time"):
            out[name] = _json_time(getattr(self, name))
        out["problems"] = list(self.problems)
        return out


# -- backup ----------------------------------------------------------------------------------


def _storage_for(job: SourceJob, now: Callable[[], datetime]) -> StorageBackend:
    storage = job.storage
    if read_parallelism(storage) > 1:  # a store whose requests cost (s3): keep manifests and index objects
        storage = CachedStorage(storage, cache_dir_for(job.state_dir, storage))
    if job.throttle_bps:
        return ThrottledStorage(storage, job.throttle_bps, window=job.throttle_window, now=now)
    return storage


def open_repository(storage: StorageBackend, passphrase: bytes, key_cache: DerivedKeyCache | None = None) -> Repository:
    """Open an existing repository (apply creates them); raises RepositoryError. `key_cache`:
    the agent's cache of derived keys, so a timer-started job skips scrypt (engine/keycache.py)."""
    tune_malloc()  # before scrypt's 32 MiB work area is freed (engine/memory.py says why)
    return Repository.open(storage, passphrase, key_cache=key_cache)


def run_backup(
    job: SourceJob,
    kind: BackupKind,
    *,
    progress: Progress | None = None,
    now: Callable[[], datetime] = utc_now,
    options: Mapping[str, object] | None = None,
) -> BackupResult:
    """Take a recovery point of `job.source`; raises ProtectctlError when no point was made.
    `options`: handed to the provider (SnapshotRequest.options).

    A point that misses files (vanished, unreadable) is saved incomplete and returned with
    `ok` false: the caller exits non-zero. Status and metrics are written either way.
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    try:
        with source_lock(
            job.state_dir, job.source, f"protectctl run {kind} {job.source}", timeout_s=job.lock_timeout_s
        ):
            result = _backup_locked(job, kind, progress, now, started, options or {})
    except Exception as err:
        message = err.message if isinstance(err, ProtectctlError) else f"internal error: {err!r}"
        _record(job, JobRecord(kind, _json_time(now()) or "", False, time.monotonic() - started, message))
        raise
    failure = None if result.ok else "; ".join((*result.warnings, *result.errors[:5]))
    _record(
        job,
        JobRecord(
            result.kind,
            _json_time(now()) or "",
            result.ok,
            result.duration_s,
            failure,
            result.point_id,
            result.complete,
            result.files,
            result.bytes_total,
            result.bytes_read,
            result.bytes_added,
        ),
    )
    return result


def _record(job: SourceJob, record: JobRecord) -> None:
    try:
        record_job(
            job.state_dir,
            job.source,
            record,
            metrics=_metrics_of(job),
            sla_s={"sync": job.sync_interval_s, "full": job.full_interval_s},
        )
    except OSError as err:  # status is a report; failing to write it must not hide the job's outcome
        log.error("status.write_failed", extra={"source": job.source, "error": str(err)})


def _metrics_of(job: SourceJob) -> MetricsTarget:
    from protectctl import __version__

    return job.metrics or MetricsTarget(default_metrics_path(job.state_dir), job.host, __version__)


def _record_retention(jobs: Sequence[SourceJob], kept: Sequence[PointSummary], now: datetime) -> None:
    """What prune left of each source, for the retention alerts (docs/monitoring.md)."""
    for job in jobs:
        if job.remote:
            continue
        times = [p.time for p in kept if p.source == job.source]
        try:
            record_retention(
                job.state_dir,
                job.source,
                points=len(times),
                oldest=min(times, default=None),
                pruned_at=now,
                metrics=_metrics_of(job),
            )
        except OSError as err:
            log.error("status.write_failed", extra={"source": job.source, "error": str(err)})


def record_tape_copies(jobs: Sequence[SourceJob], current: Sequence[str], now: datetime) -> None:
    """A tape run left the newest complete point of each source in `current` on tape: recorded
    for the tape copy alert (docs/monitoring.md)."""
    for job in jobs:
        if job.source not in current or job.remote:
            continue
        try:
            record_tape_copy(job.state_dir, job.source, copied_at=now, metrics=_metrics_of(job))
        except OSError as err:
            log.error("status.write_failed", extra={"source": job.source, "error": str(err)})


def _backup_locked(
    job: SourceJob,
    kind: BackupKind,
    progress: Progress,
    now: Callable[[], datetime],
    started: float,
    options: Mapping[str, object],
) -> BackupResult:
    with (
        open_repository(_storage_for(job, now), job.passphrase(), job.key_cache) as repo,
        repo.lock(exclusive=False, command=f"{kind} {job.source}"),
    ):
        scan = repo.scan_points(job.source)
        previous = scan.points
        damage = contain_damage(repo, scan.points, scan.damaged)
        actual = "full" if not previous else kind
        point_time = now()
        outcome, writer_stats, warnings = _snapshot_with_scripts(job, repo, actual, progress, options)
        point = Point(
            id=new_point_id(),
            source=job.source,
            time=point_time,
            kind=actual,
            parent=previous[-1].id if previous else None,
            tree=outcome.tree,
            stats=PointStats(
                files=outcome.stats.files,
                dirs=outcome.stats.dirs,
                bytes_total=outcome.stats.bytes_total,
                bytes_read=outcome.stats.bytes_read,
                bytes_added=writer_stats[0],
                chunks_new=writer_stats[1],
                duration_s=round(time.monotonic() - started, 3),
            ),
            complete=not outcome.errors,
            errors=outcome.errors,
            host=job.host,
            tags={"provider": job.provider},
            extra={**outcome.extra, "requested_kind": kind},
        )
        try:
            repo.save_point(point)
        except BaseException:
            outcome.finish(None)
            raise
        notes = _finish_saved(outcome, point)
    return _result(point, kind, outcome, (*damage, *warnings), notes)


def _finish_saved(outcome: SnapshotOutcome, point: Point) -> tuple[str, ...]:
    """The provider's bookkeeping once the point is saved (the change journal's commit).

    The point is valid and restorable whatever happens here, so a failure (a full disk) is a
    note on a successful run, never a failed run: once it failed the run after the point was
    saved, and monitoring counted a saved point as missed."""
    try:
        outcome.finish(point.id)
    except ProtectctlError as err:
        log.warning("point.finish_failed", extra={"source": point.source, "point": point.id, "error": err.message})
        return (f"point {point.id[:12]} is saved, but {err.message}",)
    return ()


def contain_damage(repo: Repository, points: Sequence[Point], damaged: Sequence[DamagedPoint]) -> list[str]:
    """Warnings for damage a job works around: damaged manifests (skipped) and a damaged or
    lost index (re-indexed from the packs' headers when nobody else uses the repository,
    read through them in memory otherwise)."""
    notes = [f"{bad.problem}: skipped; {FORGET_DAMAGED_HINT}" for bad in damaged]
    repair = repo.repair_index_if_safe(points)
    for name in sorted(repo.index_damage()):
        notes.append(f"index object {name} is damaged; {REPAIR_INDEX_HINT}")
    if repair is not None and repair.packs_reindexed:
        notes.append(
            f"the index missed {repair.packs_reindexed} pack(s) (an index object damaged or lost): "
            "re-indexed them from their own headers"
        )
    return notes


FORGET_DAMAGED_HINT = "forget it with `protectctl repair points --forget-damaged`"
REPAIR_INDEX_HINT = "its packs are read through their own headers; `protectctl repair index` removes it"


def _snapshot_with_scripts(
    job: SourceJob, repo: Repository, kind: BackupKind, progress: Progress, options: Mapping[str, object]
) -> tuple[SnapshotOutcome, tuple[int, int], tuple[str, ...]]:
    """Pre script, snapshot, post script (always, once pre ran); raises ProviderError when pre fails."""
    env = {"PROTECTCTL_SOURCE": job.source, "PROTECTCTL_KIND": kind}
    warnings: list[str] = []
    outcome_status = "failure"
    post_ran = False

    def frozen() -> None:
        """The provider froze the source (a snapshot): the post script may release it now."""
        nonlocal post_ran
        if job.post_script and not post_ran:
            post_ran = True
            post = run_script(
                "post",
                job.post_script,
                timeout_s=job.script_timeout_s,
                env={**env, "PROTECTCTL_STATUS": "success", "PROTECTCTL_FROZEN": "1"},
            )
            if not post.ok:
                warnings.append(post.describe())

    try:
        if job.pre_script:
            pre = run_script("pre", job.pre_script, timeout_s=job.script_timeout_s, env=env)
            if not pre.ok:
                raise ProviderError(pre.describe(), hint="no recovery point was made; fix the pre script")
        outcome, writer_stats = _snapshot(job, repo, kind, progress, frozen, options)
        outcome_status = "success"
    finally:
        if job.post_script and not post_ran:
            post = run_script(
                "post",
                job.post_script,
                timeout_s=job.script_timeout_s,
                env={**env, "PROTECTCTL_STATUS": outcome_status},
            )
            if not post.ok:
                warnings.append(post.describe())
    return outcome, writer_stats, tuple(warnings)


def _snapshot(
    job: SourceJob,
    repo: Repository,
    kind: BackupKind,
    progress: Progress,
    frozen: Callable[[], None] | None = None,
    options: Mapping[str, object] | None = None,
) -> tuple[SnapshotOutcome, tuple[int, int]]:
    """The provider's snapshot inside one write session; the journal is dropped if the commit fails."""
    from protectctl.agent.archive import RepositorySink  # the archiver: only when a snapshot runs

    provider = load_provider(job.provider)
    outcome: SnapshotOutcome | None = None
    try:
        with repo.writer(progress, workers=job.parallelism) as writer:
            outcome = provider.snapshot(
                SnapshotRequest(
                    job.source,
                    job.spec,
                    kind,
                    RepositorySink(repo, writer),
                    job.state_dir,
                    progress,
                    frozen=frozen,
                    options=options or {},
                )
            )
    except BaseException:
        if outcome is not None:
            outcome.finish(None)
        raise
    return outcome, (writer.bytes_added, writer.chunks_new)


def _result(
    point: Point, requested: str, outcome: SnapshotOutcome, warnings: tuple[str, ...], notes: tuple[str, ...] = ()
) -> BackupResult:
    silent = outcome.extra.get("silent_changes", 0)
    return BackupResult(
        source=point.source,
        kind=point.kind,
        requested_kind=requested,
        point_id=point.id,
        time=point.time,
        complete=point.complete,
        errors=point.errors,
        files=point.stats.files,
        dirs=point.stats.dirs,
        bytes_total=point.stats.bytes_total,
        bytes_read=point.stats.bytes_read,
        bytes_added=point.stats.bytes_added,
        chunks_new=point.stats.chunks_new,
        duration_s=point.stats.duration_s,
        silent_changes=silent if isinstance(silent, int) else 0,
        warnings=warnings,
        notes=notes,
    )


# -- listing and restore -------------------------------------------------------------------


def list_points(storage: StorageBackend, passphrase: bytes, source_prefix: str | None = None) -> list[Point]:
    """Points of every source matching "group" or "group/member" (or all), oldest first."""
    return scan_points(storage, passphrase, source_prefix).points


@dataclass(frozen=True, slots=True)
class PointListing:
    """Readable points, oldest first, and problems found on the way (damaged manifests)."""

    points: list[Point]
    problems: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # sources of these points no longer in the policy


def scan_points(storage: StorageBackend, passphrase: bytes, source_prefix: str | None = None) -> PointListing:
    """`list_points`, plus one problem per manifest that does not open (it is skipped)."""
    with open_repository(storage, passphrase) as repo:
        scan = repo.scan_points()
    problems = tuple(f"{storage.describe()}: {bad.problem}; {FORGET_DAMAGED_HINT}" for bad in scan.damaged)
    if source_prefix is None:
        return PointListing(scan.points, problems)
    prefix = source_prefix.rstrip("/")
    return PointListing([p for p in scan.points if p.source == prefix or p.source.startswith(prefix + "/")], problems)


def restore(
    job: SourceJob,
    to_time: datetime | Literal["latest"],
    *,
    target: Path | None,
    subpaths: Sequence[str] = (),
    dry_run: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    options: Mapping[str, object] | None = None,
    delete: bool = False,
    resume: bool = False,
) -> RestoreResult:
    """Restore the newest point at or before `to_time`; raises RestoreError (earliest point named).

    A provider that rolls logs forward (a `PointChooser`) picks the point itself: the newest
    base backup from which `to_time` can be reached.
    """
    provider = load_provider(job.provider)
    with (
        open_repository(job.storage, job.passphrase(), job.key_cache) as repo,
        repo.lock(exclusive=False, command=f"restore {job.source}"),
    ):
        scan = repo.scan_points(job.source)
        points = scan.points
        damage = tuple(contain_damage(repo, points, scan.damaged))
        if isinstance(provider, PointChooser):
            given = {"options": dict(options)} if options else {}  # a chooser written before `options` still works
            point = provider.choose_point(points, to_time, source=job.source, **given)
        else:
            point = select_point(points, to_time, source=job.source)
        if subpaths and isinstance(provider, SourceRoot):  # paths may be given as they were protected
            root = provider.source_root(job.spec, point)
            subpaths = [point_relative(path, root) for path in subpaths]
        with restore_parallelism(job.parallelism):  # worker processes and threads (restore/workers.py)
            outcome = provider.restore(
                RestoreRequest(
                    job.source,
                    job.spec,
                    point,
                    repo,
                    target,
                    tuple(subpaths),
                    dry_run,
                    overwrite,
                    progress or NullProgress(),
                    to_time=to_time,
                    options=dict(options or {}),
                    state_dir=job.state_dir,
                    points=points,
                    delete=delete,
                    resume=resume,
                )
            )
    return RestoreResult.of(job.source, point, outcome, dry_run=dry_run, notes=damage)


# -- prune ---------------------------------------------------------------------------------


def _by_storage(jobs: Sequence[SourceJob]) -> list[list[SourceJob]]:
    """Jobs grouped by the repository they share (one open, one gc per repository)."""
    groups: dict[str, list[SourceJob]] = {}
    for job in jobs:
        groups.setdefault(job.storage.describe(), []).append(job)
    return list(groups.values())


def prune(
    jobs: Sequence[SourceJob], *, now: datetime, dry_run: bool = False, progress: Progress | None = None
) -> PruneResult:
    """Apply each source's retention, then collect unreferenced data; other sources untouched."""
    forgotten: list[PointSummary] = []
    kept: list[PointSummary] = []
    totals = [0, 0, 0]
    deferred: list[str] = []
    problems: list[str] = []
    for group in _by_storage(jobs):
        with open_repository(group[0].storage, group[0].passphrase(), group[0].key_cache) as repo:
            scan = repo.scan_points()
            gone, stay = _forget_expired(repo, scan.points, group, now, dry_run)
            forgotten += gone
            kept += stay
            if not dry_run:
                problems += contain_damage(repo, scan.points, scan.damaged)
                _record_retention(group, stay, now)
            report = repo.gc(dry_run=dry_run, progress=progress)
            lock = getattr(repo.storage, "lock", None)
            if lock is not None and not dry_run:
                from protectctl.engine.objectlock import extend_locks

                extend_locks(repo, lock.retain_s)  # what a later point reuses stays locked as long as it
        totals[0] += report.packs_deleted
        totals[1] += report.bytes_deleted
        totals[2] += report.packs_condemned
        if report.damaged:
            problems.append(f"{repo.storage.describe()}: nothing deleted: {report.deferred_because}")
        elif report.deferred_because:
            deferred.append(report.deferred_because)
    return PruneResult(
        dry_run, tuple(forgotten), tuple(kept), totals[0], totals[1], totals[2], tuple(deferred), tuple(problems)
    )


def point_role(point: Point) -> str:
    """Where a point stands in a log chain, for retention: a PostgreSQL base backup ("base"),
    WAL shipped by a sync ("log"), or a point that restores on its own ("point")."""
    pg = point.extra.get("pg")
    if not isinstance(pg, dict):
        return "point"
    return "base" if pg.get("base") else "log"


def _role(point: Point, kind: str) -> str:
    """The point's role in its source's log chain: the provider's word when it keeps one (LogChain)."""
    try:
        provider = load_provider(kind)
    except ProviderError:  # not installed where prune runs: the points' own facts decide
        return point_role(point)
    return provider.point_role(point) if isinstance(provider, LogChain) else point_role(point)


def _forget_expired(
    repo: Repository, listed: Sequence[Point], jobs: Sequence[SourceJob], now: datetime, dry_run: bool
) -> tuple[list[PointSummary], list[PointSummary]]:
    specs = {job.source: job.retention for job in jobs}
    kinds = {job.source: job.provider for job in jobs}
    points = [p for p in listed if p.source in specs]
    by_id = {p.id: p for p in points}
    refs = [PointRef(p.id, p.source, p.time, p.complete, _role(p, kinds[p.source])) for p in points]
    gone: list[PointSummary] = []
    stay: list[PointSummary] = []
    for decisions in plan_prune(refs, specs, now=now).values():
        for decision in decisions:
            point = by_id[decision.point.id]
            summary = PointSummary(point.id, point.source, point.time, point.kind, decision.reasons)
            (stay if decision.keep else gone).append(summary)
    if gone and not dry_run:
        repo.forget_points([p.id for p in gone])
    return gone, stay


# -- status --------------------------------------------------------------------------------


def status(jobs: Sequence[SourceJob], *, now: datetime) -> list[SourceStatus]:
    """SLA compliance of each source: newest good points against the sync and full intervals."""
    out: list[SourceStatus] = []
    for group in _by_storage(jobs):
        facts = _repository_facts(group[0])
        out += [_source_status(job, facts, now) for job in group]
    return out


@dataclass(frozen=True, slots=True)
class _RepositoryFacts:
    points: list[Point]
    size: int | None
    problems: tuple[str, ...]  # damaged manifests
    unreadable: str | None = None  # why the repository could not be read at all


def _repository_facts(job: SourceJob) -> _RepositoryFacts:
    try:
        with open_repository(job.storage, job.passphrase(), job.key_cache) as repo:
            scan = repo.scan_points()
        size = sum(info.size for kind in ObjectKind for info in job.storage.list(kind))
    except ProtectctlError as err:
        return _RepositoryFacts([], None, (), f"repository cannot be read: {err.message}")
    problems = tuple(f"{bad.problem}; {FORGET_DAMAGED_HINT}" for bad in scan.damaged)
    return _RepositoryFacts(scan.points, size, problems)


def _source_status(job: SourceJob, facts: _RepositoryFacts, now: datetime) -> SourceStatus:
    """One source's status; its `problems` are the one list both the table and `--json` show."""
    all_points, repo_bytes, problem = facts.points, facts.size, facts.unreadable
    recorded = read_status(job.state_dir, job.source)
    points = [p for p in all_points if p.source == job.source]
    good = [p for p in points if p.complete]
    fulls = [p for p in good if p.kind == "full"]
    last = points[-1] if points else None
    if problem is None:
        sync_time = good[-1].time if good else None
        full_time = fulls[-1].time if fulls else None
    else:  # the repository cannot be read (e.g. no passphrase): what the agent recorded, not "never"
        sync_time = _recorded_time(recorded, "last_sync_success", "last_full_success")
        full_time = _recorded_time(recorded, "last_full_success")
    sync_age = (now - sync_time).total_seconds() if sync_time else None
    full_age = (now - full_time).total_seconds() if full_time else None
    problems = [problem] if problem else [*facts.problems]
    problems += _sla_problems("recovery point", sync_age, job.sync_interval_s)
    problems += _sla_problems("full", full_age, job.full_interval_s)
    failure = recorded.get("last_failure")
    failure_time = failure_message = None
    if isinstance(failure, dict) and isinstance(failure.get("time"), str):
        failure_time = datetime.fromisoformat(failure["time"])
        failure_message = str(failure.get("message") or "")
        success_time = _recorded_time(recorded, "last_success")
        if success_time is None or failure_time > success_time:  # a later success settles it
            problems.append(
                f"the last {failure.get('kind', 'job')} failed at {failure_time:%Y-%m-%d %H:%M}Z: "
                f"{failure_message or 'no reason recorded'}"
            )
    return SourceStatus(
        source=job.source,
        points=len(points) if problem is None else None,
        last_point_id=last.id if last else None,
        last_point_time=last.time if last else None,
        last_point_kind=last.kind if last else None,
        last_full_time=full_time,
        sync_age_s=sync_age,
        full_age_s=full_age,
        sync_interval_s=job.sync_interval_s,
        full_interval_s=job.full_interval_s,
        last_failure_time=failure_time,
        last_failure_message=failure_message,
        repository_bytes=repo_bytes,
        source_bytes_added=sum(p.stats.bytes_added for p in points),
        sla_met=not problems,
        problems=tuple(problems),
    )


def _recorded_time(recorded: Mapping[str, object], *keys: str) -> datetime | None:
    """The newest time among the status file's records `keys`."""
    times = []
    for key in keys:
        record = recorded.get(key)
        if isinstance(record, Mapping) and isinstance(record.get("time"), str):
            times.append(datetime.fromisoformat(str(record["time"])))
    return max(times, default=None)


def _sla_problems(what: str, age_s: float | None, interval_s: int) -> list[str]:
    if age_s is None:
        return [f"no complete {what} yet"]
    if age_s > SLA_GRACE * interval_s:
        return [f"newest complete {what} is {age_s / 3600:.1f} h old; the SLA allows {interval_s / 3600:.1f} h"]
    return []
