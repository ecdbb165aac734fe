"""systemd rendering: a oneshot `.service` and the `.timer` that starts it.

Quoting follows systemd.service(5) "Command lines" and systemd.unit(5) "Specifiers":
specifiers (`%x`) are expanded on the whole line first, so `%` is written `%%`; words are
then split on whitespace with C-style escapes inside double quotes; `$` is expanded from
the environment at start time, so a literal one is `$$`; and a lone `;` is `\\;`.
Pure: returns text, writes nothing.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from protectctl.provision.schedulers.base import DaemonJob, ScheduledJob, command_argv, render_template

__all__ = ["SystemdRenderer", "environment_assignment", "exec_arg", "exec_line"]

UNIT_DIR = PurePosixPath("etc/systemd/system")
# Characters that never need quoting in an ExecStart= word ('%' and '$' are escaped anyway).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=@+,%$-]+")


def _specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _double_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_arg(arg: str) -> str:
    """One argv element as an ExecStart= word that systemd turns back into exactly `arg`."""
    if arg == ";":
        return "\\;"
    escaped = _specifiers(arg).replace("$", "$$")
    return escaped if _PLAIN_WORD.fullmatch(arg) else _double_quoted(escaped)


def exec_line(argv: tuple[str, ...]) -> str:
    return " ".join(exec_arg(arg) for arg in argv)


def environment_assignment(key: str, value: str) -> str:
    """An Environment= value; `$` is not expanded there, specifiers and quotes are."""
    return _double_quoted(_specifiers(f"{key}={value}"))


class SystemdRenderer:
    """Renders `<name>.service` (Type=oneshot, idle priority) and `<name>.timer`."""

    def render_daemon(self, job: DaemonJob) -> dict[PurePosixPath, str]:
        return render_service(job)

    def render(self, job: ScheduledJob) -> dict[PurePosixPath, str]:
        sandbox = job.sandbox
        service = render_template(
            "systemd.service.j2",
            description=_specifiers(job.description),
            exec_start=exec_line(command_argv(job)),
            user=job.user,
            environment=[environment_assignment(k, v) for k, v in job.environment],
            timeout_s=job.timeout_s,
            on_failure=job.on_failure,
            ac_power=job.ac_power,
            sandbox=sandbox,
            read_write_paths=" ".join(f"-{_specifiers(p)}" for p in (sandbox.write_paths or ()))
            if sandbox is not None
            else "",
        )
        timer = render_template(
            "systemd.timer.j2",
            description=_specifiers(job.description),
            on_calendar=list(job.schedule.on_calendar_lines()),
            randomized_delay_s=job.randomized_delay_s,
            schedule=str(job.schedule),
        )
        return {
            UNIT_DIR / f"{job.name}.service": service,
            UNIT_DIR / f"{job.name}.timer": timer,
        }


def render_service(job: DaemonJob) -> dict[PurePosixPath, str]:
    """`<name>.service`: a long-running command, restarted when it stops, started at boot."""
    text = render_template(
        "systemd.daemon.service.j2", description=_specifiers(job.description), exec_start=exec_line(job.argv)
    )
    return {UNIT_DIR / f"{job.name}.service": text}


SCHEDULER = SystemdRenderer()  # provision/schedulers/registry.py
