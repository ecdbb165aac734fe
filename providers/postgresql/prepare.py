"""Apply's preparation of a PostgreSQL host: WAL archiving into the spool.

``wal_level >= replica``, ``archive_mode = on`` and an ``archive_command`` that spools each
completed segment (wal.py, installed beside the spool so the PostgreSQL OS user can run it);
reload; restart only with ``allowRestart``; then ``pg_switch_wal()`` and wait for the
segment to reach the spool.

`preview` says what `prepare_host` would change, reading only (`plan --refresh`, run on the
source's host: locally, or by its agent over SSH, as the archive_command names that host's paths).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.provider import PrepareOutcome, PrepareRequest, safe_name
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import pair
from protectctl.providers.postgresql.cluster import Cluster
from protectctl.providers.postgresql.spool import (
    SCRIPT_NAME,
    archive_command,
    install_spool,
    spool_dir,
    spool_limit,
)

_SETTINGS_SQL = "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'archive_mode', 'archive_command')"


def notes(spec: Mapping[str, object]) -> list[str]:
    """What apply's prepare does, from the spec alone (the plan's note on the source's change)."""
    where = "each cluster of the pair" if spec.get("nodes") else "the cluster"
    first = (
        f"apply checks WAL archiving on {where}: the archive_command that spools WAL is set at once "
        "(ALTER SYSTEM, reload) where it differs"
    )
    if spec.get("allow_restart"):
        return [
            f"{first}; wal_level (if minimal) and archive_mode (if off) need a restart, which apply does (allowRestart)"
        ]
    return [
        f"{first}; wal_level (if minimal) and archive_mode (if off) need a restart, which allowRestart: false "
        "leaves to the operator: archiving starts only then (`plan --refresh` reads the cluster now)"
    ]


def _unreachable(request: PrepareRequest, cluster: Cluster, problem: str) -> ProviderError:
    return ProviderError(
        f"cannot reach PostgreSQL of {request.source} at {pg.where(cluster)}: {problem}",
        hint="start the cluster (or fix port/socketDir/osUser/user), then run apply again",
    )


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # the spool is the OS user's (0700): a reader that is not root cannot tell
        return True


def preview(request: PrepareRequest) -> PrepareOutcome:
    """What prepare_host would change now (changes) and what it would leave for a restart
    (warnings), reading only; ProviderError when the cluster cannot be reached."""
    request = replace(request, spec=pair.node_spec(request.spec))
    cluster = Cluster.from_spec(request.spec)
    problem = pg.connect_error(cluster)
    if problem is not None:
        raise _unreachable(request, cluster, problem)
    spool = spool_dir(request.spec, request.source, request.state_dir)
    want = archive_command(spool, spool_limit(request.spec))
    rows = pg.query(cluster, _SETTINGS_SQL.replace("name, setting", "name, setting, pending_restart"))
    return preview_outcome(
        {r[0]: r[1] for r in rows},
        {r[0] for r in rows if len(r) > 2 and r[2] == "t"},
        want=want,
        spool=spool,
        spool_ready=_exists(spool / SCRIPT_NAME),
        allow_restart=bool(request.spec.get("allow_restart")),
    )


def preview_outcome(
    running: Mapping[str, str], pending: set[str], *, want: str, spool: Path, spool_ready: bool, allow_restart: bool
) -> PrepareOutcome:
    """What prepare_host would change (pure): from the running settings, those set by ALTER
    SYSTEM and waiting for a restart (`pending`: no change, apply would only set them again),
    the archive_command apply writes and whether the spool's script is installed."""
    changes: list[str] = []
    if not spool_ready:
        changes.append(f"apply will create the WAL spool {spool}")
    restart: list[str] = []
    waiting: list[str] = []
    for name, off, on in (("wal_level", "minimal", "replica"), ("archive_mode", "off", "on")):
        if running.get(name) == off:
            (waiting if name in pending else restart).append(f"{name} {off} -> {on}")
    changes += [f"apply will set {r} (ALTER SYSTEM, at the restart)" for r in restart]
    if running.get("archive_command") != want:
        was = running.get("archive_command") or "unset"
        changes.append(
            f"apply will set archive_command {was!r} -> spool WAL into {spool} (at once, ALTER SYSTEM and reload)"
        )
    warnings: list[str] = []
    if (restart or waiting) and allow_restart:
        changes.append("apply will restart PostgreSQL to apply wal_level/archive_mode (allowRestart)")
    elif restart or waiting:
        warnings.append(
            f"WAL archiving starts only at the next restart of the cluster ({', '.join(restart + waiting)}), "
            "which apply will not do (allowRestart is false): until then no WAL is shipped"
        )
    return PrepareOutcome(tuple(changes), tuple(warnings))


def prepare_host(request: PrepareRequest) -> PrepareOutcome:
    request = replace(request, spec=pair.node_spec(request.spec))  # a pair: this host's cluster
    cluster = Cluster.from_spec(request.spec)
    problem = pg.connect_error(cluster)
    if problem is not None:
        raise _unreachable(request, cluster, problem)
    spool = spool_dir(request.spec, request.source, request.state_dir)
    install_spool(cluster, spool)
    want = archive_command(spool, spool_limit(request.spec))
    running = dict((r[0], r[1]) for r in pg.query(cluster, _SETTINGS_SQL))
    changes: list[str] = []
    needs_restart = False
    if running.get("wal_level") == "minimal":
        pg.query(cluster, "ALTER SYSTEM SET wal_level = 'replica'")
        changes.append("wal_level set to replica")
        needs_restart = True
    if running.get("archive_mode") == "off":
        pg.query(cluster, "ALTER SYSTEM SET archive_mode = 'on'")
        changes.append("archive_mode set to on")
        needs_restart = True
    if running.get("archive_command") != want:
        pg.query(cluster, f"ALTER SYSTEM SET archive_command = {pg.literal(want)}")
        changes.append(f"archive_command set to spool WAL into {spool}")
    pg.query(cluster, "SELECT pg_reload_conf()")
    warnings: list[str] = []
    if needs_restart:
        if not request.spec.get("allow_restart"):
            warnings.append(
                f"{request.source}: WAL archiving is configured but starts only at the next restart of the "
                f"cluster ({' and '.join(changes[:2])} need one; allowRestart is false). Until then no "
                "WAL is shipped and point-in-time recovery is not possible"
            )
            return PrepareOutcome(tuple(changes), tuple(warnings))
        log_file = spool.parent / f"{safe_name(request.source)}.postgresql.log"
        log_file.touch(mode=0o600)
        os.chown(log_file, *cluster.ids())
        pg.restart(cluster, log_file=log_file)
        changes.append(f"(the server's output now goes to {log_file})")
        changes.append("cluster restarted to apply wal_level/archive_mode")
    if pg.scalar(cluster, "SELECT pg_is_in_recovery()") == "t":
        changes.append("a standby: it archives into its spool once promoted")
        return PrepareOutcome(tuple(changes), tuple(warnings))
    time.sleep(0.2)  # the archiver re-reads archive_command on the reload's SIGHUP
    segment = pg.scalar(cluster, "SELECT pg_walfile_name(pg_switch_wal())")
    pg.wait_archived(cluster, segment, timeout_s=60)
    changes.append(f"archiving checked: {segment} reached the spool")
    return PrepareOutcome(tuple(changes), tuple(warnings))
