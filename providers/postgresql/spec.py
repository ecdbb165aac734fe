"""The `postgresql:` member spec: its model only (pydantic and protectctl's pure policy
helpers), so a policy validates without importing the rest of the provider."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protectctl.policy.model import CamelSpec, DurationText, Name, SizeText
from protectctl.units import ByteSize, Duration

# A role name as protectctl passes it (`-U ROLE` to every client): PostgreSQL's unquoted identifiers plus
# the characters roles commonly carry (`app.reader`, `backup@corp`, `etl-1`); at most 63 bytes.
ROLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.@$-]{0,62}$"


class PostgresqlNodeSpec(CamelSpec):
    """One host of a primary/standby pair where its cluster differs from the member's defaults."""

    data_dir: str | None = Field(None, pattern=r"^/")
    port: int | None = Field(None, ge=1, le=65535)
    socket_dir: str | None = Field(None, pattern=r"^/")
    spool_dir: str | None = Field(None, pattern=r"^/")


class PostgresqlMember(CamelSpec):
    data_dir: str = Field(pattern=r"^/", description="the cluster's absolute data directory")
    port: int = Field(5432, ge=1, le=65535)
    socket_dir: str = Field("/var/run/postgresql", pattern=r"^/", description="unix_socket_directories entry")
    os_user: str = Field("postgres", description="the OS user PostgreSQL runs as; its binaries never run as root")
    user: str | None = Field(
        None,
        pattern=ROLE_PATTERN,
        description="the database role protectctl connects as "
        "(`-U` to psql, pg_dump, pg_receivewal, ...; default: the role named like osUser); "
        "it needs the rights of a backup role (pg_backup_start, pg_switch_wal, ...)",
    )
    bin_dir: str = Field("/usr/lib/postgresql/15/bin", pattern=r"^/")
    allow_restart: bool = Field(False, description="apply may restart the cluster when archiving needs it")
    spool_dir: str | None = Field(
        None,
        pattern=r"^/",
        description="where archive_command spools WAL for the "
        "agent (default: <host root>/var/lib/protectctl-spool/<group>--<member>)",
    )
    spool_limit: SizeText = Field(
        default_factory=lambda: ByteSize.parse("4GiB"),
        description="past this, segments are dropped loudly instead of filling the disk",
    )
    streaming: bool = Field(False, description="stream WAL with pg_receivewal (RPO of seconds)")
    backup_from: Literal["primary", "standby"] = Field(
        "primary",
        description="a member with `hosts:` (a primary/standby pair): base backups run on the node "
        "that is primary now, or on a standby; WAL always ships from the primary",
    )
    per_host: dict[Name, PostgresqlNodeSpec] = Field(
        default_factory=dict,
        description="a member with `hosts:`: what differs on one host of the pair "
        "(dataDir, port, socketDir, spoolDir); the other fields apply to every host",
    )
    recovery_timeout: DurationText = Field(
        default_factory=lambda: Duration.parse("10m"),
        description="a restore gives up when the restored cluster makes no recovery progress (no WAL replayed, "
        "restored or decrypted, no new recovery stage) for this long, showing the end of its log; "
        "slow but moving recovery never times out",
    )
