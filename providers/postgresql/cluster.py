"""Talking to one PostgreSQL cluster: the one process gateway of the postgresql provider.

Every PostgreSQL binary runs as the cluster's OS user (initdb, pg_ctl and the server refuse
root; peer authentication over the Unix socket needs that user anyway): when protectctl
runs as root, argv is prefixed with `runuser -u USER --`. Commands are argv lists, never
shell strings. Failures become ProviderError naming the command and the tail of stderr.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protectctl.errors import ProviderError

_UNIT = "\x1f"  # psql field separator: never inside the values we read
_SENTINEL = "__protectctl_end__"


@dataclass(frozen=True, slots=True)
class Cluster:
    data_dir: Path
    port: int
    socket_dir: Path
    os_user: str
    bin_dir: Path
    user: str | None = None  # the database role clients connect as (-U); None: libpq's default

    @classmethod
    def from_spec(cls, spec: Mapping[str, object], **override: object) -> Cluster:
        values: dict[str, object] = {
            "data_dir": Path(str(spec["data_dir"])),
            "port": int(str(spec.get("port", 5432))),
            "socket_dir": Path(str(spec.get("socket_dir") or "/var/run/postgresql")),
            "os_user": str(spec.get("os_user") or "postgres"),
            "bin_dir": Path(str(spec.get("bin_dir") or "/usr/lib/postgresql/15/bin")),
            "user": str(spec["user"]) if spec.get("user") else None,
        }
        values.update(override)
        return cls(**values)  # type: ignore[arg-type]

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def ids(self) -> tuple[int, int]:
        """(uid, gid) of the OS user; ProviderError when the user does not exist."""
        try:
            entry = pwd.getpwnam(self.os_user)
        except KeyError:
            raise ProviderError(
                f"OS user {self.os_user!r} does not exist on this host",
                hint="set osUser to the user PostgreSQL runs as",
            ) from None
        return entry.pw_uid, entry.pw_gid


def as_user(cluster: Cluster, argv: Sequence[str]) -> list[str]:
    """argv run as the cluster's OS user (through runuser when we are root and someone else)."""
    if os.geteuid() == 0 and pwd.getpwuid(0).pw_name != cluster.os_user:
        return ["runuser", "-u", cluster.os_user, "--", *argv]
    return list(argv)


def run(
    cluster: Cluster,
    argv: Sequence[str],
    *,
    timeout_s: float = 600,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    full = as_user(cluster, argv)
    merged = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        result = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=merged,
            input=stdin.decode() if stdin is not None else None,
            check=False,
            cwd="/",
        )
    except FileNotFoundError as err:
        raise ProviderError(f"{argv[0]} not found", hint="check binDir in the member spec") from err
    except subprocess.TimeoutExpired as err:
        raise ProviderError(f"{' '.join(argv[:2])} did not finish within {timeout_s:.0f} s") from err
    if check and result.returncode != 0:
        raise ProviderError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {_tail(result.stderr)}")
    return result


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:]) or "(no message)"


def conn_args(cluster: Cluster) -> list[str]:
    """Where and as whom every client tool connects: the socket directory, the port, the role."""
    return ["-h", str(cluster.socket_dir), "-p", str(cluster.port), *(["-U", cluster.user] if cluster.user else [])]


def psql_argv(cluster: Cluster, database: str = "postgres") -> list[str]:
    return [
        cluster.bin("psql"),
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-F",
        _UNIT,
        *conn_args(cluster),
        "-d",
        database,
    ]


def where(cluster: Cluster) -> str:
    """The cluster as messages name it: `/run/pg port 5432 as role backup`."""
    return f"{cluster.socket_dir} port {cluster.port}" + (f" as role {cluster.user}" if cluster.user else "")


def query(cluster: Cluster, sql: str, *, database: str = "postgres", timeout_s: float = 600) -> list[list[str]]:
    """Rows of `sql` as text fields; ProviderError when the cluster cannot be reached or the SQL fails."""
    result = run(cluster, [*psql_argv(cluster, database), "-c", sql], timeout_s=timeout_s, check=False)
    if result.returncode != 0:
        raise ProviderError(f"PostgreSQL at {cluster.socket_dir}:{cluster.port}: {_tail(result.stderr)}")
    return [line.split(_UNIT) for line in result.stdout.splitlines() if line != ""]


def scalar(cluster: Cluster, sql: str, *, database: str = "postgres") -> str:
    rows = query(cluster, sql, database=database)
    return rows[0][0] if rows and rows[0] else ""


def reachable(cluster: Cluster) -> bool:
    return connect_error(cluster) is None


def connect_error(cluster: Cluster, *, timeout_s: float = 30) -> str | None:
    """None when a session opens, else why not in the server's (or libpq's) own words, e.g.
    `FATAL:  role "backup" does not exist` or `No such file or directory ... Is the server running ...`."""
    try:
        result = run(cluster, [*psql_argv(cluster), "-c", "SELECT 1"], timeout_s=timeout_s, check=False)
    except ProviderError as err:
        return str(err)
    if result.returncode == 0:
        return None
    return server_message(result.stderr)


def server_message(stderr: str) -> str:
    """psql's error text, shortened to what names the cause: the server's FATAL/ERROR line when
    there is one (`FATAL:  role "x" does not exist`), else libpq's last lines."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        found = re.search(r"\b(FATAL|ERROR|PANIC):\s+(.*)", line)
        if found:
            return f"{found.group(1)}: {found.group(2)}"
    text = " | ".join(lines[-3:])
    return re.sub(r"^psql: error: ", "", text) or "(no message)"


class SessionError(ProviderError):
    """A session could not open, or its SQL failed; `detail` is the server's (or libpq's) message."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"PostgreSQL at {where}: {detail}")
        self.detail = detail


class Session:
    """One psql connection held open (the low-level backup API needs one session)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        argv = as_user(cluster, psql_argv(cluster))
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd="/",
                env={**os.environ, "LC_ALL": "C"},
            )
        except OSError as err:  # psql missing or not executable: one line, not a traceback
            raise SessionError(where(cluster), f"cannot run {argv[0]}: {err.strerror}") from err

    def scalar(self, sql: str) -> str:
        rows = self.query(sql)
        return rows[0][0] if rows and rows[0] else ""

    def query(self, sql: str) -> list[list[str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{sql.rstrip(';')};\n\\echo {_SENTINEL}\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        rows: list[list[str]] = []
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if line == _SENTINEL:
                return rows
            if line:
                rows.append(line.split(_UNIT))
        self._proc.wait()
        stderr = self._proc.stderr.read() if self._proc.stderr else ""
        raise SessionError(where(self.cluster), server_message(stderr))

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- LSNs and WAL content ----------------------------------------------------------------


def parse_lsn(text: str) -> int:
    high, _, low = text.strip().partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


_XACT = re.compile(
    r"lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: (?:COMMIT|ABORT)(?:_PREPARED)?"
    r"(?: \d+:)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)


def xact_times(bin_dir: Path, directory: Path, first: str, last: str) -> list[tuple[int, datetime]]:
    """(LSN, time) of every commit and abort record in segments first..last of `directory`.

    pg_waldump stops with an error at the end of valid WAL (a record continuing into a
    segment not here yet); the records before it are still good, so stdout is read anyway.
    """
    argv = [str(bin_dir / "pg_waldump"), "-r", "Transaction", "-p", str(directory), first, last]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        raise ProviderError(f"pg_waldump could not read {directory}: {err}") from err
    out = []
    for m in _XACT.finditer(result.stdout):
        when = datetime.fromisoformat(m.group(2)).replace(tzinfo=UTC)
        out.append((parse_lsn(m.group(1)), when))
    return out


# -- server control ----------------------------------------------------------------------


def wait_archived(cluster: Cluster, segment: str, *, timeout_s: float = 120, session: Session | None = None) -> None:
    """Wait until the archiver has archived `segment` (or a later one); ProviderError on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    ask = session.query if session is not None else (lambda sql: query(cluster, sql))
    while True:
        # pg_stat_archiver is a statistics snapshot: clear it, or a session sees the first value forever
        if session is not None:
            session.query("SELECT pg_stat_clear_snapshot()")
        row = ask(
            "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver"
        )[0]
        archived = row[0]
        # only a whole segment counts: after a promotion the archiver's last file may be the old
        # timeline's `.partial` (or a `.history`), which holds none of the new timeline's WAL
        # (a `.backup` file names the segment it was written in; the archiver takes that segment first)
        whole = len(archived) == 24 or archived.endswith(".backup")
        if whole and archived[8:24] >= segment[8:24] and archived[:8] >= segment[:8]:
            return
        if time.monotonic() > deadline:
            failing = f"; the archiver fails on {row[2]} ({row[1]} failures)" if row[2] else ""
            raise ProviderError(
                f"WAL segment {segment} was not archived within {timeout_s:.0f} s{failing}",
                hint="check archive_command with `protectctl apply` and the PostgreSQL log",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def start(
    cluster: Cluster, log_file: Path, *, wait: bool = False, timeout_s: float = 600, server_options: str = ""
) -> None:
    """pg_ctl start; `server_options` goes to the server's command line (pg_ctl -o: one shell-quoted
    string, see restore_config.server_options), where it beats every configuration file."""
    argv = [cluster.bin("pg_ctl"), "-D", str(cluster.data_dir), "-l", str(log_file), "-s"]
    if server_options:
        argv += ["-o", server_options]
    argv += ["-w", "-t", str(int(timeout_s))] if wait else ["-W"]
    run(cluster, [*argv, "start"], timeout_s=timeout_s + 30)


def stop(cluster: Cluster, *, mode: str = "fast", timeout_s: float = 300) -> None:
    run(
        cluster,
        [cluster.bin("pg_ctl"), "-D", str(cluster.data_dir), "-m", mode, "-w", "-s", "-t", str(int(timeout_s)), "stop"],
        timeout_s=timeout_s + 30,
    )


def running(cluster: Cluster) -> bool:
    result = run(cluster, [cluster.bin("pg_ctl"), "-D", str(cluster.data_dir), "status"], check=False)
    return result.returncode == 0


def restart(cluster: Cluster, *, log_file: Path, timeout_s: float = 300) -> None:
    # pg_ctl restart reuses postmaster.opts, so a cluster started with -c config_file=... keeps it;
    # -l: without it the server would inherit our pipes and the call would never return
    run(
        cluster,
        [
            cluster.bin("pg_ctl"),
            "-D",
            str(cluster.data_dir),
            "-l",
            str(log_file),
            "-m",
            "fast",
            "-w",
            "-s",
            "-t",
            str(int(timeout_s)),
            "restart",
        ],
        timeout_s=timeout_s + 30,
    )


def literal(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def show_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else "?"
