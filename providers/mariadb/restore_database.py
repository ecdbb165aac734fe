"""Restore of one database under a new name into the running server (`restore --database X
--as Y`): a temporary server is restored and rolled forward beside it (restore_server.py),
X is dumped from it with mariadb-dump and loaded into Y of the source server; the temporary
server is stopped and removed whatever happens. The original database is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from protectctl.errors import ProviderError, RestoreError
from protectctl.provider import RestoreOutcome, RestoreRequest
from protectctl.providers.mariadb import server as my
from protectctl.providers.mariadb.catalog import Catalog, RestorePlan
from protectctl.providers.mariadb.restore_server import ServerRestore
from protectctl.providers.mariadb.server import Server

_NAME_MAX = 64


def _check_name(name: str, flag: str) -> None:
    if not name or len(name) > _NAME_MAX or name != name.strip() or "/" in name or "\\" in name or "." in name:
        raise RestoreError(
            f"{flag} {name!r} is not a usable database name",
            hint="1 to 64 characters, no '/', '\\' or '.', no leading or trailing space",
        )


def restore_database(
    request: RestoreRequest, catalog: Catalog, plan: RestorePlan, database: str, as_name: str
) -> RestoreOutcome:
    _check_name(database, "--database")
    _check_name(as_name, "--as")
    if request.options.get("port"):
        raise RestoreError(
            "--port is for a new server: with --database the copy is loaded into the source's running server",
            hint="drop --port",
        )
    into = Server.from_spec(request.spec)
    with my.client(into) as c:
        if not c.reachable():
            raise RestoreError(f"the server to load into ({into.socket}) is not running")
        if c.query(f"SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {my.literal(as_name)}"):
            raise RestoreError(
                f"database {as_name!r} already exists in the server at {into.socket}",
                hint="choose another name with --as",
            )
    parent = request.target if request.target is not None else into.data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".protectctl-mydb-", dir=parent))
    uid, gid = into.ids()
    os.chown(work, uid, gid)
    os.chmod(work, 0o750)
    temp_dir = work / "server"
    try:
        sub = replace(
            request, target=temp_dir, options={**request.options, "port": None, "socket_only": True}, overwrite=False
        )
        restored = ServerRestore(sub, catalog, plan).run()
        if request.dry_run:
            return replace(
                restored,
                notes=(
                    *restored.notes,
                    f"then database {database} would be loaded as {as_name} into the server at {into.socket}",
                ),
            )
        temp = Server.from_spec(request.spec, data_dir=temp_dir / "data", socket=temp_dir / "mysqld.sock")
        dump = work / "database.sql"
        with my.client(temp, work) as t:
            row = t.query(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
                f"information_schema.SCHEMATA WHERE SCHEMA_NAME = {my.literal(database)}"
            )
            if not row:
                names = [
                    r[0]
                    for r in t.query("SHOW DATABASES")
                    if r[0] not in ("information_schema", "performance_schema", "mysql", "sys")
                ]
                raise RestoreError(
                    f"database {database!r} did not exist at that time",
                    hint=f"databases then: {', '.join(names) or 'none'}",
                )
            charset, collation = row[0]
            _dump(temp, t, database, dump)
        with my.client(into) as c:
            c.query(f"CREATE DATABASE {my.quote_name(as_name)} CHARACTER SET {charset} COLLATE {collation}")
            with dump.open("rb") as handle:
                load = subprocess.run(
                    my.as_user(into, c.argv("--binary-mode", as_name)),
                    stdin=handle,
                    capture_output=True,
                    check=False,
                    cwd="/",
                )
            if load.returncode != 0:
                raise ProviderError(
                    f"loading {as_name}: {my.tail(load.stderr.decode(errors='replace'))}",
                    hint=f"the partly loaded database {as_name} is left for inspection",
                )
        details = {**restored.details, "database": database, "as": as_name, "loaded_into": str(into.socket)}
        details.pop("socket", None)
        details.pop("data_dir", None)
        notes = (
            *restored.notes[:3],
            f"database {database} loaded as {as_name} into the server at {into.socket}; "
            "the temporary server was removed",
        )
        return replace(restored, target=into.data_dir, written=True, notes=notes, details=details)
    finally:
        my.stop_pid(temp_dir / "mysqld.pid")
        shutil.rmtree(work, ignore_errors=True)


def _dump(temp: Server, t: my.Client, database: str, out: Path) -> None:
    argv = [
        temp.bin("mariadb-dump"),
        f"--defaults-file={t.options}",
        "--single-transaction",
        "--routines",
        "--triggers",
        "--events",
        "--hex-blob",
        "--skip-dump-date",
        database,
    ]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        proc = subprocess.run(my.as_user(temp, argv), stdout=handle, stderr=subprocess.PIPE, check=False, cwd="/")
    if proc.returncode != 0:
        raise ProviderError(f"mariadb-dump of {database}: {my.tail(proc.stderr.decode(errors='replace'))}")
