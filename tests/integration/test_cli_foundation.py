"""Issue 2's "Done when", end to end: the real CLI as a subprocess on a copy of examples/quickstart.

Every run asserts its exit code and that no traceback reached stderr (see conftest.run_cli).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.bench_plan import generate_policy
from tests.conftest import cli_argv, cli_env, run_cli

UNITS = "etc/systemd/system"
JOBS = ("sync", "full", "prune", "verify")


def root_of(directory: Path) -> Path:
    return directory / ".protectctl" / "root"


def edit(directory: Path, old: str, new: str) -> None:
    file = directory / "protect.yaml"
    text = file.read_text()
    assert old in text, old
    file.write_text(text.replace(old, new))


def plan_json(directory: Path, *args: str, expect: int = 0) -> dict[str, object]:
    doc = json.loads(run_cli(directory, "plan", "--json", *args, expect=expect).stdout)
    assert isinstance(doc, dict)
    return doc


def changes(doc: dict[str, object]) -> list[tuple[str, str]]:
    return [(c["address"], c["action"]) for c in doc["changes"]]  # type: ignore[index,union-attr]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def applied(quickstart: Path) -> Path:
    run_cli(quickstart, "apply", "--auto-approve")
    return quickstart


def test_validate(quickstart: Path) -> None:
    proc = run_cli(quickstart, "validate")
    assert "The policy is valid: 5 document(s)" in proc.stdout
    doc = json.loads(run_cli(quickstart, "validate", "--json").stdout)
    assert doc["valid"] is True and doc["format_version"] == "1.0"


def test_validate_from_inside_the_directory(quickstart: Path) -> None:
    proc = subprocess.run(
        cli_argv(None, "validate"), cwd=quickstart, capture_output=True, text=True, env=cli_env(), check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_usage_error_exits_1(quickstart: Path) -> None:
    proc = run_cli(quickstart, "plan", "--no-such-flag", expect=1)
    assert "No such option" in proc.stderr


def test_quickstart_lifecycle(quickstart: Path) -> None:
    root = root_of(quickstart)
    proc = run_cli(quickstart, "plan", "--detailed-exitcode", expect=2)
    assert "Plan: 10 to add, 0 to change, 0 to destroy." in proc.stdout
    assert "10.0 GB moved per full" in proc.stdout and "97 recovery points per snapshot" in proc.stdout
    assert not (quickstart / ".protectctl" / "repo").exists()  # plan has no effects

    proc = run_cli(quickstart, "apply", "--auto-approve")
    assert "Apply complete: 10 applied, 0 failed, 0 skipped." in proc.stdout
    passphrase = quickstart / ".protectctl" / "passphrase"
    assert mode(passphrase) == 0o600 and len(passphrase.read_text().strip()) >= 32
    assert "generated a new passphrase" in proc.stderr and "keep a copy" in proc.stderr
    assert passphrase.read_text().strip() not in proc.stdout + proc.stderr
    assert (quickstart / ".protectctl" / "repo" / "config").exists()
    agent = root / "etc/protectctl/agent.yaml"
    assert mode(agent) == 0o600 and "kind: AgentConfig" in agent.read_text()
    source = root / "etc/protectctl/sources/docs--home.yaml"
    assert mode(source) == 0o600
    for job in JOBS:
        timer = (root / UNITS / f"protectctl-docs-home-{job}.timer").read_text()
        assert "OnCalendar=" in timer and "Persistent=true" in timer
        assert (root / UNITS / f"protectctl-docs-home-{job}.service").exists()
    assert "RandomizedDelaySec=" in (root / UNITS / "protectctl-docs-home-sync.timer").read_text()
    state_text = (quickstart / ".protectctl/state.json").read_text()
    assert passphrase.read_text().strip() not in state_text  # secrets never reach the state

    proc = run_cli(quickstart, "plan", "--detailed-exitcode")
    assert "No changes" in proc.stdout
    proc = run_cli(quickstart, "apply", "--auto-approve")
    assert "No changes" in proc.stdout

    # the SLA's sync changes: exactly its schedule and the source's interval, nothing else
    edit(quickstart, "sync: every 15m", "sync: every 30m")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    doc = plan_json(quickstart, "--detailed-exitcode", expect=2)
    assert changes(doc) == [("source.docs/home", "update"), ("schedule.docs/home/sync", "update")]
    attrs = {
        c["address"]: [(a["path"], a["before"], a["after"]) for a in c["attributes"]]  # type: ignore
        for c in doc["changes"]
    }  # type: ignore[union-attr]
    assert attrs["schedule.docs/home/sync"] == [("schedule", "every 15m", "every 30m")]
    assert attrs["source.docs/home"] == [("sync_interval_s", 900, 1800)]
    text = run_cli(quickstart, "plan", expect=0).stdout
    assert "Plan: 0 to add, 2 to change, 0 to destroy." in text
    assert '~ schedule: "every 15m" -> "every 30m"' in text

    run_cli(quickstart, "apply", "--auto-approve")
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(root)) for p in after if before.get(p) != after[p])
    # updates rewrite only what changed
    assert changed == ["etc/protectctl/sources/docs--home.yaml", f"{UNITS}/protectctl-docs-home-sync.timer"]
    assert "OnCalendar=*-*-* *:00,30:00" in after[root / UNITS / "protectctl-docs-home-sync.timer"].decode()
    run_cli(quickstart, "plan", "--detailed-exitcode")

    # destroy removes what apply made, keeps the repository (and the passphrase it needs)
    proc = run_cli(quickstart, "destroy", "--auto-approve")
    assert "Apply complete: 10 applied" in proc.stdout
    assert not [p for p in root.rglob("*") if p.is_file()]
    assert (quickstart / ".protectctl" / "repo" / "config").exists() and passphrase.exists()
    assert "its data is kept" in proc.stderr
    assert json.loads((quickstart / ".protectctl/state.json").read_text())["resources"] == {}
    run_cli(quickstart, "plan", "--detailed-exitcode", expect=2)


def test_saved_plan_refused_after_another_apply(applied: Path) -> None:
    edit(applied, "sync: every 15m", "sync: every 30m")
    plan_file = applied / "plan.json"
    run_cli(applied, "plan", "--out", str(plan_file), "--detailed-exitcode", expect=2)
    saved = json.loads(plan_file.read_text())
    assert saved["format_version"] == "1.0" and saved["serial"] == 10 and saved["lineage"]
    run_cli(applied, "apply", "--auto-approve")
    proc = run_cli(applied, "apply", str(plan_file), expect=1)
    assert "the state changed since this plan was made (plan serial 10, state serial 12)" in proc.stderr
    assert "plan --out" in proc.stderr


def test_saved_plan_applies_exactly(applied: Path) -> None:
    edit(applied, "sync: every 15m", "sync: every 30m")
    plan_file = applied / "plan.json"
    run_cli(applied, "plan", "--out", str(plan_file))
    edit(applied, "sync: every 30m", "sync: every 1h")  # a later edit is not applied behind the user's back
    proc = run_cli(applied, "apply", str(plan_file))
    assert "Apply complete: 2 applied" in proc.stdout
    timer = (root_of(applied) / UNITS / "protectctl-docs-home-sync.timer").read_text()
    assert "*:00,30:00" in timer
    doc = plan_json(applied, "--detailed-exitcode", expect=2)
    assert changes(doc) == [("source.docs/home", "update"), ("schedule.docs/home/sync", "update")]


def test_apply_without_tty_refuses(quickstart: Path) -> None:
    proc = run_cli(quickstart, "apply", expect=1)
    assert "refusing to apply without confirmation: stdin is not a terminal" in proc.stderr
    assert "--auto-approve" in proc.stderr
    assert not (quickstart / ".protectctl" / "root").exists()
    run_cli(quickstart, "destroy", expect=0)  # nothing to destroy: no question asked


def test_not_a_plan_file(quickstart: Path) -> None:
    (quickstart / "bogus.json").write_text("{}")
    proc = run_cli(quickstart, "apply", str(quickstart / "bogus.json"), expect=1)
    assert "is not a protectctl plan file" in proc.stderr
    proc = run_cli(quickstart, "apply", str(quickstart / "missing.json"), expect=1)
    assert "reading plan" in proc.stderr


def test_markdown_and_json_formats(quickstart: Path) -> None:
    md = run_cli(quickstart, "plan", "--format", "markdown", "--detailed-exitcode", expect=2).stdout
    assert md.startswith("### protectctl plan") and "| + | `source.docs/home` | create | new |" in md
    doc = plan_json(quickstart)
    assert doc["format_version"] == "1.0" and len(doc["changes"]) == 10  # type: ignore[arg-type]
    assert json.loads(run_cli(quickstart, "plan", "--format", "json").stdout)["format_version"] == "1.0"


def test_plan_json_is_byte_identical_for_the_same_inputs(applied: Path) -> None:
    edit(applied, "sync: every 15m", "sync: every 30m")
    first, second = (json.loads(run_cli(applied, "plan", "--json").stdout) for _ in range(2))
    first.pop("created_at"), second.pop("created_at")  # the only input that differs: now
    assert json.dumps(first) == json.dumps(second)


def test_graph(quickstart: Path) -> None:
    dot = run_cli(quickstart, "graph").stdout
    assert dot.startswith("digraph protectctl {") and dot.rstrip().endswith("}")
    assert '"agent.local" -> "source.docs/home";' in dot
    assert '"source.docs/home" -> "schedule.docs/home/sync";' in dot


def test_state_commands(applied: Path) -> None:
    listed = run_cli(applied, "state", "list").stdout.split()
    assert "source.docs/home" in listed and len(listed) == 10
    doc = json.loads(run_cli(applied, "state", "list", "--json").stdout)
    assert doc["serial"] == 10 and sorted(doc["resources"]) == sorted(listed)
    shown = json.loads(run_cli(applied, "state", "show", "schedule.docs/home/sync").stdout)
    assert shown["inputs"]["schedule"] == "every 15m" and shown["kind"] == "schedule"
    run_cli(applied, "state", "show", "source.nope/x", expect=1)
    proc = run_cli(applied, "state", "rm", "schedule.docs/home/sync")
    assert "removed schedule.docs/home/sync" in proc.stderr
    assert changes(plan_json(applied)) == [("schedule.docs/home/sync", "create")]
    assert "not in the state" in run_cli(applied, "state", "rm", "schedule.docs/home/sync", expect=1).stderr
    assert "no lock" in run_cli(applied, "state", "unlock").stderr  # released normally: nothing stale


HOLDER = """
import sys
from pathlib import Path
from protectctl.state.local import LocalStateBackend
with LocalStateBackend(Path(sys.argv[1])).lock("apply --from-test", 0):
    print("locked", flush=True)
    sys.stdin.readline()  # held until the test writes a line (or closes stdin)
"""


def hold_lock(directory: Path) -> subprocess.Popen[str]:
    """A process holding the state lock until `release(holder)`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory / ".protectctl/state.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(60) == 0


def test_state_lock(quickstart: Path) -> None:
    holder = hold_lock(quickstart)
    try:
        proc = run_cli(quickstart, "plan", expect=1)
        assert (
            f"the state is locked by pid {holder.pid} on {socket.gethostname()} (apply --from-test, since"
            in proc.stderr
        )
        assert "--lock-timeout" in proc.stderr
        run_cli(quickstart, "apply", "--auto-approve", expect=1)
        assert "held by a live process" in run_cli(quickstart, "state", "unlock", expect=1).stderr
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the flock with its holder; the record it left is stale
    assert "apply --from-test" in run_cli(quickstart, "state", "unlock").stderr
    run_cli(quickstart, "plan")


def test_lock_timeout_waits(quickstart: Path) -> None:
    """`--lock-timeout` waits for the holder instead of failing (the waiting itself is proven by
    events in tests/unit/test_state.py; here: the CLI wiring, without any fixed sleep)."""
    holder = hold_lock(quickstart)
    try:
        waiter = subprocess.Popen(
            cli_argv(quickstart, "plan", "--lock-timeout", "60s", "--detailed-exitcode"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert holder.poll() is None  # still held when the waiter was started
    finally:
        release(holder)
    _, stderr = waiter.communicate(timeout=120)
    assert waiter.returncode == 2, stderr  # planned (changes), not refused as locked
    proc = run_cli(quickstart, "plan", "--lock-timeout", "soon", expect=1)
    assert "--lock-timeout" in proc.stderr


def test_cron_scheduler(quickstart: Path) -> None:
    edit(quickstart, "scheduler: systemd", "scheduler: cron")
    run_cli(quickstart, "apply", "--auto-approve")
    root = root_of(quickstart)
    for job in JOBS:
        text = (root / "etc/cron.d" / f"protectctl-docs-home-{job}").read_text()
        assert f"run {job} docs --member home" in text
    assert "*/15 * * * * root" in (root / "etc/cron.d/protectctl-docs-home-sync").read_text()
    assert not (root / UNITS).exists()
    # and back: the cron files go, the units come
    edit(quickstart, "scheduler: cron", "scheduler: systemd")
    doc = plan_json(quickstart, "--detailed-exitcode", expect=2)
    assert {a for a, action in changes(doc)} >= {f"schedule.docs/home/{j}" for j in JOBS}
    run_cli(quickstart, "apply", "--auto-approve")
    assert not list((root / "etc").glob("cron.d/*"))
    assert len(list((root / UNITS).iterdir())) == 8
    run_cli(quickstart, "plan", "--detailed-exitcode")


def test_removing_a_member_keeps_its_points(applied: Path) -> None:
    edit(applied, "    - name: home", "    - name: house")
    proc = run_cli(applied, "plan", "--detailed-exitcode", expect=2)
    assert "  - source.docs/home" in proc.stdout and "recovery points are kept" in proc.stdout
    run_cli(applied, "apply", "--auto-approve")
    root = root_of(applied)
    assert not (root / UNITS / "protectctl-docs-home-sync.timer").exists()
    assert (root / UNITS / "protectctl-docs-house-sync.timer").exists()
    assert (applied / ".protectctl" / "repo" / "config").exists()


def test_state_location_from_settings(quickstart: Path) -> None:
    (quickstart / "settings.yaml").write_text(
        "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {name: settings}\nspec:\n"
        "  state: {path: ../shared-state/protectctl.json}\n"
    )
    run_cli(quickstart, "apply", "--auto-approve")
    assert (quickstart.parent / "shared-state" / "protectctl.json").exists()
    assert not (quickstart / ".protectctl" / "state.json").exists()
    run_cli(quickstart, "plan", "--detailed-exitcode")


def test_policy_errors_never_traceback(tmp_path: Path) -> None:
    run_cli(tmp_path / "missing", "validate", expect=1)
    assert "no policy documents" in run_cli(tmp_path, "plan", expect=1).stderr
    (tmp_path / "p.yaml").write_bytes(b"\xff\xfe bad")
    proc = run_cli(tmp_path, "plan", "--json", expect=1)
    err = json.loads(proc.stderr)
    assert err["error"]["type"] == "PolicyError" and err["error"]["diagnostics"][0]["line"] == 1


# --- kill test -----------------------------------------------------------------------


def _wait_for_partial_state(state_file: Path, proc: subprocess.Popen[bytes], minimum: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            count = len(json.loads(state_file.read_text())["resources"])
        except (FileNotFoundError, ValueError):
            count = 0
        if count >= minimum:
            return count
        time.sleep(0.005)
    raise AssertionError(f"apply ended (rc={proc.poll()}) before {minimum} resources were in the state")


def test_kill_apply_midway(tmp_path: Path) -> None:
    directory = generate_policy(tmp_path / "fleet", groups=30, members=1)
    total = len(changes(plan_json(directory)))
    state_file = directory / ".protectctl/state.json"
    proc = subprocess.Popen(
        cli_argv(directory, "apply", "--auto-approve", "--parallelism", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        _wait_for_partial_state(state_file, proc, minimum=20)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "apply finished before it could be killed"
    recorded = set(json.loads(state_file.read_text())["resources"])  # always valid JSON
    assert 20 <= len(recorded) < total

    doc = plan_json(directory, "--detailed-exitcode", expect=2)
    remaining = changes(doc)
    assert {a for a, _ in remaining}.isdisjoint(recorded)
    assert len(remaining) == total - len(recorded)
    assert {action for _, action in remaining} == {"create"}

    run_cli(directory, "apply", "--auto-approve", timeout=120)
    assert "No changes" in run_cli(directory, "plan", "--detailed-exitcode").stdout
