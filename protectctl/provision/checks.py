"""`hosts check`: each Host reachable with its pinned key, its python, agent, timers, free disk,
and the paths its sources read. Results are data; the CLI renders them (cli/views.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from protectctl import __version__
from protectctl.errors import ProtectctlError, RemoteError
from protectctl.plan.resources import Resource
from protectctl.provision.agent_install import read_marker
from protectctl.provision.host import HostConnection, connect, digest
from protectctl.provision.sources import SourcePath, missing_sources, wanted_paths
from protectctl.state.model import State


@dataclass(frozen=True, slots=True)
class HostCheck:
    """`hosts check` of one host: each check is (what, ok, detail)."""

    host: str
    address: str
    checks: tuple[tuple[str, bool, str], ...]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def check_hosts(resources: Sequence[Resource], read_state: Callable[[], State], name: str | None) -> list[HostCheck]:
    """Check every Host of `resources` (or the one named), in parallel."""
    hosts = {r.address.name: dict(r.inputs) for r in resources if r.address.kind == "host"}
    if name is not None and name not in hosts:
        raise ProtectctlError(f"no Host named {name!r}", hint=f"hosts: {', '.join(sorted(hosts)) or 'none'}")
    state = read_state()
    agents = {r.address.name: dict(r.inputs) for r in resources if r.address.kind == "agent"}
    chosen = [name] if name else sorted(hosts)
    paths = wanted_paths(resources)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(chosen)))) as pool:
        return list(pool.map(lambda h: check_host(h, hosts, agents[h], state, paths.get(h, [])), chosen))


def check_host(
    name: str,
    hosts: Mapping[str, Mapping[str, Any]],
    agent: Mapping[str, Any],
    state: State,
    paths: Sequence[SourcePath] = (),
) -> HostCheck:
    inputs = hosts[name]
    address = str(inputs["address"])
    conn = connect(name, address, inputs, hosts)
    checks: list[tuple[str, bool, str]] = []
    try:
        result = conn.run(("python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"))
        checks.append(
            (
                "reachable",
                True,
                "local"
                if address == "local"
                else f"{inputs.get('user') or 'root'}@{address}:{inputs.get('port', 22)}, host key verified",
            )
        )
        checks.append(("python", result.status == 0, result.stdout.strip() or result.stderr.strip()[-200:]))
        checks.append(_check_agent(conn, agent))
        checks.append(_check_timers(conn, name, state))
        df = conn.run(("df", "-Pk", str(inputs["root"])))
        fields = df.stdout.splitlines()[-1].split() if df.status == 0 and df.stdout.strip() else []
        if len(fields) >= 5:
            free = int(fields[3]) * 1024
            checks.append(
                ("disk", free > 1 << 30, f"{free / (1 << 30):.1f} GiB free under {inputs['root']} ({fields[4]} used)")
            )
        else:
            checks.append(("disk", False, f"df failed: {df.stderr.strip()[-200:]}"))
        if paths:
            missing = missing_sources(conn, paths)
            checks.append(
                ("sources", not missing, "; ".join(missing) if missing else f"{len(paths)} source path(s) present")
            )
    except RemoteError as err:
        checks.append(("reachable", False, err.message + (f" ({err.hint})" if err.hint else "")))
    finally:
        conn.close()
    return HostCheck(name, address, tuple(checks))


def _check_agent(conn: HostConnection, agent: Mapping[str, Any]) -> tuple[str, bool, str]:
    install = agent.get("install")
    if not install:
        return ("agent", True, f"protectctl {__version__} (this installation)")
    marker = read_marker(conn, str(install["venv"]))
    if marker is None:
        return ("agent", False, f"not installed in {install['venv']} (run apply)")
    current = (
        marker.get("version") == __version__
        and marker.get("digest") == install["digest"]
        and list(marker.get("extras") or []) == list(install.get("extras") or [])  # type: ignore[call-overload]
    )
    return (
        "agent",
        current,
        f"protectctl {marker.get('version')} (digest {marker.get('digest')})"
        + ("" if current else f"; the policy wants {__version__} (digest {install['digest']}): run apply"),
    )


def _check_timers(conn: HostConnection, host: str, state: State) -> tuple[str, bool, str]:
    files = {
        p: d
        for rec in state.resources.values()
        if rec.kind == "schedule" and rec.host == host
        for p, d in rec.outputs.get("files", {}).items()
    }
    bad = [p for p, want in sorted(files.items()) if (data := conn.read_file(p)) is None or digest(data) != want]
    if bad:
        return (
            "timers",
            False,
            f"{len(bad)} of {len(files)} schedule file(s) missing or changed: "
            f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} (plan --refresh shows them)",
        )
    return ("timers", True, f"{len(files)} schedule file(s) in place")
