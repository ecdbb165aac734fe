"""cron rendering: one `/etc/cron.d/<name>` file per job.

cron hands the command to /bin/sh, so argv is shell-quoted with `shlex.join`; then every
`%` is written `\\%` because an unescaped `%` ends a cron command (the rest becomes stdin).
The file name avoids dots: Debian's cron skips cron.d files whose names contain them.
Pure: returns text, writes nothing.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from protectctl.provision.schedulers.base import DaemonJob, JobError, ScheduledJob, render_template

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


def cron_command(argv: tuple[str, ...], randomized_delay_s: int = 0) -> str:
    """The command field of a cron line: nice, quoted argv, `%` escaped for cron."""
    command = _random_delay_prefix(randomized_delay_s) + shlex.join(("nice", "-n", "19", *argv))
    if "\\%" in command:
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
        text = render_template(
            "cron.j2",
            description=job.description,
            schedule=str(job.schedule),
            path=DEFAULT_PATH,
            environment=[(k, _env_value(k, v)) for k, v in job.environment],
            lines=list(job.schedule.cron_lines()),
            user=job.user or _DEFAULT_USER,
            command=cron_command(job.argv, job.randomized_delay_s),
        )
        return {CRON_DIR / cron_file_name(job.name): text}


def render_reboot(job: DaemonJob) -> dict[PurePosixPath, str]:
    """`etc/cron.d/<name>` starting the command at boot; it must supervise itself (cron never restarts it)."""
    text = render_template(
        "cron.j2", description=job.description, schedule="at boot, kept running by itself", path=DEFAULT_PATH,
        environment=[], lines=["@reboot"], user=_DEFAULT_USER, command=shlex.join(job.argv).replace("%", "\\%"))
    return {CRON_DIR / cron_file_name(job.name): text}
