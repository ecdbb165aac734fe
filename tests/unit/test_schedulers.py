"""Scheduler renderers: golden files, and quoting that survives systemd's and cron's parsers."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protectctl.provision.schedulers import JobError, ScheduledJob, renderer_for, unit_name
from protectctl.provision.schedulers.base import Sandbox
from protectctl.provision.schedulers.cron import cron_command
from protectctl.provision.schedulers.systemd import exec_line
from protectctl.units import Schedule

SYNC = ScheduledJob(
    name=unit_name("protectctl", "docs", "home", "sync"),
    description="protectctl sync docs/home",
    argv=("/usr/bin/protectctl", "-C", "/etc/protectctl", "run", "sync", "docs", "--member", "home"),
    schedule=Schedule.parse("every 15m"),
    randomized_delay_s=60,
    environment=(("PROTECTCTL_CONFIG", "/etc/protectctl/agent.yaml"),),
)

AWKWARD = ScheduledJob(
    name=unit_name("protectctl", "finance", "ledger-db", "full"),
    description="full of finance/ledger-db at 100%",
    argv=(
        "/opt/protect ctl/bin/protectctl",
        "run",
        "full",
        "a b",
        "50%",
        "$HOME",
        'it\'s "quoted"',
        ";",
        "",
    ),
    schedule=Schedule.parse("daily at 08:00,20:30"),
    user="backup",
)

SYNC_SERVICE = """\
# managed by protectctl; edits are overwritten (plan --refresh reports drift)
[Unit]
Description=protectctl sync docs/home
# Repositories may be remote (sftp, s3): wait for the network, as a backup must.
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/protectctl -C /etc/protectctl run sync docs --member home
Environment="PROTECTCTL_CONFIG=/etc/protectctl/agent.yaml"
# Backups yield to interactive work on the host.
Nice=19
IOSchedulingClass=idle
"""

SYNC_TIMER = """\
# managed by protectctl; edits are overwritten (plan --refresh reports drift)
# schedule: every 15m
[Unit]
Description=protectctl sync docs/home (timer)

[Timer]
OnCalendar=*-*-* *:00/15:00
# Run a missed job at boot, when the host was off at the scheduled time.
Persistent=true
RandomizedDelaySec=60
AccuracySec=1s

[Install]
WantedBy=timers.target
"""

SYNC_CRON = """\
# managed by protectctl; edits are overwritten (plan --refresh reports drift)
# protectctl sync docs/home
# schedule: every 15m
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PROTECTCTL_CONFIG=/etc/protectctl/agent.yaml
*/15 * * * * root sleep $(( $(od -An -N4 -tu4 /dev/urandom) \\% 60 )) && \
out=$( nice -n 19 /usr/bin/protectctl -C /etc/protectctl run sync docs --member home 2>&1 ) || \
{ s=$?; printf '\\%s\\n' "$out"; exit $s; }
"""

AWKWARD_EXEC = 'ExecStart="/opt/protect ctl/bin/protectctl" run full "a b" 50%% $$HOME "it\'s \\"quoted\\"" \\; ""'
AWKWARD_CRON_COMMAND = (
    "nice -n 19 '/opt/protect ctl/bin/protectctl' run full 'a b' 50\\% '$HOME' 'it'\"'\"'s \"quoted\"' ';' ''"
)


def test_systemd_golden() -> None:
    files = renderer_for("systemd").render(SYNC)
    assert files == {
        PurePosixPath("etc/systemd/system/protectctl-docs-home-sync.service"): SYNC_SERVICE,
        PurePosixPath("etc/systemd/system/protectctl-docs-home-sync.timer"): SYNC_TIMER,
    }


def test_cron_golden() -> None:
    expected = {PurePosixPath("etc/cron.d/protectctl-docs-home-sync"): SYNC_CRON}
    assert renderer_for("cron").render(SYNC) == expected


def test_systemd_awkward_job() -> None:
    files = renderer_for("systemd").render(AWKWARD)
    service = files[PurePosixPath("etc/systemd/system/protectctl-finance-ledger--db-full.service")]
    timer = files[PurePosixPath("etc/systemd/system/protectctl-finance-ledger--db-full.timer")]
    assert AWKWARD_EXEC in service.splitlines()
    assert "User=backup" in service.splitlines()
    assert "Description=full of finance/ledger-db at 100%%" in service.splitlines()
    assert "Environment=" not in service
    assert [line for line in timer.splitlines() if line.startswith("OnCalendar=")] == [
        "OnCalendar=*-*-* 08:00:00",
        "OnCalendar=*-*-* 20:30:00",
    ]
    assert "RandomizedDelaySec=0" in timer.splitlines()


def test_cron_awkward_job() -> None:
    ((path, text),) = renderer_for("cron").render(AWKWARD).items()
    assert path == PurePosixPath("etc/cron.d/protectctl-finance-ledger--db-full")
    jobs = [line for line in text.splitlines() if line and not line.startswith("#") and "=" not in line.split()[0]]
    quiet = f"out=$( {AWKWARD_CRON_COMMAND} 2>&1 ) || {{ s=$?; printf '\\%s\\n' \"$out\"; exit $s; }}"
    assert jobs == [f"0 8 * * * backup {quiet}", f"30 20 * * * backup {quiet}"]
    assert "sleep" not in text


# ---- parsers modelled on the documented rules, to prove the quoting round-trips


def systemd_split(line: str) -> list[str]:
    """Split an ExecStart= value per systemd.service(5): specifiers, quotes, C escapes, \\; and $$."""
    line = line.replace("%%", "\0")  # specifier expansion happens first, on the whole line
    assert "%" not in line, "an unescaped specifier"
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        if line.startswith("\\;", i) and (i + 2 == len(line) or line[i + 2] == " "):
            words.append(";")
            i += 2
            continue
        word, quoted = "", line[i] == '"'
        i += quoted
        while i < len(line) and (quoted or line[i] != " "):
            char = line[i]
            if quoted and char == '"':
                i += 1
                break
            if char == "\\":
                word += line[i + 1]
                i += 2
                continue
            word += char
            i += 1
        assert "$" not in word.replace("$$", ""), "an unescaped variable"
        words.append(word.replace("$$", "$").replace("\0", "%"))
    return words


def cron_shell_argv(command: str) -> list[str]:
    """What sh receives from a cron command field (cron turns \\% into %), split as sh would."""
    assert "%" not in command.replace("\\%", ""), "an unescaped % ends the cron command"
    return shlex.split(command.replace("\\%", "%"))


_awkward_text = st.text(alphabet=st.sampled_from(list("ab Z09 %$'\"\\;:/=.-_~*?&|<>(){}[]!#é")), max_size=12)


@given(st.lists(_awkward_text, max_size=5))
def test_exec_line_round_trips(args: list[str]) -> None:
    argv = ("/usr/bin/prog", *args)
    assert systemd_split(exec_line(argv)) == list(argv)


@given(st.lists(_awkward_text.filter(lambda a: "\\%" not in a), max_size=5))
def test_cron_command_round_trips(args: list[str]) -> None:
    argv = ("/usr/bin/prog", *args)
    assert cron_shell_argv(cron_command(argv)) == ["nice", "-n", "19", *argv]


def test_cron_refuses_backslash_percent() -> None:
    with pytest.raises(JobError, match="backslash"):
        cron_command(("/bin/echo", "100\\%"))


# ---- names and validation


def test_unit_name_is_injective_across_parts() -> None:
    assert unit_name("protectctl", "docs", "home", "sync") == "protectctl-docs-home-sync"
    assert unit_name("a-b", "c") != unit_name("a", "b-c")
    assert unit_name("a-", "b") != unit_name("a", "-b")
    assert unit_name("x.y", "z_w", "é") == "x_2ey-z_5fw-_c3_a9"


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
def test_unit_names_are_safe(parts: list[str]) -> None:
    try:
        name = unit_name(*parts)
    except JobError as err:  # exotic text can escape past systemd's name limit: refused, clearly
        assert "longer than" in str(err)
        return
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "has space"},
        {"argv": ("relative/path",)},
        {"argv": ()},
        {"argv": ("/bin/echo", "two\nlines")},
        {"description": "line\nbreak"},
        {"randomized_delay_s": -1},
        {"user": "bad user"},
        {"environment": (("1BAD", "x"),)},
    ],
)
def test_job_validation(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "name": "ok",
        "description": "d",
        "argv": ("/bin/true",),
        "schedule": Schedule.parse("hourly"),
    }
    with pytest.raises(JobError):
        ScheduledJob(**(fields | changes))  # type: ignore[arg-type]


def test_unknown_scheduler() -> None:
    with pytest.raises(JobError, match="systemd or cron"):
        renderer_for("launchd")


def test_cron_file_name_has_no_dots() -> None:
    job = ScheduledJob(name="protectctl.v2:x", description="d", argv=("/bin/true",), schedule=Schedule.parse("hourly"))
    (path,) = renderer_for("cron").render(job)
    assert "." not in path.name and ":" not in path.name


# ---- options: timeouts, failure hooks, power, mail, sandbox


def _options_job(**extra: object) -> ScheduledJob:
    fields: dict[str, object] = {
        "name": "protectctl-x-y-sync",
        "description": "d",
        "argv": ("/bin/true",),
        "schedule": Schedule.parse("hourly"),
    }
    return ScheduledJob(**(fields | extra))  # type: ignore[arg-type]


def test_systemd_options_render() -> None:
    job = _options_job(
        timeout_s=600,
        on_failure="notify@%n.service",
        ac_power=True,
        inhibit=True,
        sandbox=Sandbox(write_paths=("/var/lib/protectctl",)),
    )
    service = next(t for p, t in renderer_for("systemd").render(job).items() if p.suffix == ".service")
    lines = service.splitlines()
    for expected in (
        "TimeoutStartSec=600",
        "OnFailure=notify@%n.service",
        "ConditionACPower=true",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/protectctl",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER",
    ):
        assert expected in lines, expected
    (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
    assert systemd_split(exec_start.removeprefix("ExecStart="))[0] == "/usr/bin/systemd-inhibit"


def test_relaxed_sandbox_keeps_capabilities_and_writes() -> None:
    service = next(
        t
        for p, t in renderer_for("systemd").render(_options_job(sandbox=Sandbox.relaxed())).items()
        if p.suffix == ".service"
    )
    assert "ProtectSystem=full" in service and "CapabilityBoundingSet" not in service
    assert "SystemCallFilter" not in service and "PrivateDevices" not in service


@pytest.mark.parametrize(
    "changes", [{"write_paths": ("/a b",)}, {"write_paths": ("relative",)}, {"capabilities": ("DAC",)}]
)
def test_sandbox_validation(changes: dict[str, object]) -> None:
    with pytest.raises(JobError):
        Sandbox(**changes)  # type: ignore[arg-type]


def test_on_failure_must_be_a_unit() -> None:
    with pytest.raises(JobError, match="onFailure"):
        _options_job(on_failure="rm -rf /")


def test_cron_mailto_and_timeout() -> None:
    (text,) = renderer_for("cron").render(_options_job(mailto="", timeout_s=600)).values()
    assert 'MAILTO=""' in text.splitlines()
    assert "timeout -k 60 600 nice -n 19 /bin/true" in text


@pytest.mark.parametrize(("script", "status", "printed"), [("echo fine", 0, ""), ("echo broke; exit 3", 3, "broke\n")])
def test_cron_runs_print_only_when_they_fail(script: str, status: int, printed: str) -> None:
    import subprocess

    (text,) = renderer_for("cron").render(_options_job(argv=("/bin/sh", "-c", script))).values()
    (line,) = [line for line in text.splitlines() if line.startswith("0 * ")]
    command = line.split(None, 6)[6].replace("\\%", "%")
    run = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    assert (run.returncode, run.stdout) == (status, printed)
