"""A PostgreSQL primary/standby pair protected as one source: which node a job runs against.

A member with `hosts: [db1, db2]` reaches the provider with ``spec["nodes"]``, one entry per
host (``host``, ``data_dir``, ``port``, ``socket_dir``, ``spool_dir``, ``state_dir``), and, in
the source config apply writes on each host, ``spec["node"]``: the host whose agent reads it.
On the control machine (``-C``) no node is named and every node is a candidate.

Roles are asked of PostgreSQL when the job runs (``pg_is_in_recovery()``), never remembered,
so a failover needs no apply: the next sync and full run on the promoted node.

* sync (WAL shipping) runs on the primary: only the primary archives (``archive_mode = on``).
  A former primary (a standby now, or down) whose spool still holds WAL ships that too: its
  shutdown switched to a new segment and archived the last one, which no other node has.
* full runs on the node ``backupFrom`` names (default ``primary``). A base backup from a
  standby does not wait for its WAL: the primary archives it and its next sync ships it, and
  the point is restorable from then on (``points list`` shows the window once it is).
* any other node says it is not the backup node and the job exits 0.
* restore starts from the node that is primary now (for ``latest``'s WAL still on the host,
  and the cluster a ``--database --as`` restore loads into), else the first reachable one.

Everything PostgreSQL runs goes through cluster.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

from protectctl.errors import ProviderError
from protectctl.provider import BlobId, JobPlacement, RestoreRequest, SnapshotKind, SnapshotSink, Tree, file_node
from protectctl.providers._common import Node, is_pair, pair_node_spec, pair_nodes
from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql.cluster import Cluster

Role = Literal["primary", "standby"]
_NODE_KEYS = ("data_dir", "port", "socket_dir", "spool_dir")


def nodes(spec: Mapping[str, object]) -> list[Node]:
    """The pair's nodes, each with its own single-cluster spec."""
    return pair_nodes(spec, _NODE_KEYS, mark=True)


def node_spec(spec: Mapping[str, object]) -> Mapping[str, object]:
    """The spec of the node a host's source config names (for apply's prepare); else `spec` itself."""
    return pair_node_spec(spec, _NODE_KEYS, mark=True)


def role(cluster: Cluster) -> Role | None:
    """primary or standby; None when the cluster cannot be reached."""
    try:
        state = pg.scalar(cluster, "SELECT pg_is_in_recovery()")
    except ProviderError:
        return None
    return "standby" if state == "t" else "primary"


def place_job(source: str, spec: Mapping[str, object], kind: SnapshotKind, state_dir: Path) -> JobPlacement:
    """The node `kind` runs against now (see the module docstring); ProviderError when the control
    machine finds no node in the role the job needs."""
    if not is_pair(spec):
        return JobPlacement(spec)
    wanted: Role = "primary" if kind == "sync" else ("standby" if spec.get("backup_from") == "standby" else "primary")
    here = spec.get("node")
    candidates = [n for n in nodes(spec) if here is None or n.host == here]
    if not candidates:
        raise ProviderError(f"host {here!r} is not one of the hosts of {source}")
    roles = {n.host: role(Cluster.from_spec(n.spec)) for n in candidates}
    for node in candidates:
        if roles[node.host] == wanted:
            return JobPlacement(node.spec, node.state_dir, f"{node.host} is the {wanted}", node.host)
    if kind == "sync":  # WAL a former primary archived (its shutdown switches the segment) is shipped
        for node in candidates:
            if roles[node.host] != "primary" and _spool_holds_wal(source, node, state_dir):
                return JobPlacement(
                    node.spec,
                    node.state_dir,
                    f"{node.host} is {_said(roles[node.host])}; its spool still holds WAL it archived as primary",
                    node.host,
                )
    seen = ", ".join(f"{n.host} is {_said(roles[n.host])}" for n in candidates)
    rule = "WAL ships from the primary" if kind == "sync" else f"base backups come from the {wanted} (backupFrom)"
    if here is not None:
        return JobPlacement(None, reason=f"not the backup node: {seen}; {rule}")
    raise ProviderError(
        f"no node of {source} is the {wanted} now ({seen})", hint=f"{rule}; start it, or promote a standby"
    )


def _said(found: Role | None) -> str:
    return "not reachable" if found is None else f"the {found}"


def _spool_holds_wal(source: str, node: Node, state_dir: Path) -> bool:
    from protectctl.providers.postgresql import wal as walspool
    from protectctl.providers.postgresql.spool import spool_dir

    return bool(walspool.spooled_files(spool_dir(node.spec, source, node.state_dir or state_dir)))


def restore_request(request: RestoreRequest) -> RestoreRequest:
    """The request against the node that is primary now (else the first reachable, else the first)."""
    if not is_pair(request.spec):
        return request
    found = nodes(request.spec)
    roles = {n.host: role(Cluster.from_spec(n.spec)) for n in found}
    chosen = next((n for n in found if roles[n.host] == "primary"), None) or next(
        (n for n in found if roles[n.host] is not None), found[0]
    )
    return replace(request, spec=chosen.spec, state_dir=chosen.state_dir or request.state_dir)


def walfile_sql(lsn: str) -> str:
    """SQL naming the WAL file of LSN expression `lsn` on a standby, where pg_walfile_name() is refused:
    the timeline of the last restart point (a base backup's start) and the segment number."""
    size = "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
    segno = f"floor(({lsn} - '0/0'::pg_lsn) / {size})::bigint"
    per = f"(4294967296 / {size})"
    return (
        f"(lpad(upper(to_hex((SELECT timeline_id FROM pg_control_checkpoint()))), 8, '0') || "
        f"lpad(upper(to_hex({segno} / {per})), 8, '0') || lpad(upper(to_hex({segno} % {per})), 8, '0'))"
    )


def control_file_last(sink: SnapshotSink, root: Tree, trees: Mapping[BlobId, Tree], data_dir: Path) -> Tree:
    """`root` (the data directory's tree) with global/pg_control read again now.

    A base backup taken on a standby is consistent once recovery reaches the minRecoveryPoint
    written in its copy of pg_control (PostgreSQL has no end-of-backup record from a standby),
    so pg_control must be read after every other file, as pg_basebackup does: read earlier, it
    could declare the copy consistent before pages read later are replayed.
    """
    folder = next((n for n in root.nodes if n.name == b"global"), None)
    inner = trees.get(folder.subtree) if folder is not None and folder.subtree is not None else None
    if folder is None or inner is None:
        raise ProviderError(f"the base backup of {data_dir} has no global/ directory")
    path = data_dir / "global" / "pg_control"
    with path.open("rb") as handle:  # 8 KiB: one chunk
        st = os.fstat(handle.fileno())
        data = handle.read()
    control = file_node(
        "pg_control", st, size=len(data), chunks=sink.store_content(data), content_hash=sink.hash_content(data)
    )
    inside = [n for n in inner.nodes if n.name != b"pg_control"] + [control]
    subtree = sink.save_tree(Tree(tuple(sorted(inside, key=lambda n: n.name))))
    return Tree(tuple(replace(n, subtree=subtree) if n is folder else n for n in root.nodes))
