"""Faults from the field, through the real CLI: a damaged state, an emptied policy, files that
are no policy files, values no OS call can take. Each once did harm (see the comments)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

STATE = Path(".protectctl/state.json")


def _policy_without_groups(quickstart: Path) -> None:
    """The quick start cut after its SLA: hosts, key and storage stay, every group is gone."""
    text = (quickstart / "protect.yaml").read_text(encoding="utf-8")
    (quickstart / "protect.yaml").write_text(text[: text.index("kind: ProtectionGroup")].rsplit("---", 1)[0])


# -- 4: a state file holding `{}` ----------------------------------------------------------------


def test_a_state_file_holding_braces_is_damaged_and_left_alone(quickstart: Path) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    (quickstart / STATE).write_text("{}")  # once: plan offered to create everything, apply rewrote it
    proc = run_cli(quickstart, "plan", expect=1)
    assert "is damaged or not a protectctl state (no format_version, lineage, serial, resources)" in proc.stderr
    assert "state.json.backup" in proc.stderr
    run_cli(quickstart, "apply", "--auto-approve", expect=1)
    assert (quickstart / STATE).read_text() == "{}"


# -- 5: an emptied policy ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "---\n" * 10_000, "# all commented out\n"])
def test_a_policy_without_documents_is_an_error(quickstart: Path, text: str) -> None:
    (quickstart / "protect.yaml").write_text(text)  # once: "valid: 0 document(s)"
    proc = run_cli(quickstart, "validate", expect=1)
    assert "the policy has no documents: 1 file(s)" in proc.stderr
    assert "protectctl destroy" in proc.stderr
    run_cli(quickstart, "plan", expect=1)


def test_apply_refuses_a_plan_that_removes_every_schedule(quickstart: Path) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    timers = quickstart / ".protectctl/root/etc/systemd/system"
    before = sorted(p.name for p in timers.iterdir())
    assert any(name.endswith(".timer") for name in before)
    _policy_without_groups(quickstart)
    plan = run_cli(quickstart, "plan")
    assert "Warning: this plan removes all 4 schedule(s) and creates none" in plan.stdout
    assert "--allow-remove-all" in plan.stdout
    proc = run_cli(quickstart, "apply", "--auto-approve", expect=1)
    assert "refusing to apply: this plan removes all 4 schedule(s) and creates none" in proc.stderr
    assert "protectctl destroy" in proc.stderr and "--allow-remove-all" in proc.stderr
    assert sorted(p.name for p in timers.iterdir()) == before  # nothing was touched
    # a saved plan is held to the same rule
    run_cli(quickstart, "plan", "--out", str(quickstart / "plan.json"))
    run_cli(quickstart, "apply", str(quickstart / "plan.json"), expect=1)
    run_cli(quickstart, "apply", "--auto-approve", "--allow-remove-all")
    assert not timers.exists() or not any(name.endswith(".timer") for name in os.listdir(timers))


def test_destroy_needs_no_policy_documents(quickstart: Path) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    (quickstart / "protect.yaml").write_text("")
    run_cli(quickstart, "plan", "--destroy")
    run_cli(quickstart, "destroy", "--auto-approve")
    state = json.loads((quickstart / STATE).read_text())
    assert not [a for a in state["resources"] if a.startswith("schedule.")]


# -- 7: files that are no policy files, values no OS call can take --------------------------------


def _only_error(quickstart: Path, *args: str) -> str:
    proc = run_cli(quickstart, "validate", *args, expect=1, timeout=30)
    return proc.stderr


def test_a_fifo_named_like_a_policy_file_is_refused_not_waited_on(quickstart: Path) -> None:
    os.mkfifo(quickstart / "more.yaml")  # once: the loader waited for a writer, forever
    assert "more.yaml:1:1: error: cannot read policy file: not a regular file (a FIFO)" in _only_error(quickstart)


def test_a_symlink_to_a_device_is_refused_unread(quickstart: Path) -> None:
    (quickstart / "more.yaml").symlink_to("/dev/zero")  # once: read until MemoryError at 3.8 GB
    assert "not a regular file (a character device)" in _only_error(quickstart)


def test_a_symlink_to_a_regular_policy_file_is_read(quickstart: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.yaml"
    (quickstart / "protect.yaml").rename(real)
    (quickstart / "protect.yaml").symlink_to(real)
    run_cli(quickstart, "validate")


def test_a_policy_file_over_the_size_cap_is_refused_unread(quickstart: Path) -> None:
    from protectctl.policy.load import MAX_FILE_BYTES

    with (quickstart / "big.yaml").open("wb") as out:
        out.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    assert "more than the 16 MiB a policy file may hold" in _only_error(quickstart)


def test_an_unsupported_yaml_version_is_located(quickstart: Path) -> None:
    (quickstart / "more.yaml").write_text("# header\n%YAML 1.3\n---\na: 1\n")  # once: an AssertionError
    assert "more.yaml:2:1: error: unsupported YAML version '1.3'" in _only_error(quickstart)


def test_a_huge_value_is_not_echoed_whole(quickstart: Path) -> None:
    name = "x" * 1_000_000  # once: printed whole (10 MB then); 1 MB is 500x the bound below
    (quickstart / "more.yaml").write_text(
        f"apiVersion: protectctl/v1\nkind: Host\nmetadata: {{name: {name}X}}\nspec: {{address: local}}\n"
    )
    stderr = _only_error(quickstart)
    assert "is not a valid name" in stderr and "characters cut" in stderr
    assert len(stderr) < 2000
    assert len(run_cli(quickstart, "--json", "validate", expect=1).stderr) < 3000


@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\u0000"])
def test_a_member_path_with_a_nul_is_refused_by_validate(quickstart: Path, escape: str) -> None:
    text = (quickstart / "protect.yaml").read_text(encoding="utf-8")
    (quickstart / "protect.yaml").write_text(text.replace("{path: ./data,", f'{{path: "./da{escape}ta",'))
    # once: validate, plan and apply passed, and the sync failed with "embedded null byte"
    stderr = _only_error(quickstart)
    assert "`spec.members[0].filesystem.path` contains a NUL character" in stderr
    line = next(i for i, text in enumerate(text.splitlines(), 1) if "{path: ./data," in text)
    assert f"protect.yaml:{line}:26: error" in stderr  # the line and column of the path
    run_cli(quickstart, "apply", "--auto-approve", expect=1)
