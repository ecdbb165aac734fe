"""Drift (`plan --refresh`): what differs on the hosts from what apply wrote there.

Apply records, per resource, the digest of every file it wrote, the agent it installed and the
passphrase copies it placed; this module reads them back over each host's connection.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from protectctl.apply.effects import secret_drift
from protectctl.errors import RemoteError
from protectctl.provision.agent_install import read_marker
from protectctl.provision.host import HostConnection, connect, digest
from protectctl.state.model import ResourceState, State


def drift(state: State, warnings: list[str] | None = None) -> dict[str, str]:
    """What differs on the hosts from what apply wrote: address → description (`--refresh`).

    Hosts are read in parallel; an unreachable host is reported in `warnings` and its
    resources are left out (the plan leaves them untouched).
    """
    hosts = {a.split(".", 1)[1]: rec.inputs for a, rec in state.resources.items() if rec.kind == "host"}
    by_host: dict[str, list[tuple[str, ResourceState]]] = {}
    for address, rec in state.resources.items():
        if rec.host is not None and (
            rec.outputs.get("files") or rec.outputs.get("install") or rec.outputs.get("secret_files")
        ):
            by_host.setdefault(rec.host, []).append((address, rec))

    def read_host(host: str) -> tuple[dict[str, str], str | None]:
        inputs: dict[str, Any] = hosts.get(host, {})
        conn = connect(host, str(inputs.get("address", "local")), inputs, hosts)
        found: dict[str, str] = {}
        try:
            for address, rec in by_host[host]:
                problems = drift_of(conn, rec)
                if problems:
                    found[address] = "; ".join(problems)
        except RemoteError as err:
            return {}, f"host {host} could not be refreshed, its resources are left as they are: {err.message}"
        finally:
            conn.close()
        return found, None

    drifted: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(by_host)))) as pool:
        for found, warning in pool.map(read_host, sorted(by_host)):
            drifted.update(found)
            if warning and warnings is not None:
                warnings.append(warning)
    return drifted


def drift_of(conn: HostConnection, rec: ResourceState) -> list[str]:
    """What differs on `conn`'s host from what apply recorded for one resource."""
    problems = []
    installed = rec.outputs.get("install")
    venv = (rec.inputs.get("install") or {}).get("venv")
    if installed and venv:
        marker = read_marker(conn, str(venv))
        if marker is None:
            problems.append(f"the agent in {venv} is missing")
        elif marker != installed:
            problems.append(
                f"the agent in {venv} is {marker.get('version')} (digest {marker.get('digest')}), "
                f"apply installed {installed.get('version')} (digest {installed.get('digest')})"
            )
    for path, want in sorted(rec.outputs.get("files", {}).items()):
        data = conn.read_file(path)
        if data is None:
            problems.append(f"{path} is missing")
        elif digest(data) != want:
            problems.append(f"{path} was changed on the host")
    if rec.outputs.get("secret_files"):
        problems += secret_drift(conn, rec)
    return problems
