"""Restore of one database under a new name into a running cluster (`restore --database X
--as Y`), through a temporary cluster restored beside it and pg_dump/pg_restore."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from protectctl.errors import ProviderError, RestoreError
from protectctl.provider import RestoreOutcome, RestoreRequest
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql.catalog import Catalog, RestorePlan
from protectctl.providers.postgresql.cluster import Cluster
from protectctl.providers.postgresql.restore_cluster import ClusterRestore, free_port

_DAY_S = 24 * 3600.0


def restore_database(
    request: RestoreRequest, catalog: Catalog, plan: RestorePlan, database: str, as_name: str
) -> RestoreOutcome:
    """One database under a new name in a running cluster, through a temporary restored cluster."""
    if not as_name:
        raise RestoreError("--database needs --as NAME: the database is restored under a new name")
    # with --database, --port names the running cluster to load into
    into = Cluster.from_spec(request.spec, port=int(str(request.options.get("port") or request.spec.get("port", 5432))))
    problem = pg.connect_error(into)
    if problem is not None:
        raise RestoreError(
            f"cannot reach the cluster to load into ({pg.where(into)}): {problem}",
            hint="start it, or fix port/socketDir/user (with --database, --port names it)",
        )
    if pg.query(into, f"SELECT 1 FROM pg_database WHERE datname = {pg.literal(as_name)}"):
        raise RestoreError(
            f"database {as_name!r} already exists in the cluster on port {into.port}",
            hint="choose another name with --as",
        )
    parent = request.target if request.target is not None else into.data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".protectctl-pgdb-", dir=parent))
    uid, gid = into.ids()
    os.chown(work, uid, gid)
    temp = None
    try:
        port = free_port(into.socket_dir, into.port + 1)
        sub = replace(request, target=work / "data", options={**request.options, "port": port}, overwrite=False)
        restored = ClusterRestore(sub, catalog, plan).run()
        if request.dry_run:
            return replace(restored, notes=(*restored.notes, f"then database {database} would be loaded as {as_name}"))
        temp = Cluster.from_spec(request.spec, data_dir=work / "data", port=port)
        row = pg.query(
            temp,
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
            f"WHERE datname = {pg.literal(database)}",
        )
        if not row:
            names = [r[0] for r in pg.query(temp, "SELECT datname FROM pg_database WHERE NOT datistemplate")]
            raise RestoreError(
                f"database {database!r} did not exist at that time", hint=f"databases then: {', '.join(names)}"
            )
        dump = work / "database.dump"
        # dump and load take as long as the database is big: pg.run's 10-minute default would cut them
        pg.run(temp, [temp.bin("pg_dump"), "-Fc", *pg.conn_args(temp), "-f", str(dump), database], timeout_s=_DAY_S)
        encoding, collate, ctype = row[0]
        pg.run(
            into,
            [
                into.bin("createdb"),
                *pg.conn_args(into),
                "-T",
                "template0",
                "-E",
                encoding,
                "--lc-collate",
                collate,
                "--lc-ctype",
                ctype,
                as_name,
            ],
        )
        pg.run(
            into,
            [into.bin("pg_restore"), *pg.conn_args(into), "-d", as_name, "--no-password", str(dump)],
            timeout_s=_DAY_S,
        )
        details = {**restored.details, "database": database, "as": as_name, "loaded_into_port": into.port}
        notes = (
            *restored.notes[:2],
            f"database {database} loaded as {as_name} into the cluster on port "
            f"{into.port}; the temporary cluster was removed",
        )
        return dataclasses.replace(restored, target=into.data_dir, written=True, notes=notes, details=details)
    finally:
        if temp is not None:
            with contextlib.suppress(ProviderError):
                if pg.running(temp):
                    pg.stop(temp, mode="immediate")
        elif not request.dry_run:
            with contextlib.suppress(ProviderError):
                leftover = Cluster.from_spec(request.spec, data_dir=work / "data")
                if (work / "data" / "postmaster.pid").exists() and pg.running(leftover):
                    pg.stop(leftover, mode="immediate")
        shutil.rmtree(work, ignore_errors=True)
