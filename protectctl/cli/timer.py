"""`run sync|full` as the timers start it, without typer.

What apply writes into a host's systemd unit or crontab is `protectctl --agent-config PATH run
sync GROUP --member NAME` (plan/resources.py), every 15 minutes on every host. Importing typer
and building even the small `run` app costs ~40 ms of CPU, a fifth of a no-change sync's
(docs/performance.md, "Start-up, round 2"). `timer_job` recognises that command line, with
`--json`, `-q` and `-C DIR` (root or `run` options as the typer app takes them; `-C` for a
`run sync` on the control machine), the agent config given by option or by
PROTECTCTL_AGENT_CONFIG. Any other word (another command or job, `--help`, an option given
twice, a value that looks like an option, shell completion) returns None and the typer app
parses the words as always (tests/unit/test_cli_timer.py compares the two readings). The job
and what it prints are `run`'s own: cli/jobs.py calls `run_backup_command` too. This module
imports only what a sync needs (tests/integration/test_agent_startup.py).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

if TYPE_CHECKING:
    from protectctl.agent.jobs import BackupResult
    from protectctl.agent.sources import BackupFailure, BackupSkipped
    from protectctl.cli.output import Output

INTERRUPTED = 130  # as cli/main.py: the shell's code for SIGINT


@dataclass(frozen=True, slots=True)
class TimerJob:
    """A `run sync|full`, as read from the command line."""

    agent_config: Path | None
    kind: Literal["sync", "full"]
    group: str
    member: str | None
    json_mode: bool = False
    quiet: bool = False
    policy_dir: Path = Path(".")


_ROOT_FLAGS = frozenset({"--json", "-q", "--quiet"})
_ROOT_VALUED = {"--agent-config": "agent_config", "-C": "directory", "--directory": "directory"}


def timer_job(args: Sequence[str], environ: Mapping[str, str]) -> TimerJob | None:
    """The job when `args` is exactly a `run sync|full` this module reads as typer would, else None."""
    if any(k.endswith("_COMPLETE") for k in environ):
        return None  # shell completion: the typer app answers it
    flags: set[str] = set()
    values: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i] != "run":  # root options
        arg = args[i]
        name, eq, attached = arg.partition("=")
        if arg in _ROOT_FLAGS and arg not in flags:
            flags.add(arg)
        elif arg in _ROOT_VALUED and i + 1 < len(args) and _ROOT_VALUED[arg] not in values:
            values[_ROOT_VALUED[arg]] = args[i + 1]
            i += 1
        elif eq and name.startswith("--") and name in _ROOT_VALUED and _ROOT_VALUED[name] not in values:
            values[_ROOT_VALUED[name]] = attached
        else:
            return None
        i += 1
    positional: list[str] = []
    i += 1  # past "run"
    if i > len(args):
        return None
    while i < len(args):
        arg = args[i]
        name, eq, attached = arg.partition("=")
        if arg == "--json" and "run --json" not in flags:
            flags.add("run --json")
        elif arg in ("--member", "-m") and i + 1 < len(args) and "member" not in values:
            values["member"] = args[i + 1]
            i += 1
        elif eq and name == "--member" and "member" not in values:
            values["member"] = attached
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
        i += 1
    if "agent_config" not in values and environ.get("PROTECTCTL_AGENT_CONFIG"):
        values["agent_config"] = environ["PROTECTCTL_AGENT_CONFIG"]
    if len(positional) != 2 or positional[0] not in ("sync", "full"):
        return None
    if any(not v or v.startswith("-") for v in values.values()):
        return None  # typer reads these its own way (an option as a value, an empty path)
    kind: Literal["sync", "full"] = "sync" if positional[0] == "sync" else "full"
    agent_config = values.get("agent_config")
    return TimerJob(
        Path(agent_config) if agent_config is not None else None,
        kind,
        positional[1],
        values.get("member"),
        json_mode=bool(flags & {"--json", "run --json"}),
        quiet=bool(flags & {"-q", "--quiet"}),
        policy_dir=Path(values.get("directory", ".")),
    )


def run_backup_command(
    output: Output,
    policy_dir: Path,
    agent_config: Path | None,
    kind: Literal["sync", "full"],
    group: str,
    member: str | None,
    options: dict[str, object] | None = None,
) -> bool:
    """`run sync|full`: run the jobs and print their results; False when one failed (exit 1)."""
    from protectctl import api
    from protectctl.cli.interrupt import on_interrupt
    from protectctl.cli.progress import progress_for
    from protectctl.cli.views import backup_json

    again = f"protectctl run {kind} {group}" + (f" --member {member}" if member else "")
    on_interrupt(
        f"the {kind} stopped before its recovery point was saved, so no point was published; the data "
        f"it already stored is kept and reused: run `{again}` again"
    )

    progress = progress_for(json_mode=output.json_mode, quiet=output.quiet)
    results = api.run_backup(
        policy_dir, kind, group, member, agent_config=agent_config, progress=progress, options=options
    )
    if output.json_mode:
        output.document({"format_version": "1.0", "results": [backup_json(r) for r in results]})
    else:
        for r in results:
            output.text(backup_line(r))
    return all(r.ok for r in results)


def backup_line(r: BackupResult | BackupSkipped | BackupFailure) -> str:
    from protectctl.agent.sources import BackupFailure, BackupSkipped
    from protectctl.humanize import human_bytes as size

    def human_bytes(n: int | float | None) -> str:
        return size(n) if n is not None else "-"

    if isinstance(r, BackupSkipped):
        return f"{r.source}: {r.requested_kind} not run here: {r.reason}"
    if isinstance(r, BackupFailure):
        hint = f"\n  hint: {r.hint}" if r.hint else ""
        return f"{r.source}: {r.requested_kind} FAILED: {r.message}{hint}"
    state = "complete" if r.complete else f"INCOMPLETE ({len(r.errors)} file(s) missed)"
    line = (
        f"{r.source}: {r.kind} point {r.point_id[:12]} at {r.time:%Y-%m-%d %H:%M:%S}Z, {state}: "
        f"{r.files:,} files, {human_bytes(r.bytes_total)}, read {human_bytes(r.bytes_read)}, "
        f"stored {human_bytes(r.bytes_added)} new, {r.duration_s:.1f}s"
    )
    extra = [f"  missed: {e}" for e in r.errors[:20]] + [f"  warning: {w}" for w in r.warnings]
    extra += [f"  note: {n}" for n in getattr(r, "notes", ())]
    if r.silent_changes:
        extra.append(f"  {r.silent_changes} file(s) changed without a new mtime (caught by the full)")
    return "\n".join([line, *extra])


def run_timer_job(job: TimerJob) -> NoReturn:
    """Run `job` and exit with `run`'s code; errors reach the user as cli/main.py's `main` shows them."""
    from protectctl.cli.output import Output
    from protectctl.errors import ProtectctlError

    output = Output(json_mode=job.json_mode, quiet=job.quiet)
    try:
        ok = run_backup_command(output, job.policy_dir, job.agent_config, job.kind, job.group, job.member)
    except ProtectctlError as err:
        output.error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        from protectctl.cli.interrupt import interrupt_message

        output.info(interrupt_message(), always=True)  # even under --quiet: the user must know what was left
        sys.exit(INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - as cli/main.py: a bug becomes one line and a log
        from protectctl.cli.main import crash_exit

        crash_exit(err)
    sys.exit(0 if ok else 1)
