"""`protectctl alerts`: rules derived from the SLAs, checked by `promtool check rules` and
exercised by `promtool test rules` against series shaped like the agent's textfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package "
                                "`prometheus`; .ci/run installs it)")

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


MISSED_SYNC = ("'SLA tier1 wants a good recovery point every 15m; the newest is older than 22m30s "
               "(or there is none). `protectctl status` says why.'")


def _members(quickstart: Path) -> None:
    file = quickstart / "protect.yaml"
    text = file.read_text()
    member = "    - name: home\n      host: local\n"
    assert member in text
    file.write_text(text.replace(member, "    - name: other\n      host: local\n      filesystem: {path: ./other}\n"
                                         + member))


def test_rules_check_and_behave(quickstart: Path, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    _members(quickstart)
    rules = tmp_path / "rules.yml"
    run_cli(quickstart, "alerts", "--out", str(rules))
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "tests.yml").write_text(TESTS.replace("@MISSED_SYNC@", MISSED_SYNC))
    test = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
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

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "examples/monitoring/grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    named = {m for e in exprs for m in re.findall(r"\bprotectctl_[a-z_]+", e)}
    assert named and named <= set(METRICS), named - set(METRICS)
