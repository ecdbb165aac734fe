"""Apply's preparation of a PostgreSQL host: WAL archiving into the spool.

``wal_level >= replica``, ``archive_mode = on`` and an ``archive_command`` that spools each
completed segment (wal.py, installed beside the spool so the PostgreSQL OS user can run it);
reload; restart only with ``allowRestart``; then ``pg_switch_wal()`` and wait for the
segment to reach the spool.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from protectctl.errors import ProviderError
from protectctl.provider import PrepareOutcome, PrepareRequest, safe_name
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql import pair
from protectctl.providers.postgresql.cluster import Cluster
from protectctl.providers.postgresql.spool import archive_command, install_spool, spool_dir, spool_limit


def prepare_host(request: PrepareRequest) -> PrepareOutcome:
    request = replace(request, spec=pair.node_spec(request.spec))  # a pair: this host's cluster
    cluster = Cluster.from_spec(request.spec)
    problem = pg.connect_error(cluster)
    if problem is not None:
        raise ProviderError(
            f"cannot reach PostgreSQL of {request.source} at {pg.where(cluster)}: {problem}",
            hint="start the cluster (or fix port/socketDir/osUser/user), then run apply again",
        )
    spool = spool_dir(request.spec, request.source, request.state_dir)
    install_spool(cluster, spool)
    want = archive_command(spool, spool_limit(request.spec))
    running = dict(
        (r[0], r[1])
        for r in pg.query(
            cluster,
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'archive_mode', 'archive_command')",
        )
    )
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
