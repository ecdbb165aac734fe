"""Prometheus alerting rules derived from the policy's SLAs (`protectctl alerts`).

Pure: the policy in, the rules document (a dict, dumped as YAML by the caller) out. One rule
group per SLA; each rule selects the sources of that SLA by label and states the SLA's own
threshold, so a reviewer reads "docs/home must have a good point every 22.5 min" in the rule
itself. Thresholds carry the grace the agent's status uses (agent/jobs.py SLA_GRACE = 1.5
intervals). Metric names and labels: docs/monitoring.md (agent/status.py writes them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from protectctl.policy.load import Policy
from protectctl.policy.model import Kind, ProtectionGroupSpec, RetentionSpec, SLASpec
from protectctl.policy.rules import settings_of

GRACE = 1.5  # the same as agent/jobs.py SLA_GRACE: late by half an interval is not yet missed


_PLAIN = re.compile(r"[a-z0-9/-]+")


def _selector(sources: Sequence[str]) -> str:
    """A label regex matching exactly these sources. Names are lower-case letters, digits and '-'
    (policy/model.py NAME_PATTERN), none of which RE2 treats specially outside a class; anything
    else would need escaping that PromQL's string literal also reads, so it is refused here."""
    for source in sources:
        if not _PLAIN.fullmatch(source):
            raise ValueError(f"source {source!r} cannot be matched by a plain label regex")
    return "|".join(sources)


def _duration(seconds: float) -> str:
    """A duration for people: 22m30s, 1h, 36h, 15d12h (days from two on)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    days, hours = divmod(hours, 24) if hours >= 48 else (0, hours)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


def _sources_by_sla(policy: Policy) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, doc in sorted(policy.of(Kind.PROTECTION_GROUP).items()):
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        out.setdefault(spec.sla, []).extend(f"{name}/{m.name}" for m in spec.members)
    return out


def _rule(
    alert: str, expr: str, *, wait: str, severity: str, sla: str, summary: str, description: str
) -> dict[str, object]:
    """One alerting rule of an SLA's group; `summary` follows "SOURCE on HOST: "."""
    return {
        "alert": alert,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity, "sla": sla},
        "annotations": {
            "summary": "{{ $labels.source }} on {{ $labels.host }}: " + summary,
            "description": description,
        },
    }


def _missed(kind: str, sources: str, limit_s: float, sla: str, counted: str) -> dict[str, object]:
    """A source whose newest good point of `counted` kinds is older than the limit, or that has none."""
    stamps = f'protectctl_last_success_timestamp_seconds{{source=~"{sources}",kind=~"{counted}"}}'
    target = f'protectctl_sla_target_seconds{{source=~"{sources}",kind="{kind}"}}'
    expr = (
        f"(time() - max by (host, source) ({stamps}) > {limit_s:g}) or "
        f"(max by (host, source) ({target}) unless on (host, source) {stamps})"
    )
    what = "recovery point" if kind == "sync" else "full"
    return _rule(
        f"ProtectctlMissed{kind.title()}",
        expr,
        wait="5m",
        severity="critical" if kind == "sync" else "warning",
        sla=sla,
        summary=f"no good {what} within its SLA",
        description=f"SLA {sla} wants a good {what} every {_duration(limit_s / GRACE)}; the newest is "
        f"older than {_duration(limit_s)} (or there is none). `protectctl status` says why.",
    )


def _incomplete(sources: str, sla: str) -> dict[str, object]:
    return _rule(
        "ProtectctlPointIncomplete",
        f'protectctl_last_point_complete{{source=~"{sources}"}} == 0',
        wait="0m",
        severity="warning",
        sla=sla,
        summary="the last recovery point is incomplete",
        description="Some files could not be read; `protectctl points list` and the job's log name them.",
    )


def _failing(sources: str, sla: str) -> dict[str, object]:
    """Not an SLA breach yet, but the job that keeps the SLA keeps failing."""
    return _rule(
        "ProtectctlJobFailing",
        f'protectctl_last_job_success{{source=~"{sources}"}} == 0',
        wait="1h",
        severity="warning",
        sla=sla,
        summary="its last {{ $labels.kind }} failed",
        description="`protectctl status` shows the reason; the SLA alerts fire if it stays so.",
    )


_DAY = 86400
# the longest a calendar rule keeps a point: N periods, plus the one it started in
_PERIODS: tuple[tuple[str, int], ...] = (
    ("daily", _DAY),
    ("weekly", 7 * _DAY),
    ("monthly", 31 * _DAY),
    ("yearly", 366 * _DAY),
)


def retention_limit_s(retention: RetentionSpec, full_interval_s: int) -> int:
    """The oldest a point may be when a prune has just run: the longest any retention rule keeps
    one, plus 1.5 full intervals (a log chain keeps the base backup its window starts from)."""
    keep = max(
        [retention.disk.seconds]
        + [(count + 1) * period for name, period in _PERIODS if (count := getattr(retention, name) or 0)]
    )
    return int(keep + GRACE * full_interval_s)


def _out_of_retention(sources: str, limit_s: int, sla: str) -> dict[str, object]:
    """Prune ran but left a point older than the retention keeps any: it is not deleting
    (a damaged repository, an object lock, points kept for a reason to look at)."""
    sel = f'{{source=~"{sources}"}}'
    return _rule(
        "ProtectctlOutOfRetention",
        f"protectctl_last_prune_timestamp_seconds{sel} - protectctl_oldest_point_timestamp_seconds{sel} > {limit_s}",
        wait="0m",
        severity="warning",
        sla=sla,
        summary="points older than its retention are kept",
        description=f"SLA {sla} keeps no point past {_duration(limit_s)}; after the last prune the oldest "
        "was older. `protectctl prune --dry-run` says why each point is kept.",
    )


def _prune_overdue(sources: str, limit_s: int, sla: str) -> dict[str, object]:
    """The last prune that reached the source is too old; or the source has had points for
    longer than that and was never pruned."""
    sel = f'{{source=~"{sources}"}}'
    return _rule(
        "ProtectctlPruneOverdue",
        f"(time() - protectctl_last_prune_timestamp_seconds{sel} > {limit_s}) or "
        f"((protectctl_first_point_timestamp_seconds{sel} < time() - {limit_s}) "
        f"unless on (host, source) protectctl_last_prune_timestamp_seconds{sel})",
        wait="5m",
        severity="warning",
        sla=sla,
        summary="its retention has not been applied lately",
        description=f"Prune is scheduled at least every {_duration(limit_s / GRACE)}; the last one that "
        f"reached this source is older than {_duration(limit_s)} (or none has, and its first point is), "
        "so expired points keep using the disk.",
    )


def _tape_overdue(sources: str, limit_s: int, sla: str, pool: str) -> dict[str, object]:
    """No tape run has left the newest point on tape lately; or the source has had points for
    longer than that and never had a tape copy."""
    sel = f'{{source=~"{sources}"}}'
    return _rule(
        "ProtectctlTapeCopyOverdue",
        f"(time() - protectctl_last_tape_copy_timestamp_seconds{sel} > {limit_s}) or "
        f"((protectctl_first_point_timestamp_seconds{sel} < time() - {limit_s}) "
        f"unless on (host, source) protectctl_last_tape_copy_timestamp_seconds{sel})",
        wait="5m",
        severity="warning",
        sla=sla,
        summary="no recent tape copy",
        description=f"SLA {sla} copies to tape pool {pool} every {_duration(limit_s / GRACE)}; the last "
        f"tape copy is older than {_duration(limit_s)} (or there is none). "
        "`protectctl run tape` and `protectctl tape list` say more.",
    )


def alert_rules(policy: Policy) -> dict[str, object]:
    """The rules document (`groups:`) for every SLA that protects at least one source."""
    groups = []
    prune_s = settings_of(policy).schedules.prune.max_interval_s()
    for sla_name, members in sorted(_sources_by_sla(policy).items()):
        doc = policy.get(Kind.SLA, sla_name)
        assert doc is not None and isinstance(doc.spec, SLASpec)
        sla = doc.spec
        sources = _selector(members)
        rules = [
            _missed("sync", sources, GRACE * sla.sync.max_interval_s(), sla_name, "sync|full"),
            _missed("full", sources, GRACE * sla.full.max_interval_s(), sla_name, "full"),
            _incomplete(sources, sla_name),
            _failing(sources, sla_name),
            _out_of_retention(sources, retention_limit_s(sla.retention, sla.full.max_interval_s()), sla_name),
            _prune_overdue(sources, int(GRACE * prune_s), sla_name),
        ]
        if sla.tape is not None:
            rules.append(
                _tape_overdue(sources, int(GRACE * sla.tape.schedule.max_interval_s()), sla_name, sla.tape.pool)
            )
        groups.append({"name": f"protectctl-sla-{sla_name}", "rules": rules})
    return {"groups": groups}


def rules_yaml(rules: dict[str, object]) -> str:
    """The rules as the YAML file Prometheus reads, with a line saying who wrote it."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    buffer = io.StringIO()
    buffer.write("# Prometheus alerting rules written by `protectctl alerts` (docs/monitoring.md)\n")
    yaml.dump(rules, buffer)
    return buffer.getvalue()
