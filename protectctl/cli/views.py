"""How results read: JSON documents (`--json`) and text, for the results the api returns as data
(the facade's own result types: validate, apply, run sync/full, check, hosts check)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protectctl.agent.jobs import BackupResult
    from protectctl.agent.sources import BackupFailure, BackupSkipped, CheckResult
    from protectctl.api import ValidateResult
    from protectctl.apply.operations import ApplyReport
    from protectctl.provision.checks import HostCheck


def validate_json(result: ValidateResult) -> dict[str, object]:
    return {
        "format_version": "1.0",
        "valid": True,
        "policy_dir": str(result.policy_dir),
        "documents": result.documents,
        "warnings": [str(w) for w in result.warnings],
        # the same warnings with their place (file, line, column), as errors carry theirs
        "diagnostics": [w.to_json() for w in result.warnings],
    }


def apply_json(report: ApplyReport) -> dict[str, object]:
    return {
        "format_version": "1.0",
        "applied": report.applied,
        "failed": report.failed,
        "hosts": report.by_host(),
        "results": [
            {
                "address": r.address,
                "action": r.action.value,
                "outcome": r.outcome.value,
                "host": r.host,
                "message": r.message,
                "duration_s": round(r.duration_s, 3),
            }
            for r in report.results
        ],
        "warnings": report.warnings,
        "inactive_schedules": [
            {"host": host, "reason": why, "units": sorted(units)}
            for host, (why, units) in sorted(report.inactive_schedules.items())
        ],
    }


def backup_json(result: BackupResult | BackupSkipped | BackupFailure) -> dict[str, object]:
    from protectctl.agent.sources import BackupFailure, BackupSkipped

    if isinstance(result, BackupSkipped):
        return {
            "source": result.source,
            "requested_kind": result.requested_kind,
            "ok": True,
            "skipped": True,
            "reason": result.reason,
        }
    if isinstance(result, BackupFailure):
        return {
            "source": result.source,
            "requested_kind": result.requested_kind,
            "ok": False,
            "error": result.message,
            "hint": result.hint,
        }
    return result.to_json()


def check_json(result: CheckResult) -> dict[str, object]:
    r = result.report
    return {
        "storage": result.storage,
        "ok": result.ok,
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


def check_text(result: CheckResult) -> str:
    r = result.report
    lines = [
        f"{result.storage}: {r.points_checked} points, {r.packs_checked} packs, {r.blobs_checked} blobs "
        f"checked{' (every byte read)' if r.read_data else ''}"
    ]
    lines += [f"  warning: {w}" for w in r.warnings]
    lines += [f"  ERROR: {e}" for e in r.errors]
    if r.damaged_points:
        lines.append(f"  damaged point manifests: {', '.join(r.damaged_points)}")
    if r.affected:
        lines.append("  affected recovery points:")
        lines += [f"    {a.describe()}" for a in r.affected]
    lines.append("  no problems found" if result.ok else f"  {len(r.errors)} problem(s) found")
    return "\n".join(lines)


def host_check_json(check: HostCheck) -> dict[str, object]:
    return {
        "host": check.host,
        "address": check.address,
        "ok": check.ok,
        "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in check.checks],
    }


def host_check_text(check: HostCheck) -> str:
    lines = [f"{check.host} ({check.address}): {'ok' if check.ok else 'PROBLEMS'}"]
    lines += [f"  {'ok ' if ok else 'BAD'} {c}: {d}" for c, ok, d in check.checks]
    return "\n".join(lines)
