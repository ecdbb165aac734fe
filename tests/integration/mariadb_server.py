"""A real MariaDB server for tests and benchmarks, run as the `mysql` OS user.

mariadb-install-db makes a data directory in a temporary base directory (0755, owned by the
OS user: the server creates its socket, pid and log files there); mariadbd runs with
`--no-defaults` (nothing of /etc/mysql), listens on 127.0.0.1 on a free port and on its own
socket, with binary logging on in row format.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

OS_USER = "mysql"
SERVER = Path(os.environ.get("PROTECTCTL_MARIADBD", "/usr/sbin/mariadbd"))


def available() -> str | None:
    """None when a real server can run here, else why not."""
    if not SERVER.exists() or shutil.which("mariadb-install-db") is None:
        return "MariaDB not found (apt-get install mariadb-server mariadb-client)"
    if shutil.which("mariadb-backup") is None or shutil.which("mbstream") is None:
        return "mariadb-backup not found (apt-get install mariadb-backup)"
    if os.geteuid() != 0:
        return "MariaDB tests need root (to run the server as its own OS user)"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"OS user {OS_USER} is missing (it comes with mariadb-server)"
    return None


_GIVEN: set[int] = set()  # ports handed out in this process, for servers that have not bound them yet


def free_port(start: int = 33060) -> int:
    for port in range(start + os.getpid() % 1000, start + 5000):
        if port in _GIVEN:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port")


def as_user(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", OS_USER, "--", *argv], capture_output=True, text=True, cwd="/", **kwargs)  # type: ignore[call-overload]


class MariadbServer:
    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(
            tempfile.mkdtemp(prefix="protectctl-my-", dir=os.environ.get("PROTECTCTL_MY_TMP", "/tmp"))
        )
        entry = pwd.getpwnam(OS_USER)
        os.chmod(self.base, 0o755)
        os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self.data = self.base / "data"
        self.sock = self.base / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: tuple[str, ...] = ()  # options of the first start, kept for a restart

    def spec(self) -> dict[str, object]:
        return {"data_dir": str(self.data), "socket": str(self.sock), "os_user": OS_USER, "server_bin": str(SERVER)}

    def init(self) -> MariadbServer:
        result = as_user(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ]
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return self

    def copy_of(self, other: MariadbServer) -> MariadbServer:
        """This server's data directory as a copy of `other`'s freshly installed one (before
        either started): a replica to be, without a second mariadb-install-db."""
        subprocess.run(["cp", "-a", str(other.data), str(self.data)], check=True)
        return self

    def replicate_from(self, primary: MariadbServer) -> None:
        """GTID replication from `primary` (which has the `repl` user), from its first binlog on."""
        self.sql(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
            "MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE"
        )

    def caught_up(self, primary: MariadbServer) -> None:
        pos = primary.sql("SELECT @@gtid_binlog_pos")
        assert self.sql(f"SELECT MASTER_GTID_WAIT('{pos}', 60)") == "0", f"replica did not reach {pos}"

    def start(self, *extra: str) -> MariadbServer:
        extra = extra or self.extra
        self.extra = extra
        argv = [
            str(SERVER),
            "--no-defaults",
            f"--user={OS_USER}",
            f"--datadir={self.data}",
            f"--socket={self.sock}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--log-bin=mariadb-bin",
            "--server-id=1",
            "--binlog-format=ROW",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.base / 'mysqld.err'}",
            "--innodb-buffer-pool-size=32M",
            "--skip-name-resolve",
            "--log-slave-updates",
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )
        self.wait_ready(self.sock)
        return self

    def wait_ready(self, sock: Path, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ping = ["mariadb", "--no-defaults", "-S", str(sock), "-e", "SELECT 1"]
            if sock.exists() and as_user(ping).returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None and sock == self.sock:
                raise RuntimeError("mariadbd exited: " + self.log_tail())
            time.sleep(0.05)
        raise TimeoutError(f"{sock}: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash (committed transactions are in the binlog, in the page cache)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        log = self.base / "mysqld.err"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def sql(self, sql: str, sock: Path | None = None, database: str | None = None) -> str:
        argv = ["mariadb", "--no-defaults", "-S", str(sock or self.sock), "--batch", "--skip-column-names"]
        result = as_user([*argv, *([database] if database else []), "-e", sql])
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def stop_restored(target: Path) -> None:
    """Stop a server a restore started in `target` (its pid file) and wait for it to exit."""
    try:
        pid = int((target / "mysqld.pid").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
