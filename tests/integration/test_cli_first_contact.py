"""First contact with the CLI: what a new user meets before any backup (issue 11, "smaller, all seen")."""

from __future__ import annotations

import json
import os
import pty
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_argv, cli_env, run_cli


def _edit(directory: Path, old: str, new: str) -> None:
    file = directory / "protect.yaml"
    text = file.read_text()
    assert old in text, old
    file.write_text(text.replace(old, new))


def test_apply_asks_on_the_terminal_even_with_stdout_piped_and_no_exits_1(quickstart: Path) -> None:
    """`apply | tee log` asks (stdin is the terminal); answering anything but yes exits 1, like Terraform."""
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen(
            cli_argv(quickstart, "apply"),
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        os.write(leader, b"no\n")
        out, err = child.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert child.returncode == 1, err
    assert "Only 'yes' will be accepted" in err and "Apply cancelled." in err
    assert "Traceback" not in err and "stdin is not a terminal" not in err
    assert not (quickstart / ".protectctl" / "state.json").exists()  # nothing applied


def test_interrupted_sync_says_what_was_left_and_how_to_go_on(quickstart: Path) -> None:
    """SIGINT in the middle of a sync (sent by the group's own pre script: deterministic)."""
    pre = "  scripts: {pre: \"/bin/sh -c 'kill -INT $PPID'\"}"
    _edit(quickstart, "  changeRate: 10%/day", f"  changeRate: 10%/day\n{pre}")
    run_cli(quickstart, "apply", "--auto-approve")
    proc = run_cli(quickstart, "-q", "run", "sync", "docs", expect=130)
    assert "Interrupted: the sync stopped before its recovery point was saved" in proc.stderr
    assert "protectctl run sync docs" in proc.stderr
    _edit(quickstart, f"{pre}\n", "")
    run_cli(quickstart, "run", "sync", "docs")  # and the next run completes


def test_version_short_flag_no_color_and_verbose(quickstart: Path) -> None:
    assert run_cli(None, "-V").stdout.startswith("protectctl ")
    env = {k: v for k, v in cli_env().items() if k != "NO_COLOR"}
    proc = run_cli(quickstart, "--no-color", "-v", "validate", env=env)
    assert "\x1b[" not in proc.stdout + proc.stderr


def test_state_show_json(quickstart: Path) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    for args in ((), ("--json",)):
        doc = json.loads(run_cli(quickstart, "state", "show", "storage.primary", *args).stdout)
        assert doc["format_version"] == "1.0" and doc["address"] == "storage.primary" and doc["kind"] == "storage"


def test_env_passphrase_plans_no_generate(quickstart: Path) -> None:
    """`generate` applies only to file passphrases: an env key's plan must not promise one."""
    _edit(quickstart, "passphrase: {file: ./.protectctl/passphrase}", "passphrase: {env: QS_PASSPHRASE}")
    doc = json.loads(run_cli(quickstart, "plan", "--json", env=cli_env({"QS_PASSPHRASE": "x" * 20})).stdout)
    (key,) = [c for c in doc["changes"] if c["address"] == "key.repo-key"]
    assert "generate" not in json.dumps(key)


def test_help_never_cuts_a_summary_and_completion_is_offered() -> None:
    out = run_cli(None, "--help").stdout
    commands = out.split("Commands:", 1)[1]
    assert "every error with" in commands and "file:line:col." in commands and "..." not in commands
    assert "--install-completion" in out
    # --show-completion names the shell it is run from (typer asks shellingham, which walks the
    # parent processes): run it from bash, as a user does, not from whatever started pytest
    # (`; true` keeps bash from exec'ing it and leaving the process tree)
    line = " ".join(shlex.quote(a) for a in cli_argv(None, "--show-completion")) + "; true"
    shown = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert shown.returncode == 0 and "complete" in shown.stdout and "_PROTECTCTL_COMPLETE" in shown.stdout, shown


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (apt-get install groff-base)")
def test_manpage_is_valid_roff_with_every_command(tmp_path: Path) -> None:
    page = tmp_path / "protectctl.1"
    page.write_text(run_cli(None, "manpage").stdout)
    check = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    text = page.read_text()
    for command in ("protectctl validate", "protectctl restore", "protectctl tape list", "protectctl keys export"):
        assert f".SS {command}".replace("-", "\\-") in text


def test_a_missing_source_path_is_named_by_plan_refresh_and_hosts_check(quickstart: Path) -> None:
    """A mistyped `path:` once passed validate, plan and apply and failed at the first sync."""
    _edit(quickstart, "path: ./data", "path: ./datta")
    missing = quickstart / "datta"
    plan = run_cli(quickstart, "plan", "--refresh")
    assert f"source docs/home: {missing} does not exist on host local" in plan.stdout + plan.stderr
    check = run_cli(quickstart, "hosts", "check", expect=None)
    assert check.returncode == 1 and f"BAD sources: docs/home: {missing} does not exist" in check.stdout
    _edit(quickstart, "path: ./datta", "path: ./data")
    check = run_cli(quickstart, "hosts", "check", "--json", expect=None)
    (host,) = json.loads(check.stdout)["hosts"]
    assert {"check": "sources", "ok": True, "detail": "1 source path(s) present"} in host["checks"]


def test_a_missing_source_path_on_an_ssh_host(tmp_path: Path) -> None:
    from tests.integration.sshd import SshdServer, keygen, one_member_docs, sshd_available

    if (why := sshd_available()) is not None:
        pytest.skip(why)
    key = tmp_path / "client_ed25519"
    server = SshdServer("s1", "127.0.0.41", tmp_path / "s1", keygen(key, "protectctl-control"))
    server.start()
    try:
        not_a_dir = tmp_path / "a-file"
        not_a_dir.write_text("x")
        policy = tmp_path / "policy"
        policy.mkdir()
        docs = one_member_docs("repo", "type: local\npath: ./repo", "s1", tmp_path / "gone")
        docs += f"    - {{name: n, host: s1, filesystem: {{path: {not_a_dir}}}}}\n"
        (policy / "policy.yaml").write_text(server.host_doc(identity_file=key) + "---\n" + docs)
        plan = run_cli(policy, "plan", "--refresh")
        out = plan.stdout + plan.stderr
        assert f"source g/m: {tmp_path / 'gone'} does not exist on host s1" in out
        assert f"source g/n: {not_a_dir} is not a directory on host s1" in out
        check = run_cli(policy, "hosts", "check", "--json", expect=None)
        (host,) = json.loads(check.stdout)["hosts"]
        sources = next(c for c in host["checks"] if c["check"] == "sources")
        assert not sources["ok"] and f"g/m: {tmp_path / 'gone'} does not exist" in sources["detail"]
    finally:
        server.stop()
