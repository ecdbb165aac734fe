"""A MariaDB primary/replica pair protected as one source: which server a job runs against.

A member with `hosts: [db1, db2]` reaches the provider with ``spec["nodes"]``, one entry per
host (``host``, ``data_dir``, ``socket``, ``state_dir``), and, in the source config apply
writes on each host, ``spec["node"]``: the host whose agent reads it. On the control machine
(``-C``) no node is named and every node is a candidate.

Roles are asked of the servers when a job runs (a server with a replication connection,
``SHOW ALL SLAVES STATUS``, is a replica), never remembered, so a failover needs no apply: the
next sync and full run on the promoted server, and the catalog follows the binlogs by GTID
from one server to the other (catalog.py). Replication must use GTIDs and the replica must log
what it replicates (``log_slave_updates``), so its binlogs continue the primary's.

* sync (binlog shipping) runs on the primary; full on the server ``backupFrom`` names.
* any other node says it is not the backup node and the job exits 0.
* restore starts from the server that is primary now (for `latest`'s binlogs still on it,
  and the server a ``--database --as`` restore loads into), else the first reachable one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

from protectctl.errors import ProviderError
from protectctl.provider import JobPlacement, RestoreRequest, SnapshotKind
from protectctl.providers._common import Node, is_pair, pair_node_spec, pair_nodes
from protectctl.providers.mariadb import server as my
from protectctl.providers.mariadb.server import Server

Role = Literal["primary", "replica"]
NODE_KEYS = ("data_dir", "socket")


def nodes(spec: Mapping[str, object]) -> list[Node]:
    return pair_nodes(spec, NODE_KEYS)


def node_spec(spec: Mapping[str, object]) -> Mapping[str, object]:
    """The spec of the node a host's source config names (apply's prepare); else `spec` itself."""
    return pair_node_spec(spec, NODE_KEYS)


def role(spec: Mapping[str, object]) -> Role | None:
    """primary or replica; None when the server cannot be reached."""
    server = Server.from_spec(spec)
    try:
        with my.client(server) as c:
            rows = c.query("SHOW ALL SLAVES STATUS", timeout_s=30)
    except ProviderError:
        return None
    return "replica" if any(r for r in rows) else "primary"  # the default connection's name is ''


def place_job(source: str, spec: Mapping[str, object], kind: SnapshotKind, state_dir: Path) -> JobPlacement:
    if not is_pair(spec):
        return JobPlacement(spec)
    wanted: Role = "primary" if kind == "sync" or spec.get("backup_from") != "replica" else "replica"
    here = spec.get("node")
    candidates = [n for n in nodes(spec) if here is None or n.host == here]
    if not candidates:
        raise ProviderError(f"host {here!r} is not one of the hosts of {source}")
    roles = {n.host: role(n.spec) for n in candidates}
    for node in candidates:
        if roles[node.host] == wanted:
            return JobPlacement(node.spec, node.state_dir, f"{node.host} is the {wanted}", node.host)
    seen = ", ".join(
        f"{n.host} is {'not reachable' if roles[n.host] is None else 'the ' + str(roles[n.host])}" for n in candidates
    )
    rule = "binlogs ship from the primary" if kind == "sync" else f"fulls come from the {wanted} (backupFrom)"
    if here is not None:
        return JobPlacement(None, reason=f"not the backup node: {seen}; {rule}")
    raise ProviderError(
        f"no server of {source} is the {wanted} now ({seen})", hint=f"{rule}; start it, or promote the replica"
    )


def restore_request(request: RestoreRequest) -> RestoreRequest:
    """The request against the server that is primary now (else the first reachable, else the first)."""
    if not is_pair(request.spec):
        return request
    found = nodes(request.spec)
    roles = {n.host: role(n.spec) for n in found}
    chosen = next((n for n in found if roles[n.host] == "primary"), None) or next(
        (n for n in found if roles[n.host] is not None), found[0]
    )
    return replace(request, spec=chosen.spec, state_dir=chosen.state_dir or request.state_dir)
