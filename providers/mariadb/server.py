"""Talking to one MariaDB server: the one process gateway of the mariadb provider.

Every MariaDB tool (mariadb, mariadb-backup, mariadb-binlog, mbstream) runs as the server's
OS user: when protectctl runs as root, argv is prefixed with `runuser -u USER --`, so the
tools read the data directory as its owner and authenticate over the Unix socket as that
user (MariaDB's `unix_socket` plugin) unless `credentials` names an option file. That file is
read by protectctl and handed to the tools as a private copy (`--defaults-file`, mode 0600,
owned by the OS user, removed afterwards): a password is never on a command line. The
private option file is also what keeps /etc/mysql out of the tools' way: they read only it.

Commands are argv lists, never shell strings. Failures become ProviderError naming the tool
and the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protectctl.errors import ProviderError

_SEP = "\t"


@dataclass(frozen=True, slots=True)
class Server:
    data_dir: Path
    socket: Path
    os_user: str
    bin_dir: Path
    server_bin: Path
    credentials: Path | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, object], **override: object) -> Server:
        creds = spec.get("credentials")
        cred_file = creds.get("file") if isinstance(creds, Mapping) else None
        values: dict[str, object] = {
            "data_dir": Path(str(spec["data_dir"])),
            "socket": Path(str(spec.get("socket") or "/run/mysqld/mysqld.sock")),
            "os_user": str(spec.get("os_user") or "mysql"),
            "bin_dir": Path(str(spec.get("bin_dir") or "/usr/bin")),
            "server_bin": Path(str(spec.get("server_bin") or "/usr/sbin/mariadbd")),
            "credentials": Path(str(cred_file)) if cred_file else None,
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
                f"OS user {self.os_user!r} does not exist on this host", hint="set osUser to the user MariaDB runs as"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def describe(self) -> str:
        return f"MariaDB at {self.socket}"


def as_user(server: Server, argv: Sequence[str]) -> list[str]:
    """argv run as the server's OS user (through runuser when we are root and someone else)."""
    if os.geteuid() == 0 and server.os_user != "root":
        return ["runuser", "-u", server.os_user, "--", *argv]
    return list(argv)


@contextlib.contextmanager
def option_file(server: Server, work: Path | None = None) -> Iterator[Path]:
    """A private option file for the tools: the [client] socket, plus the credentials file's
    content when the spec names one. Owned by the OS user, 0600, removed on exit."""
    parent = Path(tempfile.mkdtemp(prefix=".protectctl-my-", dir=work))
    uid, gid = server.ids() if os.geteuid() == 0 else (os.getuid(), os.getgid())
    try:
        os.chmod(parent, 0o700)
        os.chown(parent, uid, gid)
        text = f"[client]\nsocket={server.socket}\n"
        if server.credentials is not None:
            try:
                text += "\n" + server.credentials.read_text(encoding="utf-8") + "\n"
            except OSError as err:
                raise ProviderError(f"credentials file {server.credentials}: {err.strerror}") from err
        path = parent / "client.cnf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            os.fchown(out.fileno(), uid, gid)
        yield path
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def run(
    server: Server, argv: Sequence[str], *, timeout_s: float = 600, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        result = subprocess.run(
            as_user(server, argv),
            capture_output=True,
            timeout=timeout_s,
            input=stdin,
            check=False,
            cwd="/",
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
        )
    except FileNotFoundError as err:
        raise ProviderError(f"{argv[0]} not found", hint="check binDir in the member spec") from err
    except subprocess.TimeoutExpired as err:
        raise ProviderError(f"{Path(argv[0]).name} did not finish within {timeout_s:.0f} s") from err
    if check and result.returncode != 0:
        raise ProviderError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): {tail(result.stderr.decode(errors='replace'))}"
        )
    return result


def tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(no message)"


class Client:
    """SQL against one server through the `mariadb` client (one process per batch)."""

    def __init__(self, server: Server, options: Path) -> None:
        self.server = server
        self.options = options

    def argv(self, *extra: str) -> list[str]:
        return [self.server.bin("mariadb"), f"--defaults-file={self.options}", *extra]

    def query(self, sql: str, *, database: str | None = None, timeout_s: float = 600) -> list[list[str]]:
        """Rows of `sql` (tab-separated, unescaped text); ProviderError when it fails."""
        argv = self.argv("--batch", "--skip-column-names", "--raw", *([database] if database else []))
        result = run(self.server, argv, timeout_s=timeout_s, check=False, stdin=sql.encode())
        if result.returncode != 0:
            raise ProviderError(f"{self.server.describe()}: {tail(result.stderr.decode(errors='replace'))}")
        return [line.split(_SEP) for line in result.stdout.decode(errors="replace").splitlines()]

    def scalar(self, sql: str) -> str:
        rows = self.query(sql)
        return rows[0][0] if rows and rows[0] else ""

    def variables(self, *names: str) -> dict[str, str]:
        sql = "SELECT " + ", ".join(f"@@GLOBAL.{n}" for n in names)
        row = self.query(sql)[0]
        return dict(zip(names, row, strict=True))

    def reachable(self) -> bool:
        try:
            self.query("SELECT 1", timeout_s=30)
        except ProviderError:
            return False
        return True


@contextlib.contextmanager
def client(server: Server, work: Path | None = None) -> Iterator[Client]:
    with option_file(server, work) as options:
        yield Client(server, options)


def quote_name(name: str) -> str:
    """An SQL identifier, backquoted."""
    return "`" + name.replace("`", "``") + "`"


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# -- a server process started by a restore ---------------------------------------------------


def start_detached(server: Server, defaults_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """Start mariadbd with `defaults_file` in its own session (it outlives protectctl)."""
    argv = [str(server.server_bin), f"--defaults-file={defaults_file}"]
    if os.geteuid() == 0:
        argv.append(f"--user={server.os_user}")
    try:
        with log_file.open("ab") as log:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True, close_fds=True
            )
    except FileNotFoundError as err:
        raise ProviderError(f"{server.server_bin} not found", hint="set serverBin in the member spec") from err


def wait_ready(
    server: Server, proc: subprocess.Popen[bytes], ping: Client, error_log: Path, timeout_s: float = 300
) -> None:
    """Wait until the started server answers; ProviderError with its log when it exits or hangs."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if server.socket.exists() and ping.reachable():
            return
        if proc.poll() is not None:
            raise ProviderError(
                f"mariadbd exited (status {proc.returncode}) before it was ready: {log_tail(error_log)}"
            )
        if time.monotonic() > deadline:
            raise ProviderError(f"mariadbd did not answer within {timeout_s:.0f} s: {log_tail(error_log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def stop_pid(pid_file: Path, timeout_s: float = 120) -> None:
    """Stop the server whose pid file this is (SIGTERM: a clean shutdown) and wait for it."""
    import signal

    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    important = [line for line in text.splitlines() if "ERROR" in line]
    return tail("\n".join(important[-lines:] or text.splitlines()[-lines:]), lines)


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def show_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "?"
