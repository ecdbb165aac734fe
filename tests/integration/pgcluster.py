"""A real PostgreSQL 15 cluster for tests and benchmarks, run as an unprivileged OS user.

initdb and pg_ctl refuse root, so everything runs through `runuser -u protectctl-pg` (the
user is created on first use when we are root). The cluster listens only on a Unix socket in
a directory that user owns, on a port nobody else uses; archiving is left to apply.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("PROTECTCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "protectctl-pg"


def available() -> str | None:
    """None when a real cluster can run here, else why not."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql-15)"
    if os.geteuid() != 0:
        return "PostgreSQL tests need root (to run the cluster as a separate OS user)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def ensure_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        # not check=True: another pytest-xdist worker may have created it in between (exit 9);
        # getpwnam below still fails when the user really could not be made
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(OS_USER)
        except KeyError:
            raise AssertionError(f"useradd {OS_USER} failed: {made.stderr.strip()}") from None
    return entry.pw_uid, entry.pw_gid


def base_dir(prefix: str = "protectctl-pg-") -> Path:
    """A directory the OS user can traverse (pytest's tmp_path, under /tmp/pytest-of-root, is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PROTECTCTL_PG_TMP", "/tmp")))
    os.chmod(path, 0o755)
    return path


def free_port(start: int = 25432) -> int:
    import socket

    for port in range(start + os.getpid() % 1000, start + 5000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not any(Path(d).joinpath(f".s.PGSQL.{port}").exists() for d in ("/tmp", "/var/run/postgresql")):
            return port
    raise RuntimeError("no free port")


def as_user(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", OS_USER, "--", *argv], capture_output=True, text=True, cwd="/", **kwargs)  # type: ignore[call-overload]


_TEMPLATE: Path | None = None


def _template() -> Path:
    """A fresh initdb data directory (trust, UTF8, C locale), made once per process and never started;
    removed at exit. Clusters copy it: they then share initdb's system identifier, which nothing
    compares across clusters (a standby made by pg_basebackup shares its primary's anyway)."""
    global _TEMPLATE
    if _TEMPLATE is None or not (_TEMPLATE / "PG_VERSION").exists():
        uid, gid = ensure_user()
        base = base_dir("protectctl-pg-template-")
        data = base / "data"
        data.mkdir(mode=0o700)
        os.chown(data, uid, gid)
        result = as_user(
            [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "--no-sync", "-E", "UTF8", "--locale", "C"]
        )
        assert result.returncode == 0, result.stderr
        atexit.register(shutil.rmtree, base, True)
        _TEMPLATE = data
    return _TEMPLATE


class PgCluster:
    def __init__(self, base: Path, port: int | None = None, name: str = "data") -> None:
        self.base = base
        self.data = base / name
        self.sock = base / "sock"
        self.port = port or free_port()
        self.uid, self.gid = ensure_user()

    def spec(self, **extra: object) -> dict[str, object]:
        return {
            "data_dir": str(self.data),
            "port": self.port,
            "socket_dir": str(self.sock),
            "os_user": OS_USER,
            "bin_dir": str(PG_BIN),
            "allow_restart": True,
            **extra,
        }

    def init(self, **settings: str) -> PgCluster:
        self.sock.mkdir(exist_ok=True)
        os.chown(self.sock, self.uid, self.gid)
        # a copy of this process's one initdb output (~0.3 s instead of ~1-4 s per cluster): every
        # cluster starts from the same fresh initdb, as before, only the bootstrap is not redone
        copied = subprocess.run(["cp", "-a", str(_template()), str(self.data)], capture_output=True, text=True)
        assert copied.returncode == 0, copied.stderr
        conf = {
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sock}'",
            "listen_addresses": "''",
            "fsync": "off",
            "full_page_writes": "on",
            "max_wal_senders": "4",
            **settings,
        }
        with (self.data / "postgresql.conf").open("a") as handle:
            handle.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        return self

    def start(self) -> PgCluster:
        result = as_user(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.sock / f"{self.data.name}.log"),
                "-w",
                "-s",
                "start",
            ]
        )
        assert result.returncode == 0, result.stderr + self.log_tail()
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            as_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-s", "stop"])

    def log_tail(self) -> str:
        log = self.sock / f"{self.data.name}.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def sql(self, sql: str, database: str = "postgres", port: int | None = None) -> str:
        result = as_user(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.sock),
                "-p",
                str(port or self.port),
                "-d",
                database,
                "-c",
                sql,
            ]
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def pgbench(self, *args: str) -> str:
        result = as_user([str(PG_BIN / "pgbench"), "-h", str(self.sock), "-p", str(self.port), *args, "postgres"])
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def wait_ready(self, port: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if as_user([str(PG_BIN / "pg_isready"), "-h", str(self.sock), "-p", str(port)]).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(port)


def stop_dir(data: Path) -> None:
    if (data / "postmaster.pid").exists():
        as_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-s", "stop"])
