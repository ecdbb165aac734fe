"""cron rendering: one `/etc/cron.d/<name>` file per job.

cron hands the command to /bin/sh, so argv is shell-quoted with `shlex.join`; then every
`%` is written `\\%` because an unescaped `%` ends a cron command (the rest becomes stdin).
cron mails whatever a job prints: the command keeps a run's output and prints it only when
the run fails, so `MAILTO` hears about failures, not about every 15-minute sync.
The file name avoids dots: Debian's cron skips cron.d files whose names contain them.
Pure: returns text, writes nothing.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from protectctl.provision.schedulers.base import DaemonJob, JobError, ScheduledJob, command_argv, render_template

__all__ = ["CronRenderer", "cron_command", "cron_file_name", "DEFAULT_PATH"]

CRON_DIR = PurePosixPath("etc/cron.d")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DEFAULT_USER = "root"


def cron_file_name(name: str) -> str:
    """The job name with the characters cron.d file names must not have escaped as in unit_name."""
    return name.replace(".", "_2e").replace(":", "_3a")


def _random_delay_prefix(delay_s: int) -> str:
    """A POSIX sh sleep of 0..delay_s-1 seconds, so a fleet does not start all at once."""
    if delay_s <= 0:
        return ""
    # od reads 4 random bytes as one unsigned number: large enough for any delay.
    return f"sleep $(( $(od -An -N4 -tu4 /dev/urandom) % {delay_s} )) && "


# On battery when some power supply reports `online` and none is online (no adapter at all:
# a server, on AC), as systemd's ConditionACPower= decides.
# On battery the run is skipped quietly (exit 0, no output, so no mail).
_AC_POWER_GUARD = (
    "{ ! ls /sys/class/power_supply/*/online >/dev/null 2>&1 || "
    "grep -qsx 1 /sys/class/power_supply/*/online; } || exit 0; "
)
# The output of a run is printed (and so mailed) only when it fails, with its exit status.
_QUIET_START = "out=$( "
_QUIET_END = " 2>&1 ) || { s=$?; printf '%s\\n' \"$out\"; exit $s; }"
# `timeout` sends TERM at the limit and KILL this long after, when the job does not stop.
_KILL_AFTER_S = 60


def cron_command(
    argv: tuple[str, ...],
    randomized_delay_s: int = 0,
    *,
    timeout_s: int = 0,
    ac_power: bool = False,
    quiet: bool = False,
) -> str:
    """The command field of a cron line: nice, quoted argv, `%` escaped for cron."""
    limit = ("timeout", "-k", str(_KILL_AFTER_S), str(timeout_s)) if timeout_s else ()
    run = shlex.join((*limit, "nice", "-n", "19", *argv))
    if quiet:
        run = _QUIET_START + run + _QUIET_END
    command = (_AC_POWER_GUARD if ac_power else "") + _random_delay_prefix(randomized_delay_s) + run
    if "\\%" in shlex.join(argv):
        # cron reads "\\%" as an escaped backslash followed by a command-ending '%'.
        raise JobError(f"an argument in {argv!r} has a backslash before '%', which cron cannot express")
    return command.replace("%", "\\%")


def _env_value(key: str, value: str) -> str:
    """A cron environment value; cron strips one pair of matching quotes and nothing else."""
    if value == value.strip() and not value.startswith(("'", '"')):
        return value
    for quote in ('"', "'"):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise JobError(f"the value of {key} mixes both quote characters with edge spaces; cron cannot express it")


class CronRenderer:
    """Renders `etc/cron.d/<name>`: SHELL, PATH, environment, then one line per cron expression."""

    def render(self, job: ScheduledJob) -> dict[PurePosixPath, str]:
        environment = [(k, _env_value(k, v)) for k, v in job.environment]
        if job.mailto is not None:
            environment.insert(0, ("MAILTO", _env_value("MAILTO", job.mailto) or '""'))
        text = render_template(
            "cron.j2",
            description=job.description,
            schedule=str(job.schedule),
            path=DEFAULT_PATH,
            environment=environment,
            lines=list(job.schedule.cron_lines()),
            user=job.user or _DEFAULT_USER,
            command=cron_command(
                command_argv(job), job.randomized_delay_s, timeout_s=job.timeout_s, ac_power=job.ac_power, quiet=True
            ),
        )
        return {CRON_DIR / cron_file_name(job.name): text}

    def render_daemon(self, job: DaemonJob) -> dict[PurePosixPath, str]:
        return render_reboot(job)


def render_reboot(job: DaemonJob) -> dict[PurePosixPath, str]:
    """`etc/cron.d/<name>` starting the command at boot; it must supervise itself (cron never restarts it)."""
    text = render_template(
        "cron.j2",
        description=job.description,
        schedule="at boot, kept running by itself",
        path=DEFAULT_PATH,
        environment=[],
        lines=["@reboot"],
        user=_DEFAULT_USER,
        command=shlex.join(job.argv).replace("%", "\\%"),
    )
    return {CRON_DIR / cron_file_name(job.name): text}


SCHEDULER = CronRenderer()  # provision/schedulers/registry.py
