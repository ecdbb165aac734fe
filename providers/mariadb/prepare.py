"""Apply's preparation of a MariaDB host: binary logging on, in row format, with a server_id.

`log_bin` needs a restart: with ``allowRestart`` apply writes ``configFile`` and runs
``restartCommand``; without it apply refuses and names the exact setting to change.
`binlog_format` and `server_id` are dynamic: set at once (SET GLOBAL) and kept in
``configFile`` when apply writes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.provider import PrepareOutcome, PrepareRequest
from protectctl.providers.mariadb import server as my
from protectctl.providers.mariadb.server import Server

BINLOG_NAME = "mariadb-bin"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    value: str
    restart: bool  # not dynamic: takes effect at the next start


def needed(running: Mapping[str, str]) -> list[Setting]:
    """What must change for binlog shipping, from the running values (pure)."""
    out = []
    if running.get("log_bin") != "1":
        out.append(Setting("log_bin", BINLOG_NAME, True))
    if running.get("binlog_format", "").upper() != "ROW":
        out.append(Setting("binlog_format", "ROW", False))
    if running.get("server_id") in (None, "", "0"):
        out.append(Setting("server_id", "1", False))
    return out


def config_text(settings: list[Setting]) -> str:
    lines = ["# written by protectctl apply: binary logging for binlog shipping", "[mariadbd]"]
    lines += [f"{s.name} = {s.value}" for s in settings]
    return "\n".join(lines) + "\n"


def refusal(source: str, settings: list[Setting], config_file: str) -> ProviderError:
    exact = ", ".join(f"{s.name} = {s.value}" for s in settings)
    return ProviderError(
        f"{source}: binary logging is off and turning it on needs a restart of MariaDB: set {exact} under "
        f"[mariadbd] (e.g. in {config_file}) and restart the server",
        hint="or set `allowRestart: true` in the member's mariadb spec to let apply do it",
    )


DEFAULT_CONFIG_FILE = "/etc/mysql/mariadb.conf.d/99-protectctl.cnf"
DEFAULT_RESTART = ("systemctl", "restart", "mariadb")


def _config_file(spec: Mapping[str, object]) -> str:
    return str(spec.get("config_file") or DEFAULT_CONFIG_FILE)


def _restart_argv(spec: Mapping[str, object]) -> list[str]:
    given = spec.get("restart_command")
    return [str(a) for a in given] if isinstance(given, list) and given else list(DEFAULT_RESTART)


def notes(spec: Mapping[str, object]) -> list[str]:
    """What apply's prepare does, from the spec alone (the plan's note on the source's change)."""
    where = "each server of the pair" if spec.get("nodes") else "the server"
    first = (
        f"apply checks binary logging on {where}: binlog_format = ROW and a non-zero server_id are set at "
        "once (SET GLOBAL) where they are not"
    )
    if spec.get("allow_restart"):
        return [
            f"{first}; log_bin, if off, needs a restart: apply writes {_config_file(spec)} and runs "
            f"`{' '.join(_restart_argv(spec))}` (allowRestart)"
        ]
    return [
        f"{first}; log_bin, if off, needs a restart, which allowRestart: false refuses: apply then stops "
        "naming the setting to add (`plan --refresh` reads the server now)"
    ]


def _running(server: Server, source: str) -> dict[str, str]:
    with my.client(server) as c:
        if not c.reachable():
            raise ProviderError(
                f"cannot reach MariaDB of {source} at {server.socket}",
                hint="start the server (or fix socket/osUser/credentials), then run apply again",
            )
        return c.variables("log_bin", "binlog_format", "server_id")


def preview(request: PrepareRequest) -> PrepareOutcome:
    """What prepare_host would change now (changes) or refuse (warnings), reading only."""
    server = Server.from_spec(request.spec)
    running = _running(server, request.source)
    settings = needed(running)
    if not settings:
        return PrepareOutcome()
    if any(s.restart for s in settings) and not request.spec.get("allow_restart"):
        err = refusal(request.source, settings, _config_file(request.spec))
        return PrepareOutcome(warnings=(f"apply will refuse: {err.message}; {err.hint}",))
    was = {"log_bin": "OFF" if running.get("log_bin") != "1" else "ON"}
    changes = [
        f"apply will set {s.name} {was.get(s.name, running.get(s.name) or 'unset')} -> {s.value} "
        + ("(at the restart)" if s.restart else "(at once, SET GLOBAL)")
        for s in settings
    ]
    changes.append(f"apply will write {_config_file(request.spec)}")
    if any(s.restart for s in settings):
        changes.append(f"apply will restart MariaDB: `{' '.join(_restart_argv(request.spec))}` (allowRestart)")
    return PrepareOutcome(tuple(changes))


def prepare_host(request: PrepareRequest) -> PrepareOutcome:
    server = Server.from_spec(request.spec)
    running = _running(server, request.source)
    settings = needed(running)
    if not settings:
        return PrepareOutcome((f"binary logging is on (binlog_format ROW, server_id {running['server_id']})",))
    restart = [s for s in settings if s.restart]
    config_file = _config_file(request.spec)
    if restart and not request.spec.get("allow_restart"):
        raise refusal(request.source, settings, config_file)
    with my.client(server) as c:
        changes = []
        for s in settings:
            if not s.restart:
                value = my.literal(s.value) if s.name == "binlog_format" else s.value
                c.query(f"SET GLOBAL {s.name} = {value}")
                changes.append(f"{s.name} set to {s.value}")
    _write_config(Path(config_file), config_text(settings))
    changes.append(f"{config_file} written ({', '.join(s.name for s in settings)})")
    if restart:
        _restart(server, request.spec, request.source)
        changes.append(f"MariaDB restarted: binary logging on ({BINLOG_NAME}.*)")
    return PrepareOutcome(tuple(changes))


def _write_config(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _restart(server: Server, spec: Mapping[str, object], source: str) -> None:
    import subprocess

    argv = _restart_argv(spec)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProviderError(f"{source}: restarting MariaDB ({argv[0]}): {err}") from err
    if result.returncode != 0:
        raise ProviderError(f"{source}: {' '.join(argv)} failed (exit {result.returncode}): {my.tail(result.stderr)}")
    deadline = time.monotonic() + 120
    with my.client(server) as c:
        while not c.reachable():
            if time.monotonic() > deadline:
                raise ProviderError(f"{source}: MariaDB did not come back within 120 s after the restart")
            time.sleep(0.5)
        if c.variables("log_bin")["log_bin"] != "1":
            raise ProviderError(
                f"{source}: binary logging is still off after the restart",
                hint="check that the server reads the configFile (an !includedir of its directory)",
            )
