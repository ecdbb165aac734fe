"""What the agent remembers about each source's jobs, and the metrics file built from it.

After every job, success or failure, the runner records the attempt in
STATE_DIR/status/<source>.json and re-renders the metrics textfile (the Host's `metrics.path`,
docs/monitoring.md) from every status file, both written atomically: node_exporter's textfile
collector never reads a torn file, and a monitoring system sees the same facts as
`protectctl status`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from protectctl.agent.lock import safe_name
from protectctl.fsutil import atomic_write

log = logging.getLogger(__name__)

METRICS_FILE = "protectctl.prom"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One finished job, as the status file keeps it."""

    kind: str
    time: str  # ISO 8601, UTC
    ok: bool
    duration_s: float
    message: str | None = None
    point_id: str | None = None
    complete: bool | None = None
    files: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_added: int = 0


def status_path(state_dir: Path, source: str) -> Path:
    return state_dir / "status" / f"{safe_name(source)}.json"


def read_status(state_dir: Path, source: str) -> dict[str, object]:
    """The status document of `source`; empty when none was written or it is unreadable."""
    try:
        data = json.loads(status_path(state_dir, source).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class MetricsTarget:
    """Where the agent writes its Prometheus textfile (the Host's `metrics`), and what it labels."""

    path: Path
    host: str
    version: str


def default_metrics_path(state_dir: Path) -> Path:
    """Where agents configured before `metrics:` existed keep writing it."""
    return state_dir / "metrics" / METRICS_FILE


def record_job(
    state_dir: Path,
    source: str,
    record: JobRecord,
    *,
    sla_s: Mapping[str, int] | None = None,
    metrics: MetricsTarget | None = None,
) -> None:
    """Add `record` to the source's status and refresh the metrics file.

    `sla_s`: the longest time allowed between good points, by kind (`sync`, `full`)."""
    with _updating(state_dir, source) as status:
        _add_job(status, record, sla_s)
    write_metrics(state_dir, metrics)


def _add_job(status: dict[str, object], record: JobRecord, sla_s: Mapping[str, int] | None) -> None:
    status["last_attempt"] = asdict(record)
    outcome = "success" if record.ok else "failure"
    if record.ok:
        status["last_success"] = asdict(record)
        status[f"last_{record.kind}_success"] = asdict(record)
        if record.point_id and "first_point" not in status:
            # the prune and tape alerts need an age for a source never pruned or never copied
            status["first_point"] = {"time": record.time}
    else:
        status["last_failure"] = asdict(record)
    counts = status.get("counts") if isinstance(status.get("counts"), dict) else {}
    assert isinstance(counts, dict)
    by_kind = counts.setdefault(record.kind, {})
    by_kind[outcome] = int(by_kind.get(outcome, 0)) + 1
    status["counts"] = counts
    for key, value in (("read_bytes_total", record.bytes_read), ("added_bytes_total", record.bytes_added)):
        previous = status.get(key)
        status[key] = (previous if isinstance(previous, int) else 0) + int(value)
    if sla_s is not None:
        status["sla_s"] = dict(sla_s)


def record_retention(
    state_dir: Path,
    source: str,
    *,
    points: int,
    oldest: datetime | None,
    pruned_at: datetime,
    metrics: MetricsTarget | None = None,
) -> None:
    """What a prune left of the source (its points, the oldest one's time) and when it ran;
    refreshes the metrics file (the retention alerts read these)."""
    with _updating(state_dir, source) as status:
        status["retention"] = {"points": points, "oldest_point_time": _iso(oldest), "last_prune_time": _iso(pruned_at)}
    write_metrics(state_dir, metrics)


def record_tape_copy(
    state_dir: Path, source: str, *, copied_at: datetime, metrics: MetricsTarget | None = None
) -> None:
    """A tape run that left the source's newest complete point on tape (copied now or before);
    refreshes the metrics file (the tape copy alert reads it)."""
    with _updating(state_dir, source) as status:
        status["last_tape_copy"] = {"time": _iso(copied_at)}
    write_metrics(state_dir, metrics)


def _iso(value: datetime | None) -> str | None:
    from datetime import UTC

    return value.astimezone(UTC).isoformat() if value is not None else None


@contextlib.contextmanager
def _updating(state_dir: Path, source: str) -> Iterator[dict[str, object]]:
    """The source's status to change, written back (atomically) when the block ends. Read and
    write hold an flock: a backup's record (written after its source lock is released), a
    prune's and a tape run's come from separate processes and must not drop each other's."""
    path = status_path(state_dir, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.stem}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a small write; dropped if we die
        status = read_status(state_dir, source)
        status["source"] = source
        yield status
        atomic_write(path, json.dumps(status, indent=1, sort_keys=True).encode("utf-8"))
    finally:
        os.close(fd)


def _all_status(state_dir: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted((state_dir / "status").glob("*.json")):
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            out.append(data)
    return out


def _timestamp(record: object) -> float | None:
    if not isinstance(record, Mapping) or not isinstance(record.get("time"), str):
        return None
    return datetime.fromisoformat(str(record["time"])).timestamp()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Exact: an integer as written, a float as its shortest round-tripping repr (never `{:g}`,
    which kept 6 digits and moved a timestamp of 1796217971 to 1.79622e+09, 2029 s later)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# name → (type, help). Names end in their unit (docs/monitoring.md lists them with their labels).
METRICS: dict[str, tuple[str, str]] = {
    "protectctl_build_info": ("gauge", "Always 1; the agent's version and host as labels."),
    "protectctl_last_success_timestamp_seconds": ("gauge", "End of the source's last successful job, by kind."),
    "protectctl_last_failure_timestamp_seconds": ("gauge", "End of the source's last failed job, by kind."),
    "protectctl_last_job_success": ("gauge", "1 when the source's last job succeeded, else 0."),
    "protectctl_last_job_duration_seconds": ("gauge", "Duration of the source's last job."),
    "protectctl_last_job_read_bytes": ("gauge", "Bytes the source's last job read from the source."),
    "protectctl_last_job_added_bytes": ("gauge", "Bytes the source's last job added to the repository."),
    "protectctl_last_point_files": ("gauge", "Files in the source's last recovery point."),
    "protectctl_last_point_size_bytes": ("gauge", "Logical bytes in the source's last recovery point."),
    "protectctl_last_point_complete": ("gauge", "1 when the source's last recovery point is complete, else 0."),
    "protectctl_jobs_total": ("counter", "Jobs of the source that ended, by kind and outcome."),
    "protectctl_read_bytes_total": ("counter", "Bytes the source's jobs read from the source."),
    "protectctl_added_bytes_total": ("counter", "Bytes the source's jobs added to the repository."),
    "protectctl_points": ("gauge", "Recovery points of the source the last prune kept."),
    "protectctl_oldest_point_timestamp_seconds": (
        "gauge",
        "Time of the source's oldest recovery point the last prune kept.",
    ),
    "protectctl_last_prune_timestamp_seconds": ("gauge", "When the last prune applied the source's retention."),
    "protectctl_first_point_timestamp_seconds": (
        "gauge",
        "When the source's first recovery point this agent recorded was made.",
    ),
    "protectctl_last_tape_copy_timestamp_seconds": (
        "gauge",
        "End of the last tape run that left the source's newest complete point on tape.",
    ),
    "protectctl_sla_target_seconds": ("gauge", "Longest time the SLA allows between good points, by kind."),
    "protectctl_sla_met": (
        "gauge",
        "1 when the newest good point of the kind was within 1.5 SLA targets when the file was written, else 0.",
    ),
}
# A good full is also a good point for the sync SLA (jobs.py SourceStatus counts it the same way).
_SLA_KINDS: dict[str, tuple[str, ...]] = {"sync": ("sync", "full"), "full": ("full",)}
SLA_GRACE = 1.5


def render_metrics(
    statuses: Sequence[Mapping[str, object]], *, host: str = "", version: str = "", now: datetime | None = None
) -> str:
    """Prometheus text exposition format of the given status documents. Pure."""
    samples: dict[str, list[str]] = {name: [] for name in METRICS}

    def add(name: str, labels: Mapping[str, str], value: float) -> None:
        text = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        samples[name].append(f"{name}{{{text}}} {_number(value)}")

    add("protectctl_build_info", {"host": host, "version": version}, 1)
    for status in statuses:
        _source_samples(status, {"host": host, "source": str(status["source"])}, now, add)
    lines: list[str] = []
    for name, rows in samples.items():
        kind, text = METRICS[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *rows]
    return "\n".join(lines) + "\n"


def _source_samples(
    status: Mapping[str, object],
    labels: dict[str, str],
    now: datetime | None,
    add: Callable[[str, Mapping[str, str], float], None],
) -> None:
    success: dict[str, float] = {}
    for kind in ("sync", "full"):
        stamp = _timestamp(status.get(f"last_{kind}_success"))
        if stamp is not None:
            success[kind] = stamp
            add("protectctl_last_success_timestamp_seconds", {**labels, "kind": kind}, stamp)
    failure = status.get("last_failure")
    stamp = _timestamp(failure)
    if stamp is not None and isinstance(failure, Mapping):
        add("protectctl_last_failure_timestamp_seconds", {**labels, "kind": str(failure.get("kind"))}, stamp)
    last = status.get("last_attempt")
    if isinstance(last, Mapping):
        job = {**labels, "kind": str(last.get("kind"))}
        add("protectctl_last_job_success", job, 1 if last.get("ok") else 0)
        add("protectctl_last_job_duration_seconds", job, float(last.get("duration_s") or 0))
        add("protectctl_last_job_read_bytes", job, int(last.get("bytes_read") or 0))
        add("protectctl_last_job_added_bytes", job, int(last.get("bytes_added") or 0))
        if last.get("point_id"):
            add("protectctl_last_point_files", labels, int(last.get("files") or 0))
            add("protectctl_last_point_size_bytes", labels, int(last.get("bytes_total") or 0))
            add("protectctl_last_point_complete", labels, 1 if last.get("complete") else 0)
    counts = status.get("counts")
    for kind, outcomes in sorted(counts.items()) if isinstance(counts, Mapping) else ():
        for outcome in ("success", "failure"):
            count = outcomes.get(outcome, 0) if isinstance(outcomes, Mapping) else 0
            add("protectctl_jobs_total", {**labels, "kind": str(kind), "outcome": outcome}, int(count))
    for key in ("read_bytes_total", "added_bytes_total"):
        total = status.get(key)
        if isinstance(total, int):
            add(f"protectctl_{key}", labels, total)
    _retention_samples(status, labels, add)
    _sla_samples(status.get("sla_s"), success, labels, now, add)


def _retention_samples(
    status: Mapping[str, object], labels: dict[str, str], add: Callable[[str, Mapping[str, str], float], None]
) -> None:
    retention = status.get("retention")
    if isinstance(retention, Mapping):
        if isinstance(retention.get("points"), int):
            add("protectctl_points", labels, int(retention["points"]))
        for key, name in (
            ("oldest_point_time", "protectctl_oldest_point_timestamp_seconds"),
            ("last_prune_time", "protectctl_last_prune_timestamp_seconds"),
        ):
            stamp = _timestamp({"time": retention.get(key)})
            if stamp is not None:
                add(name, labels, stamp)
    for key, name in (
        ("last_tape_copy", "protectctl_last_tape_copy_timestamp_seconds"),
        ("first_point", "protectctl_first_point_timestamp_seconds"),
    ):
        stamp = _timestamp(status.get(key))
        if stamp is not None:
            add(name, labels, stamp)


def _sla_samples(
    sla_s: object,
    success: Mapping[str, float],
    labels: dict[str, str],
    now: datetime | None,
    add: Callable[[str, Mapping[str, str], float], None],
) -> None:
    if not isinstance(sla_s, Mapping):
        return
    for kind, counted in _SLA_KINDS.items():
        target = sla_s.get(kind)
        if not isinstance(target, int):
            continue
        add("protectctl_sla_target_seconds", {**labels, "kind": kind}, target)
        if now is None:
            continue
        newest = max((success[k] for k in counted if k in success), default=None)
        met = newest is not None and now.timestamp() - newest <= SLA_GRACE * target
        add("protectctl_sla_met", {**labels, "kind": kind}, 1 if met else 0)


def write_metrics(state_dir: Path, metrics: MetricsTarget | None = None) -> Path:
    """Re-render the metrics file from every source's status (0640: node_exporter's group, which
    the directory passes on, reads it); returns its path."""
    from datetime import UTC

    path = metrics.path if metrics is not None else default_metrics_path(state_dir)
    # One renderer at a time: each job renders after writing its own status, so the last
    # renderer to run has seen every status written before it, and no older view overwrites it.
    (state_dir / "status").mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "status" / ".metrics.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = render_metrics(
            _all_status(state_dir),
            host=metrics.host if metrics else "",
            version=metrics.version if metrics else "",
            now=datetime.now(UTC),
        )
        atomic_write(path, text.encode("utf-8"), mode=0o640)
    finally:
        os.close(fd)
    return path
