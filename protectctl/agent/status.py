"""What the agent remembers about each source's jobs, and the metrics file built from it.

After every job, success or failure, the runner records the attempt in
STATE_DIR/status/<source>.json and re-renders STATE_DIR/metrics/protectctl.prom from every
status file, both written atomically: node_exporter's textfile collector never reads a torn
file, and a monitoring system sees the same facts as `protectctl status`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
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


def record_job(state_dir: Path, source: str, record: JobRecord) -> None:
    """Add `record` to the source's status and refresh the metrics file."""
    status = read_status(state_dir, source)
    status["source"] = source
    status["last_attempt"] = asdict(record)
    if record.ok:
        status["last_success"] = asdict(record)
        status[f"last_{record.kind}_success"] = asdict(record)
    else:
        status["last_failure"] = asdict(record)
    atomic_write(status_path(state_dir, source), json.dumps(status, indent=1, sort_keys=True).encode("utf-8"))
    write_metrics(state_dir)


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


_HELP = {
    "protectctl_last_success_timestamp_seconds": "End of the last successful job of the source, by kind.",
    "protectctl_last_failure_timestamp_seconds": "End of the last failed job of the source.",
    "protectctl_last_job_success": "1 when the source's last job succeeded, else 0.",
    "protectctl_last_job_duration_seconds": "Duration of the source's last job.",
    "protectctl_last_point_files": "Files in the source's last recovery point.",
    "protectctl_last_point_bytes": "Logical bytes in the source's last recovery point.",
    "protectctl_last_job_bytes_read": "Bytes read from the source by its last job.",
    "protectctl_last_job_bytes_added": "Bytes the source's last job added to the repository.",
    "protectctl_last_point_complete": "1 when the source's last recovery point is complete, else 0.",
}


def render_metrics(statuses: Sequence[Mapping[str, object]]) -> str:
    """Prometheus text exposition format of the given status documents."""
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: str, value: float) -> None:
        samples[name].append(f"{name}{{{labels}}} {value:g}")

    for status in statuses:
        labels = f'source="{_label(str(status["source"]))}"'
        for kind in ("sync", "full"):
            stamp = _timestamp(status.get(f"last_{kind}_success"))
            if stamp is not None:
                add("protectctl_last_success_timestamp_seconds", f'{labels},kind="{kind}"', stamp)
        failure = _timestamp(status.get("last_failure"))
        if failure is not None:
            add("protectctl_last_failure_timestamp_seconds", labels, failure)
        last = status.get("last_attempt")
        if isinstance(last, Mapping):
            add("protectctl_last_job_success", labels, 1 if last.get("ok") else 0)
            add("protectctl_last_job_duration_seconds", labels, float(last.get("duration_s") or 0))
            add("protectctl_last_job_bytes_read", labels, float(last.get("bytes_read") or 0))
            add("protectctl_last_job_bytes_added", labels, float(last.get("bytes_added") or 0))
            if last.get("point_id"):
                add("protectctl_last_point_files", labels, float(last.get("files") or 0))
                add("protectctl_last_point_bytes", labels, float(last.get("bytes_total") or 0))
                add("protectctl_last_point_complete", labels, 1 if last.get("complete") else 0)
    lines: list[str] = []
    for name, rows in samples.items():
        lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *rows]
    return "\n".join(lines) + "\n"


def write_metrics(state_dir: Path) -> Path:
    """Re-render the metrics file from every source's status; returns its path."""
    path = state_dir / "metrics" / METRICS_FILE
    atomic_write(path, render_metrics(_all_status(state_dir)).encode("utf-8"))
    return path
