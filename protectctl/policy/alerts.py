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
from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec

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
    """A duration for people: 22m30s, 1h, 36h."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def _sources_by_sla(policy: Policy) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, doc in sorted(policy.of(Kind.PROTECTION_GROUP).items()):
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        out.setdefault(spec.sla, []).extend(f"{name}/{m.name}" for m in spec.members)
    return out


def _missed(kind: str, sources: str, limit_s: float, sla: str, counted: str) -> dict[str, object]:
    """A source whose newest good point of `counted` kinds is older than the limit, or that has none."""
    stamps = f'protectctl_last_success_timestamp_seconds{{source=~"{sources}",kind=~"{counted}"}}'
    target = f'protectctl_sla_target_seconds{{source=~"{sources}",kind="{kind}"}}'
    expr = (f"(time() - max by (host, source) ({stamps}) > {limit_s:g}) or "
            f"(max by (host, source) ({target}) unless on (host, source) {stamps})")
    what = "recovery point" if kind == "sync" else "full"
    return {
        "alert": f"ProtectctlMissed{kind.title()}",
        "expr": expr,
        "for": "5m",
        "labels": {"severity": "critical" if kind == "sync" else "warning", "sla": sla},
        "annotations": {
            "summary": f"{{{{ $labels.source }}}} on {{{{ $labels.host }}}}: no good {what} within its SLA",
            "description": f"SLA {sla} wants a good {what} every {_duration(limit_s / GRACE)}; the newest is "
                           f"older than {_duration(limit_s)} (or there is none). `protectctl status` says why.",
        },
    }


def _incomplete(sources: str, sla: str) -> dict[str, object]:
    return {
        "alert": "ProtectctlPointIncomplete",
        "expr": f'protectctl_last_point_complete{{source=~"{sources}"}} == 0',
        "for": "0m",
        "labels": {"severity": "warning", "sla": sla},
        "annotations": {
            "summary": "{{ $labels.source }} on {{ $labels.host }}: the last recovery point is incomplete",
            "description": "Some files could not be read; `protectctl points list` and the job's log name them.",
        },
    }


def _failing(sources: str, sla: str) -> dict[str, object]:
    """Not an SLA breach yet, but the job that keeps the SLA keeps failing."""
    return {
        "alert": "ProtectctlJobFailing",
        "expr": f'protectctl_last_job_success{{source=~"{sources}"}} == 0',
        "for": "1h",
        "labels": {"severity": "warning", "sla": sla},
        "annotations": {
            "summary": "{{ $labels.source }} on {{ $labels.host }}: its last {{ $labels.kind }} failed",
            "description": "`protectctl status` shows the reason; the SLA alerts fire if it stays so.",
        },
    }


def alert_rules(policy: Policy) -> dict[str, object]:
    """The rules document (`groups:`) for every SLA that protects at least one source."""
    groups = []
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
        ]
        groups.append({"name": f"protectctl-sla-{sla_name}", "rules": rules})
    return {"groups": groups}
