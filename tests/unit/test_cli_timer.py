"""The typer-free `run sync|full` (cli/timer.py): it takes exactly the command lines the typer app
would read the same way, and leaves every other one to the typer app; `_command_for` builds only
the module of a known command word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protectctl.cli.main import _command_for
from protectctl.cli.timer import TimerJob, timer_job

AC = "/etc/protectctl/agent.yaml"

TAKEN = [
    ["--agent-config", AC, "run", "sync", "docs", "--member", "home"],  # what apply writes
    ["--agent-config", AC, "run", "full", "docs", "--member", "home"],
    ["--json", "--agent-config", AC, "run", "sync", "bench", "--member", "data"],  # the benchmarks
    ["--agent-config=" + AC, "-q", "run", "sync", "docs"],
    ["--quiet", "--agent-config", AC, "run", "--member=home", "sync", "docs", "--json"],
    ["--agent-config", AC, "run", "-m", "home", "sync", "docs"],
    ["--agent-config", "run", "run", "sync", "run"],  # names that are words of the grammar
    ["run", "sync", "docs"],  # the policy path
    ["-C", "/srv/p", "--json", "run", "full", "docs", "-m", "home"],
    ["--directory=/srv/p", "run", "sync", "docs"],
    ["-C", "/srv/p", "--agent-config", AC, "run", "sync", "docs"],  # the agent config wins, as in typer
]

LEFT = [
    [],
    ["--version"],
    ["-C", "/srv/p", "-C", "/srv/q", "run", "sync", "docs"],
    ["-C/srv/p", "run", "sync", "docs"],
    ["-C", "", "run", "sync", "docs"],
    ["--agent-config", AC, "run", "prune", "docs"],
    ["--agent-config", AC, "run", "tape", "docs"],
    ["--agent-config", AC, "run", "Sync", "docs"],
    ["--agent-config", AC, "run", "sync"],
    ["--agent-config", AC, "run", "sync", "docs", "extra"],
    ["--agent-config", AC, "run", "sync", "docs", "--help"],
    ["--agent-config", AC, "run", "sync", "docs", "--no-express"],
    ["--agent-config", AC, "run", "sync", "docs", "--member"],
    ["--agent-config", AC, "run", "sync", "docs", "--member", "a", "--member", "b"],
    ["--agent-config", AC, "run", "sync", "docs", "--member", "-x"],
    ["--agent-config", AC, "run", "sync", "docs", "--", "x"],
    ["--agent-config", AC, "--agent-config", AC, "run", "sync", "docs"],
    ["--agent-config", AC, "--debug", "run", "sync", "docs"],
    ["--agent-config", AC, "-v", "run", "sync", "docs"],
    ["--agent-config", AC, "--no-color", "run", "sync", "docs"],
    ["--agent-config", AC, "-q", "-q", "run", "sync", "docs"],
    ["--agent-config", AC, "run", "sync", "docs", "-q"],  # a root option after `run`: typer's error
    ["--agent-config", AC, "run"],
    ["--agent-config", "", "run", "sync", "docs"],
    ["--agent-config", AC, "points", "list"],
]


@pytest.mark.parametrize("args", TAKEN, ids=lambda a: " ".join(a))
def test_taken_as_the_typer_app_reads_them(args: list[str]) -> None:
    job = timer_job(args, {})
    assert job is not None
    root = _command_for(args)
    ctx = root.make_context("protectctl", list(args))
    run = root.get_command(ctx, "run")
    sub = run.make_context("run", list(ctx.args), parent=ctx)  # the words after `run`
    parsed: dict[str, Any] = {**ctx.params, **{f"run_{k}": v for k, v in sub.params.items()}}
    assert job == TimerJob(
        Path(parsed["agent_config"]) if parsed["agent_config"] is not None else None,
        str(parsed["run_job"]),
        parsed["run_group"],
        parsed["run_member"],
        json_mode=parsed["json_mode"] or parsed["run_json_mode"],
        quiet=parsed["quiet"],
        policy_dir=Path(parsed["directory"]),
    )


@pytest.mark.parametrize("args", LEFT, ids=lambda a: " ".join(a) or "(none)")
def test_everything_else_is_left_to_typer(args: list[str]) -> None:
    assert timer_job(args, {}) is None


def test_the_agent_config_from_the_environment_and_completion_left_alone() -> None:
    args = ["run", "sync", "docs", "--member", "home"]
    assert timer_job(args, {"PROTECTCTL_AGENT_CONFIG": AC}) == TimerJob(Path(AC), "sync", "docs", "home")
    assert timer_job(args, {"PROTECTCTL_AGENT_CONFIG": ""}) == TimerJob(None, "sync", "docs", "home")
    with_flag = ["--agent-config", "/other.yaml", *args]
    assert timer_job(with_flag, {"PROTECTCTL_AGENT_CONFIG": AC}) == TimerJob(
        Path("/other.yaml"), "sync", "docs", "home"
    )
    assert timer_job(with_flag, {"_PROTECTCTL_COMPLETE": "bash_complete"}) is None


def test_each_command_word_builds_the_module_that_registers_it() -> None:
    """`_command_for` builds only the module of a known command word; every command of the full
    app must be known (or be `manpage`, which reads the whole app) and found where it is said."""
    from typer.main import get_command

    from protectctl.cli.main import COMMAND_MODULES, _register, app

    _register()
    full = get_command(app)
    names = set(full.list_commands(full.make_context("protectctl", ["--help"], resilient_parsing=True)))
    assert names - set(COMMAND_MODULES) == {"manpage"}
    assert set(COMMAND_MODULES) <= names
    for word in COMMAND_MODULES:
        light = _command_for([word])
        assert word in light.list_commands(light.make_context("protectctl", [word], resilient_parsing=True))
    assert _command_for(["manpage"]) is not _command_for(["plan"])
