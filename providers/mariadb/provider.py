"""The MariaDB provider: hot physical backups, binlog shipping, restore to any time.

Member spec (`mariadb:`, spec.py): ``dataDir`` (absolute, required), ``socket``, ``osUser``,
``binDir``, ``serverBin``, ``allowRestart`` (+ ``restartCommand``, ``configFile``),
``credentials: {file: ...}`` (default: Unix-socket authentication as osUser). See
docs/mariadb.md.

This class is thin: each job lives in its module, imported when the job runs, so loading the
provider (as `validate` does) costs its spec model only.

* prepare (apply): prepare.py: binary logging on (log_bin, ROW format, a server_id).
* a primary/replica pair (`hosts:`): pair.py picks the server a job or a restore runs against.
* full and sync: backup.py (mariadb-backup's stream through the dedup engine; binlog shipping);
  express.py decides whether a full is an express one (only the pages changed since the
  previous full) or a real one, and says why.
* restore: catalog.py plans it (full + binlogs for the time asked), restore_server.py restores
  a new server, restore_database.py one database under a new name into the running server.
* points list, status, prune: catalog.py (windows, gaps, the role of a point in the chain).

Everything MariaDB runs goes through server.py as the OS user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from protectctl.errors import RestoreError
from protectctl.provider import (
    ContentListing,
    ContentWindow,
    JobPlacement,
    PrepareOutcome,
    PrepareRequest,
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SpecProblem,
    Traits,
)
from protectctl.providers._common import data_dir_identity, pair_source_spec
from protectctl.providers.mariadb.spec import MariadbMember

if TYPE_CHECKING:
    from protectctl.provider import Point
    from protectctl.providers.mariadb.catalog import Catalog, RestorePlan


class MariadbProvider:
    """A MariaDB (or MySQL-compatible MariaDB) server: one data directory on a host."""

    kind = "mariadb"
    spec_model = MariadbMember
    traits = Traits(application=True, continuous_log_shipping=True, multi_host=True)
    restore_options = frozenset({"port", "database", "as_name", "to_gtid"})
    content_type = "database"
    content_hint = "protectctl restore {source} --to-time TIME --database {name} --as NEW_NAME"

    # -- validate ------------------------------------------------------------------------

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        assert isinstance(spec, MariadbMember)
        problems: list[SpecProblem] = []
        if hosts is None and spec.per_host:
            problems.append(
                SpecProblem(
                    ("perHost",),
                    "perHost is for a member with `hosts:` (a primary/replica pair)",
                    "move the values into the member's mariadb fields",
                )
            )
        for host in spec.per_host if hosts is not None else ():
            if host not in (hosts or ()):
                problems.append(
                    SpecProblem(
                        ("perHost", host),
                        f"perHost names {host!r}, which is not one of the pair's hosts",
                        f"use one of: {', '.join(hosts or ())}",
                    )
                )
        if not spec.restart_command:
            problems.append(SpecProblem(("restartCommand",), "restartCommand must name a program"))
        if not spec.allow_restart:
            problems.append(
                SpecProblem(
                    ("allowRestart",),
                    f"{source}: apply will not restart MariaDB; if binary logging is off, apply "
                    "refuses and names the setting to change",
                    "set `allowRestart: true` to let apply turn it on",
                    warning=True,
                )
            )
        return problems

    def source_spec(self, spec: Mapping[str, object], hosts: Mapping[str, str] | None) -> dict[str, object]:
        """A pair's spec gets `nodes`: each host's server (member defaults + perHost) and where its
        agent keeps state. Which server is primary is only known when a job runs (pair.py)."""
        from protectctl.providers.mariadb.pair import NODE_KEYS

        return pair_source_spec(spec, hosts, NODE_KEYS, state_dir_first=True)

    def source_identity(self, spec: Mapping[str, object], host: str) -> str:
        return data_dir_identity(spec, host)

    def place_job(
        self, source: str, spec: Mapping[str, object], kind: Literal["sync", "full"], state_dir: Path
    ) -> JobPlacement:
        from protectctl.providers.mariadb import pair

        return pair.place_job(source, spec, kind, state_dir)

    # -- prepare (apply) -----------------------------------------------------------------

    def prepare_host(self, request: PrepareRequest) -> PrepareOutcome:
        from dataclasses import replace

        from protectctl.providers.mariadb.pair import node_spec
        from protectctl.providers.mariadb.prepare import prepare_host

        return prepare_host(replace(request, spec=node_spec(request.spec)))

    def prepare_notes(self, spec: Mapping[str, object]) -> list[str]:
        from protectctl.providers.mariadb.express import plan_note
        from protectctl.providers.mariadb.prepare import notes

        return [*notes(spec), plan_note(spec)]

    def preview_prepare(self, request: PrepareRequest) -> PrepareOutcome:
        from dataclasses import replace

        from protectctl.providers.mariadb.pair import node_spec
        from protectctl.providers.mariadb.prepare import preview

        return preview(replace(request, spec=node_spec(request.spec)))

    # -- backups -------------------------------------------------------------------------

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        from protectctl.providers.mariadb import backup
        from protectctl.providers.mariadb.server import Server

        server = Server.from_spec(request.spec)
        if request.kind == "full":
            return backup.full_backup(request, server, no_express=request.options.get("express") is False)
        return backup.ship(request, server)

    # -- points, status, retention -------------------------------------------------------

    def recovery_windows(self, points: Sequence[Point]) -> list[str]:
        from protectctl.providers.mariadb import express
        from protectctl.providers.mariadb.catalog import build_catalog, describe_windows

        catalog = build_catalog(points)
        return describe_windows(catalog) + express.describe(catalog)

    def list_contents(self, points: Sequence[Point], to_time: datetime | Literal["latest"]) -> ContentListing:
        """The databases of the full backup a restore to `to_time` starts from (`ls`)."""
        from protectctl.providers._common import database_listing
        from protectctl.providers.mariadb.catalog import build_catalog, plan_restore, span_of

        plan = plan_restore(build_catalog(points), to_time, source=points[0].source if points else "")
        return database_listing(points, span_of(plan.window), "mariadb")

    def content_windows(self, name: str, points: Sequence[Point]) -> list[ContentWindow]:
        """The recoverable windows whose full backup holds database `name` (`versions`)."""
        from protectctl.providers._common import database_windows
        from protectctl.providers.mariadb.catalog import build_catalog, spans

        return database_windows(name, points, spans(build_catalog(points)), "mariadb")

    def status_problems(
        self, source: str, spec: Mapping[str, object], points: Sequence[Point], state_dir: Path
    ) -> list[str]:
        from protectctl.providers.mariadb.catalog import build_catalog

        catalog = build_catalog([p for p in points if p.source == source])
        return [f"point-in-time recovery gap: {g.describe()}" for g in catalog.gaps] + [
            f"express full {point[:12]} cannot be restored: its base {base[:12]} is not in the repository "
            "(the next full is a real one)"
            for point, base in catalog.orphans
        ]

    def point_role(self, point: Point) -> Literal["base", "log", "point"]:
        from protectctl.providers.mariadb.catalog import point_role

        return point_role(point)

    # -- choosing and restoring ----------------------------------------------------------

    def choose_point(
        self,
        points: Sequence[Point],
        to_time: datetime | Literal["latest"],
        *,
        source: str,
        options: Mapping[str, object] | None = None,
    ) -> Point:
        from protectctl.providers.mariadb.catalog import build_catalog

        plan = _plan(build_catalog(points), to_time, options or {}, source)
        return next(p for p in points if p.id == plan.base.point_id)

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        from protectctl.providers.mariadb import pair
        from protectctl.providers.mariadb.catalog import build_catalog
        from protectctl.providers.mariadb.restore_database import restore_database
        from protectctl.providers.mariadb.restore_server import ServerRestore

        database = request.options.get("database")
        as_name = request.options.get("as_name")
        if as_name and not database:
            raise RestoreError("--as names the restored copy of --database; give --database too")
        if database and not as_name:
            raise RestoreError(
                "--database needs --as NAME: the database is restored under a new name into the running server"
            )
        request = pair.restore_request(request)
        catalog = build_catalog(request.points)
        to_time = request.to_time if request.to_time is not None else "latest"
        plan = _plan(catalog, to_time, request.options, request.source)
        if database:
            return restore_database(request, catalog, plan, str(database), str(as_name))
        return ServerRestore(request, catalog, plan).run()


def _plan(
    catalog: Catalog, to_time: datetime | Literal["latest"], options: Mapping[str, object], source: str
) -> RestorePlan:
    """To a GTID (`--to-gtid`, with `--to-time latest` or none) or to a time."""
    from protectctl.providers.mariadb.catalog import plan_restore, plan_restore_gtid

    gtid = options.get("to_gtid")
    if gtid is None:
        return plan_restore(catalog, to_time, source=source)
    if to_time != "latest":
        raise RestoreError("give --to-time or --to-gtid, not both: a GTID names the instant itself")
    return plan_restore_gtid(catalog, str(gtid), source=source)
