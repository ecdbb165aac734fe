"""What a scheduled job is, and the Protocol every scheduler renderer implements.

A renderer turns one `ScheduledJob` into the files that make a host run it (systemd units,
a cron.d file), as text keyed by paths relative to the host's root. Rendering is pure: no
files are written here, no clock or environment is read; `apply` writes what it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from protectctl.errors import ProtectctlError
from protectctl.units import Schedule

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "MANAGED_HEADER",
    "JobError",
    "Sandbox",
    "ScheduledJob",
    "SchedulerRenderer",
    "render_template",
    "unit_name",
]

MANAGED_HEADER = "managed by protectctl; edits are overwritten (plan --refresh reports drift)"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

_NAME_RE = re.compile(r"[A-Za-z0-9:_.-]+")
# systemd refuses unit names over 255 characters, suffix included (".service" is 8).
_MAX_NAME = 255 - len(".service")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# A unit started when a job fails, e.g. `notify-email@%n.service`: specifiers are kept on purpose.
_ON_FAILURE_RE = re.compile(r"[A-Za-z0-9:_.@%\\-]+\.(service|target)")
_CAPABILITY_RE = re.compile(r"CAP_[A-Z_]+")
# Written to by every job: status, metrics, locks, the repository of a local storage.
_PATH_RE = re.compile(r"/[^\s\"'\\]*")
# A newline or other control character would end a unit-file line or a cron line early
# and let the rest be read as a new directive.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class JobError(ProtectctlError, ValueError):
    """A scheduled job that cannot be rendered safely; the message says what to change."""


def _escape_char(char: str) -> str:
    return "".join(f"_{byte:02x}" for byte in char.encode())


def _escape_part(part: str) -> str:
    """Escape one part so that joining parts with '-' can never make two jobs collide.

    Letters and digits stay; an inner '-' doubles ("ledger-db" -> "ledger--db"), so a single
    '-' always separates parts; everything else, and a leading or trailing '-', becomes
    `_xx` per UTF-8 byte (so '_' itself is `_5f`). Without this, group "a-b" member "c" and
    group "a" member "b-c" would share one timer.
    """
    if part.isascii() and part.isalnum():
        return part  # the common case, and what the loop below would return
    out: list[str] = []
    last = len(part) - 1
    for i, char in enumerate(part):
        if char.isascii() and char.isalnum():
            out.append(char)
        elif char == "-" and 0 < i < last:
            out.append("--")
        else:
            out.append(_escape_char(char))
    return "".join(out)


def unit_name(*parts: str) -> str:
    """A name safe for systemd units and cron.d files, e.g. `protectctl-docs-home-sync`."""
    if not parts or any(not part for part in parts):
        raise JobError(f"a unit name needs non-empty parts, got {parts!r}")
    name = "-".join(_escape_part(part) for part in parts)
    if len(name) > _MAX_NAME:
        raise JobError(f"the unit name {name!r} is longer than {_MAX_NAME} characters; use shorter names")
    return name


def _check_text(what: str, value: str) -> None:
    if _CONTROL_RE.search(value):
        raise JobError(f"{what} {value!r} contains a newline or control character; remove it")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How tightly systemd confines a job (systemd.exec(5)); cron cannot confine and ignores it.

    `write_paths`: a tuple makes everything else read-only (ProtectSystem=strict, ProtectHome=
    read-only, these paths ReadWritePaths=); None lets the job write outside /usr, /boot and
    /etc (ProtectSystem=full), for jobs whose writes we cannot list (user scripts, tape).
    `capabilities`: the bounding set (reading any file needs CAP_DAC_READ_SEARCH); None keeps
    root's. `filter_syscalls`: the @system-service allow-list, minus @privileged and
    @resources unless `change_user` (a job that runs commands as another user, via runuser).
    `devices`: the job may use /dev (an LVM snapshot in a pre script); else PrivateDevices.
    """

    write_paths: tuple[str, ...] | None = ()
    capabilities: tuple[str, ...] | None = ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER")
    filter_syscalls: bool = True
    change_user: bool = False
    devices: bool = False

    def __post_init__(self) -> None:
        for path in self.write_paths or ():
            if not _PATH_RE.fullmatch(path):
                raise JobError(
                    f"{path!r} is not a path a unit can name; expected an absolute path without spaces or quotes"
                )
        for cap in self.capabilities or ():
            if not _CAPABILITY_RE.fullmatch(cap):
                raise JobError(f"{cap!r} is not a capability; expected e.g. CAP_DAC_READ_SEARCH")

    @classmethod
    def relaxed(cls) -> Sandbox:
        """For jobs that run the user's scripts: they may need devices, mounts, any capability."""
        return cls(write_paths=None, capabilities=None, filter_syscalls=False, devices=True)


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """One command a host runs on a schedule. Never carries a secret: it lands in plain files."""

    name: str
    description: str
    argv: tuple[str, ...]
    schedule: Schedule
    randomized_delay_s: int = 0
    user: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    timeout_s: int = 0  # 0: no limit; else systemd TimeoutStartSec=, cron `timeout`
    sandbox: Sandbox | None = None  # systemd only; None: unconfined
    on_failure: str | None = None  # systemd: a unit started when the job fails
    mailto: str | None = None  # cron: who gets mail about failures ("" for nobody; None: cron's default)
    ac_power: bool = False  # run only on AC power (skipped, not failed, on battery)
    inhibit: bool = False  # hold a systemd-inhibit lock against sleep and shutdown while running

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or len(self.name) > _MAX_NAME:
            raise JobError(
                f"{self.name!r} is not a usable unit name; use letters, digits and :_.- "
                f"(at most {_MAX_NAME} characters), e.g. via unit_name()"
            )
        if self.timeout_s < 0:
            raise JobError(f"timeout_s must be 0 or more, got {self.timeout_s}")
        if self.on_failure is not None and not _ON_FAILURE_RE.fullmatch(self.on_failure):
            raise JobError(f"onFailure {self.on_failure!r} is not a unit name; expected e.g. notify-email@%n.service")
        if self.mailto is not None:
            _check_text("mailto", self.mailto)
        if not self.argv or not self.argv[0].startswith("/"):
            raise JobError(f"a job's command must start with an absolute path, got {self.argv!r}")
        _check_text("the description", self.description)
        for arg in self.argv:
            _check_text("the argument", arg)
        if self.randomized_delay_s < 0:
            raise JobError(f"randomized_delay_s must be 0 or more, got {self.randomized_delay_s}")
        if self.user is not None and not _USER_RE.fullmatch(self.user):
            raise JobError(f"{self.user!r} is not a valid user name; expected e.g. root or backup")
        for key, value in self.environment:
            if not _ENV_KEY_RE.fullmatch(key):
                raise JobError(f"{key!r} is not a valid environment variable name; expected e.g. PROTECTCTL_CONFIG")
            _check_text(f"the value of {key}", value)


INHIBIT = "/usr/bin/systemd-inhibit"


def command_argv(job: ScheduledJob) -> tuple[str, ...]:
    """The argv a scheduler starts: the job's, inside a sleep/shutdown inhibitor lock when asked."""
    if not job.inhibit:
        return job.argv
    return (INHIBIT, "--what=sleep:shutdown", "--who=protectctl", f"--why={job.description}", "--mode=block", *job.argv)


class SchedulerRenderer(Protocol):
    """Turns a job into the files that schedule it on a host."""

    def render(self, job: ScheduledJob) -> dict[PurePosixPath, str]:
        """File contents by path relative to the host's root (e.g. `etc/cron.d/NAME`)."""
        ...

    def render_daemon(self, job: DaemonJob) -> dict[PurePosixPath, str]:
        """The files that keep `job` running (started at boot, restarted when it stops)."""
        ...


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        # Unit files and crontabs are not HTML: values are quoted for their format by the
        # renderer before they reach the template, and HTML escaping would corrupt them.
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(name: str, **context: object) -> str:
    """Render `templates/NAME` with values already quoted for the target format."""
    return _environment().get_template(name).render(header=MANAGED_HEADER, **context)


@dataclass(frozen=True, slots=True)
class DaemonJob:
    """A command a host keeps running (started at boot, restarted when it stops), e.g. WAL streaming."""

    name: str
    description: str
    argv: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or len(self.name) > _MAX_NAME:
            raise JobError(f"{self.name!r} is not a usable unit name; use letters, digits and :_.-")
        if not self.argv or not self.argv[0].startswith("/"):
            raise JobError(f"a service's command must start with an absolute path, got {self.argv!r}")
        _check_text("the description", self.description)
        for arg in self.argv:
            _check_text("the argument", arg)
