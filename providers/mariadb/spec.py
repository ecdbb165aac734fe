"""The `mariadb:` member spec: its model only (pydantic and protectctl's pure policy helpers),
so a policy validates without importing the rest of the provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protectctl.policy.model import CamelSpec, Name


class MariadbCredentials(CamelSpec):
    file: str = Field(
        pattern=r"^/",
        description="an option file with a [client] group (user, password): read by "
        "protectctl and handed to the MariaDB tools in a private copy, never on a command line",
    )


class MariadbNodeSpec(CamelSpec):
    """One host of a primary/replica pair where its server differs from the member's defaults."""

    data_dir: str | None = Field(None, pattern=r"^/")
    socket: str | None = Field(None, pattern=r"^/")


class MariadbMember(CamelSpec):
    data_dir: str = Field(pattern=r"^/", description="the server's absolute data directory (datadir)")
    socket: str = Field("/run/mysqld/mysqld.sock", pattern=r"^/", description="the server's Unix socket")
    os_user: str = Field("mysql", description="the OS user MariaDB runs as; its tools run as that user")
    bin_dir: str = Field(
        "/usr/bin", pattern=r"^/", description="where mariadb, mariadb-backup, mariadb-binlog and mbstream are"
    )
    server_bin: str = Field(
        "/usr/sbin/mariadbd", pattern=r"^/", description="the server binary a restore starts (on the restoring host)"
    )
    allow_restart: bool = Field(
        False, description="apply may restart the server when binary logging must be turned on (with restartCommand)"
    )
    restart_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "restart", "mariadb"],
        description="argv apply runs to restart the server (allowRestart)",
    )
    config_file: str = Field(
        "/etc/mysql/mariadb.conf.d/99-protectctl.cnf",
        pattern=r"^/",
        description="the option file apply writes log_bin, binlog_format and server_id into",
    )
    credentials: MariadbCredentials | None = Field(None, description="default: Unix-socket authentication as osUser")
    express_fulls: int = Field(
        6,
        ge=0,
        le=1000,
        description="express fulls (only the pages changed since the previous full) between two real fulls; "
        "0: every full copies everything",
    )
    express_max_percent: int = Field(
        50,
        ge=1,
        le=1000,
        description="a full is a real one once the express fulls since the last real full together hold this "
        "percentage of its size",
    )
    backup_from: Literal["primary", "replica"] = Field(
        "primary",
        description="a member with `hosts:` (a primary/replica pair, GTID replication, log_slave_updates "
        "on the replica): fulls run on the server that is primary now, or on a replica; binlogs always ship "
        "from the primary",
    )
    per_host: dict[Name, MariadbNodeSpec] = Field(
        default_factory=dict,
        description="a member with `hosts:`: what differs on one host of the pair (dataDir, "
        "socket); the other fields apply to every host",
    )
