"""The PostgreSQL provider: application-consistent base backups, WAL shipping, restore to any time.

Member spec (`postgresql:`, spec.py): ``dataDir`` (absolute, required), ``port``,
``socketDir``, ``osUser``, ``user`` (the database role), ``binDir``, ``allowRestart``,
``spoolDir`` (default: beside the agent's state,
``<root>/var/lib/protectctl-spool/<group>--<member>``), ``spoolLimit`` (a size),
``streaming``, ``recoveryTimeout`` (a restore's limit without progress); with ``hosts:``
(a primary/standby pair) ``backupFrom`` and ``perHost`` (see docs/postgresql.md).

This class is thin: each job lives in its module, imported when the job runs, so loading the
provider (as `validate` does) costs its spec model only.

* prepare (apply): prepare.py: WAL archiving into the spool (spool.py, wal.py).
* full and sync: backup.py; a pair's node choice: pair.py; streaming: stream.py.
* restore: catalog.py plans it (base backup + WAL for the time asked), restore_cluster.py
  restores a cluster, restore_database.py one database under a new name.
* status and recovery windows: status.py, catalog.py.

Everything PostgreSQL runs goes through cluster.py as the OS user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from protectctl.errors import ProtectctlError, ProviderError, RestoreError
from protectctl.policy.model import camel
from protectctl.provider import (
    ContentListing,
    ContentWindow,
    JobPlacement,
    PrepareOutcome,
    PrepareRequest,
    RestoreOutcome,
    RestoreRequest,
    Service,
    SnapshotOutcome,
    SnapshotRequest,
    SpecProblem,
    Traits,
)
from protectctl.providers._common import data_dir_identity, pair_source_spec
from protectctl.providers.postgresql.spec import PostgresqlMember

if TYPE_CHECKING:
    from protectctl.provider import Point

_NODE_KEYS = ("data_dir", "port", "socket_dir", "spool_dir")  # what perHost may change on one host
_QUOTED = ("data_dir", "socket_dir", "spool_dir", "bin_dir")  # these go into archive_command


class PostgresqlProvider:
    """A PostgreSQL cluster (one data directory) on a host, or a primary/standby pair."""

    kind = "postgresql"
    spec_model = PostgresqlMember
    traits = Traits(application=True, continuous_log_shipping=True, multi_host=True)
    restore_options = frozenset({"port", "database", "as_name"})
    content_type = "database"
    content_hint = "protectctl restore {source} --to-time TIME --database {name} --as NEW_NAME"

    # -- validate ------------------------------------------------------------------------

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        assert isinstance(spec, PostgresqlMember)
        problems: list[SpecProblem] = []
        for key in _QUOTED:
            if "'" in str(getattr(spec, key) or ""):
                problems.append(
                    SpecProblem(
                        (camel(key),),
                        f"{camel(key)} must not contain a single quote",
                        "it goes into archive_command; choose a path without one",
                    )
                )
        from protectctl.providers.postgresql.restore_config import socket_dir_problem

        socket_dirs = [(("socketDir",), spec.socket_dir)] + [
            (("perHost", host, "socketDir"), node.socket_dir) for host, node in spec.per_host.items() if node.socket_dir
        ]
        for path, value in socket_dirs:
            why = socket_dir_problem(value)
            if why is not None:
                problems.append(
                    SpecProblem(
                        path,
                        f"socketDir {value!r} cannot be used: {why}",
                        "a restored copy is started with it on the server's command line",
                    )
                )
        if hosts is None and spec.per_host:
            problems.append(
                SpecProblem(
                    ("perHost",),
                    "perHost is for a member with `hosts:` (a primary/standby pair)",
                    "move the values into the member's postgresql fields",
                )
            )
        for host in spec.per_host if hosts is not None else ():
            if hosts is not None and host not in hosts:
                problems.append(
                    SpecProblem(
                        ("perHost", host),
                        f"perHost names {host!r}, which is not one of the pair's hosts",
                        f"use one of: {', '.join(hosts or ())}",
                    )
                )
        if not spec.allow_restart:
            problems.append(
                SpecProblem(
                    ("allowRestart",),
                    f"{source}: apply will not restart PostgreSQL; if wal_level or "
                    "archive_mode must change, WAL archiving (and so point-in-time recovery) starts "
                    "only at the cluster's next restart",
                    "set `allowRestart: true` to let apply restart it",
                    warning=True,
                )
            )
        return problems

    def source_spec(self, spec: Mapping[str, object], hosts: Mapping[str, str] | None) -> dict[str, object]:
        """A pair's spec gets `nodes`: each host's cluster (member defaults + perHost) and where its
        agent keeps state. Which node is primary is only known when a job runs (pair.py)."""
        return pair_source_spec(spec, hosts, _NODE_KEYS)

    def source_identity(self, spec: Mapping[str, object], host: str) -> str:
        return data_dir_identity(spec, host)

    def services(self, spec: Mapping[str, object]) -> list[Service]:
        return [Service("stream", "WAL streaming", ("wal-stream",))] if spec.get("streaming") else []

    # -- prepare (apply) -----------------------------------------------------------------

    def prepare_host(self, request: PrepareRequest) -> PrepareOutcome:
        from protectctl.providers.postgresql.prepare import prepare_host

        return prepare_host(request)

    def prepare_notes(self, spec: Mapping[str, object]) -> list[str]:
        from protectctl.providers.postgresql.prepare import notes

        return notes(spec)

    def preview_prepare(self, request: PrepareRequest) -> PrepareOutcome:
        from protectctl.providers.postgresql.prepare import preview

        return preview(request)

    # -- backups -------------------------------------------------------------------------

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        from protectctl.providers.postgresql import backup
        from protectctl.providers.postgresql.cluster import Cluster
        from protectctl.providers.postgresql.spool import spool_dir

        cluster = Cluster.from_spec(request.spec)
        spool = spool_dir(request.spec, request.source, request.state_dir)
        if not spool.is_dir():
            raise ProviderError(
                f"the WAL spool {spool} of {request.source} does not exist",
                hint="run `protectctl apply` to configure WAL archiving",
            )
        if request.kind == "full":
            return backup.FullBackup(request, cluster, spool).run()
        return backup.ship(request, cluster, spool)

    def place_job(
        self, source: str, spec: Mapping[str, object], kind: Literal["sync", "full"], state_dir: Path
    ) -> JobPlacement:
        from protectctl.providers.postgresql import pair

        return pair.place_job(source, spec, kind, state_dir)

    def stream_logs(self, source: str, spec: Mapping[str, object], state_dir: Path, log: Callable[[str], None]) -> None:
        """Run the source's WAL receiver (`streaming: true`) until SIGTERM: the agent's service."""
        from protectctl.providers.postgresql import pair, stream

        spec = pair.node_spec(spec)
        if not spec.get("streaming"):
            raise ProtectctlError(f"{source} does not stream WAL", hint="set `streaming: true` in its postgresql spec")
        if pair.is_pair(spec):
            raise ProtectctlError(
                f"{source} is a pair: its receiver runs on each host",
                hint="run it with --agent-config on the host (apply installs the service there)",
            )
        stream.run_receiver(spec, source, state_dir, log)

    # -- points, status ------------------------------------------------------------------

    def recovery_windows(self, points: Sequence[Point]) -> list[str]:
        from protectctl.providers.postgresql.catalog import build_catalog, describe_windows

        return describe_windows(build_catalog(points))

    def list_contents(self, points: Sequence[Point], to_time: datetime | Literal["latest"]) -> ContentListing:
        """The databases of the base backup a restore to `to_time` starts from (`ls`)."""
        from protectctl.providers._common import database_listing
        from protectctl.providers.postgresql.catalog import build_catalog, plan_restore, span_of

        catalog = build_catalog(points)
        plan = plan_restore(catalog, to_time, source=points[0].source if points else "")
        return database_listing(points, span_of(catalog, plan.window), "pg")

    def content_windows(self, name: str, points: Sequence[Point]) -> list[ContentWindow]:
        """The recoverable windows whose base backup holds database `name` (`versions`)."""
        from protectctl.providers._common import database_windows
        from protectctl.providers.postgresql.catalog import build_catalog, spans

        return database_windows(name, points, spans(build_catalog(points)), "pg")

    def status_problems(
        self, source: str, spec: Mapping[str, object], points: Sequence[Point], state_dir: Path
    ) -> list[str]:
        from protectctl.providers.postgresql.status import status_problems

        return status_problems(source, spec, points, state_dir)

    # -- choosing and restoring ----------------------------------------------------------

    def choose_point(
        self,
        points: Sequence[Point],
        to_time: datetime | Literal["latest"],
        *,
        source: str,
        options: Mapping[str, object] | None = None,
    ) -> Point:
        from protectctl.providers.postgresql.catalog import build_catalog, plan_restore

        plan = plan_restore(build_catalog(points), to_time, source=source)
        return next(p for p in points if p.id == plan.base.point_id)

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        from protectctl.providers.postgresql import pair
        from protectctl.providers.postgresql.catalog import build_catalog, plan_restore
        from protectctl.providers.postgresql.restore_cluster import ClusterRestore, check_readable
        from protectctl.providers.postgresql.restore_database import restore_database

        database = request.options.get("database")
        if request.options.get("as_name") and not database:
            raise RestoreError("--as names the restored copy of --database; give --database too")
        request = pair.restore_request(request)
        check_readable(request)
        points = list(request.points)
        catalog = build_catalog(points)
        to_time = request.to_time if request.to_time is not None else "latest"
        plan = plan_restore(catalog, to_time, source=request.source)
        if database:
            return restore_database(request, catalog, plan, str(database), str(request.options.get("as_name") or ""))
        return ClusterRestore(request, catalog, plan, points).run()
