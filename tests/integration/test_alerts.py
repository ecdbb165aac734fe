"""`protectctl alerts`: rules derived from the SLAs, checked by `promtool check rules` and
exercised by `promtool test rules` against series shaped like the agent's textfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
)

# quickstart: SLA tier1, sync every 15m (missed after 22m30s), full daily (missed after 36h).
# Series are sampled every minute; the agent's last good sync ended at t=0 (epoch 0).
TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'protectctl_last_success_timestamp_seconds{host="local",source="docs/home",kind="sync"}'
        values: '0x60'
      - series: 'protectctl_last_success_timestamp_seconds{host="local",source="docs/home",kind="full"}'
        values: '0x60'
      - series: 'protectctl_sla_target_seconds{host="local",source="docs/home",kind="sync"}'
        values: '900x60'
      - series: 'protectctl_last_point_complete{host="local",source="docs/home"}'
        values: '1x10 0x50'
      - series: 'protectctl_sla_target_seconds{host="local",source="docs/other",kind="sync"}'
        values: '900x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: ProtectctlMissedSync
        exp_alerts:
          - exp_labels: {host: local, source: docs/other, severity: critical, sla: tier1}
            exp_annotations:
              summary: 'docs/other on local: no good recovery point within its SLA'
              description: @MISSED_SYNC@
      - eval_time: 30m
        alertname: ProtectctlMissedSync
        exp_alerts:
          - exp_labels: {host: local, source: docs/home, severity: critical, sla: tier1}
            exp_annotations:
              summary: 'docs/home on local: no good recovery point within its SLA'
              description: @MISSED_SYNC@
          - exp_labels: {host: local, source: docs/other, severity: critical, sla: tier1}
            exp_annotations:
              summary: 'docs/other on local: no good recovery point within its SLA'
              description: @MISSED_SYNC@
      - eval_time: 5m
        alertname: ProtectctlPointIncomplete
        exp_alerts: []
      - eval_time: 15m
        alertname: ProtectctlPointIncomplete
        exp_alerts:
          - exp_labels: {host: local, source: docs/home, severity: warning, sla: tier1}
            exp_annotations:
              summary: 'docs/home on local: the last recovery point is incomplete'
              description: "Some files could not be read; `protectctl points list` and the job's log name them."
      - eval_time: 50m
        alertname: ProtectctlMissedFull
        exp_alerts: []
"""


MISSED_SYNC = (
    "'SLA tier1 wants a good recovery point every 15m; the newest is older than 22m30s "
    "(or there is none). `protectctl status` says why.'"
)


def _members(quickstart: Path) -> None:
    file = quickstart / "protect.yaml"
    text = file.read_text()
    member = "    - name: home\n      host: local\n"
    assert member in text
    file.write_text(
        text.replace(member, "    - name: other\n      host: local\n      filesystem: {path: ./other}\n" + member)
    )


def test_rules_check_and_behave(quickstart: Path, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    _members(quickstart)
    rules = tmp_path / "rules.yml"
    run_cli(quickstart, "alerts", "--out", str(rules))
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "tests.yml").write_text(TESTS.replace("@MISSED_SYNC@", MISSED_SYNC))
    test = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_alerts_on_stdout_match_the_file(quickstart: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    run_cli(quickstart, "alerts", "--out", str(rules))
    assert run_cli(quickstart, "alerts").stdout == rules.read_text()


def test_grafana_dashboard_queries_only_metrics_the_agent_writes() -> None:
    """examples/monitoring/grafana-dashboard.json: valid JSON whose queries name only our metrics."""
    import json
    import re

    from protectctl.agent.status import METRICS

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "examples/monitoring/grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    named = {m for e in exprs for m in re.findall(r"\bprotectctl_[a-z_]+", e)}
    assert named and named <= set(METRICS), named - set(METRICS)


# -- beyond the anchors: retention, prune and tape copies --------------------------------------

TAPE_SLA = (
    "  retention: {disk: 14d}\n",
    "  retention: {disk: 14d}\n  tape: {library: lib1, pool: monthly, schedule: weekly on sun at 02:00, "
    "retention: 7y}\n",
)
LIBRARY = """\
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {name: tape-kek}
spec: {passphrase: {file: ./.protectctl/tape-passphrase}}
---
apiVersion: protectctl/v1
kind: TapeLibrary
metadata: {name: lib1}
spec:
  type: virtual
  path: ./.protectctl/tape/lib1
  slots: 4
  drives: 1
  media: {type: LTO-9, capacity: 100MB}
  encryption: {key: tape-kek}
"""


def _with_tape(quickstart: Path) -> None:
    file = quickstart / "protect.yaml"
    text = file.read_text()
    assert TAPE_SLA[0] in text
    file.write_text(text.replace(*TAPE_SLA) + LIBRARY)


def _expected(rule: dict[str, object], host: str, source: str) -> dict[str, object]:
    """The alert promtool must see for (host, source): the rule's labels and its annotations
    with the label templates filled in."""
    labels = dict(rule["labels"])  # type: ignore[call-overload]
    annotations = {
        k: str(v).replace("{{ $labels.source }}", source).replace("{{ $labels.host }}", host)
        for k, v in dict(rule["annotations"]).items()
    }  # type: ignore[call-overload]
    return {"exp_labels": {"host": host, "source": source, **labels}, "exp_annotations": annotations}


def test_retention_prune_and_tape_rules_check_and_behave(quickstart: Path, tmp_path: Path) -> None:
    """Limits of the quickstart's SLA (with a weekly tape copy): out of retention when a prune left
    a point older than 14d + 1.5 fulls (1,339,200 s); prune overdue after 1.5 days (129,600 s);
    tape copy overdue after 1.5 weeks (907,200 s), or with points that old and no copy at all."""
    import yaml

    assert PROMTOOL is not None
    _members(quickstart)
    _with_tape(quickstart)
    rules_file = tmp_path / "rules.yml"
    run_cli(quickstart, "alerts", "--out", str(rules_file))
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (group,) = yaml.safe_load(rules_file.read_text())["groups"]
    rule = {r["alert"]: r for r in group["rules"]}
    assert "1339200" in rule["ProtectctlOutOfRetention"]["expr"]
    assert "129600" in rule["ProtectctlPruneOverdue"]["expr"]
    assert "907200" in rule["ProtectctlTapeCopyOverdue"]["expr"]

    def series(name: str, source: str, values: str, host: str = "local") -> dict[str, str]:
        return {"series": f'{name}{{host="{host}",source="{source}"}}', "values": values}

    home, other = "docs/home", "docs/other"
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1h",
        "tests": [
            {
                "interval": "1h",
                "input_series": [
                    # both pruned at t=0 only; home's oldest point is 100 s past the limit, other's within it
                    series("protectctl_last_prune_timestamp_seconds", home, "0x300"),
                    series("protectctl_last_prune_timestamp_seconds", other, "0x300"),
                    series("protectctl_oldest_point_timestamp_seconds", home, "-1339300x300"),
                    series("protectctl_oldest_point_timestamp_seconds", other, "-1000000x300"),
                    # home copied to tape at t=0; other never (and its points are older than 907,200 s)
                    series("protectctl_last_tape_copy_timestamp_seconds", home, "0x300"),
                    series("protectctl_first_point_timestamp_seconds", home, "-1000000x300"),
                    series("protectctl_first_point_timestamp_seconds", other, "-1000000x300"),
                    # home on a second host: points for 200,000 s, never pruned, never copied
                    series("protectctl_first_point_timestamp_seconds", home, "-200000x300", host="fresh"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "1h",
                        "alertname": "ProtectctlOutOfRetention",
                        "exp_alerts": [_expected(rule["ProtectctlOutOfRetention"], "local", home)],
                    },
                    {
                        "eval_time": "35h",
                        "alertname": "ProtectctlPruneOverdue",
                        "exp_alerts": [_expected(rule["ProtectctlPruneOverdue"], "fresh", home)],
                    },
                    {
                        "eval_time": "38h",
                        "alertname": "ProtectctlPruneOverdue",
                        "exp_alerts": [_expected(rule["ProtectctlPruneOverdue"], "local", s) for s in (home, other)]
                        + [_expected(rule["ProtectctlPruneOverdue"], "fresh", home)],
                    },
                    {
                        "eval_time": "2h",
                        "alertname": "ProtectctlTapeCopyOverdue",
                        "exp_alerts": [_expected(rule["ProtectctlTapeCopyOverdue"], "local", other)],
                    },
                    {
                        "eval_time": "254h",
                        "alertname": "ProtectctlTapeCopyOverdue",
                        "exp_alerts": [_expected(rule["ProtectctlTapeCopyOverdue"], "local", s) for s in (home, other)]
                        + [_expected(rule["ProtectctlTapeCopyOverdue"], "fresh", home)],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    test = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_prune_and_tape_runs_record_what_the_alerts_read(quickstart: Path) -> None:
    """The facts behind those rules, from real jobs (in-process: the CLI adds only start-up time
    here): exact values in the agent's textfile, which promtool accepts."""
    from datetime import UTC, datetime

    from protectctl import api
    from protectctl.agent.status import _number

    _with_tape(quickstart)
    api.apply(quickstart, confirm=lambda _plan: True)
    (backup,) = api.run_backup(quickstart, "sync", "docs", None, agent_config=None, progress=None)
    assert backup.ok
    api.tape_label(quickstart, 1, "monthly")
    before = datetime.now(UTC).timestamp()
    api.prune(quickstart, None, agent_config=None, dry_run=False)
    api.run_tape(quickstart, "docs", None)
    after = datetime.now(UTC).timestamp()
    (point,) = api.list_points(quickstart, "docs/home", agent_config=None).points
    (metrics,) = (quickstart / ".protectctl" / "root").rglob("protectctl.prom")
    text = metrics.read_text()
    values = {
        line.split("{")[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("protectctl_") and 'source="docs/home"' in line
    }
    assert values["protectctl_points"] == "1"
    assert values["protectctl_oldest_point_timestamp_seconds"] == _number(point.time.timestamp())
    assert before <= float(values["protectctl_last_prune_timestamp_seconds"]) <= after
    assert before <= float(values["protectctl_last_tape_copy_timestamp_seconds"]) <= after
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
