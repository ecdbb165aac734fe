"""Whether the paths each source reads are there on its host: `plan --refresh` warns and
`hosts check` reports a "sources" line, so a mistyped `path:` shows before the first sync
fails on it (issue 11). Providers name the paths through the optional `SourcePaths` ability.
`plan --refresh` also says what apply's prepare would change or refuse on each source host, for
providers with the `PreparePreview` ability (MariaDB's binary logging, PostgreSQL's WAL
archiving): read locally, or on an SSH host by its agent (`agent prepare-preview`: the
PrepareRequest as JSON on stdin, the PrepareOutcome as JSON on stdout).

The check runs on the host itself (locally, or over the host's SSH connection): one
`python3 -c` per host whatever the number of paths, argv only, no shell.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from protectctl.errors import ProtectctlError, RemoteError
from protectctl.plan.resources import Resource
from protectctl.provider import PrepareOutcome, PreparePreview, PrepareRequest, SourcePaths, load_provider
from protectctl.provision.host import HostConnection, connect

# stat (following symlinks, as the archiver opens its root), then the access the agent needs
_CHECK = """\
import json, os, stat, sys
out = {}
for p in sys.argv[1:]:
    try:
        st = os.stat(p)
    except OSError as e:
        out[p] = "does not exist" if e.errno == 2 else "cannot be read: " + (e.strerror or str(e))
        continue
    if not stat.S_ISDIR(st.st_mode):
        out[p] = "is not a directory"
    elif not os.access(p, os.R_OK | os.X_OK):
        out[p] = "cannot be read: permission denied"
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class SourcePath:
    source: str  # "group/member"
    path: str


def wanted_paths(resources: Iterable[Resource]) -> dict[str, list[SourcePath]]:
    """The paths each host's sources read, by host name (providers with `SourcePaths` only)."""
    out: dict[str, list[SourcePath]] = {}
    for r in resources:
        if r.address.kind != "source" or r.host is None:
            continue
        provider = load_provider(str(r.inputs["provider"]))
        spec = r.inputs.get("spec")
        if isinstance(provider, SourcePaths) and isinstance(spec, Mapping):
            out.setdefault(r.host, []).extend(
                SourcePath(str(r.inputs["source"]), p) for p in provider.source_paths(spec)
            )
    return out


def path_problems(conn: HostConnection, paths: Sequence[str]) -> dict[str, str]:
    """Each path that is missing, not a directory or unreadable on the host, with why; raises
    RemoteError when the host cannot be asked."""
    if not paths:
        return {}
    result = conn.run(("python3", "-c", _CHECK, *sorted(set(paths))))
    try:
        found = json.loads(result.stdout) if result.status == 0 else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise RemoteError(
            f"host {conn.name}: checking the source paths failed: "
            f"{result.stderr.strip()[-200:] or f'exit status {result.status}'}"
        )
    return {str(k): str(v) for k, v in found.items()}


def missing_sources(conn: HostConnection, wanted: Sequence[SourcePath]) -> list[str]:
    """`SOURCE: PATH PROBLEM` for each source path that is not usable on the host."""
    problems = path_problems(conn, [w.path for w in wanted])
    return [f"{w.source}: {w.path} {problems[w.path]}" for w in wanted if w.path in problems]


def prepare_previews(resources: Sequence[Resource]) -> list[str]:
    """Plan lines (`plan --refresh`) for what apply's prepare would change or refuse on each
    host of a source whose provider can say (PreparePreview), reading only: locally, or on an
    SSH host by its agent (`agent prepare-preview`, the request as JSON on stdin)."""
    return prepare_drift(resources)[0]


@dataclass(frozen=True, slots=True)
class _Preview:
    address: str  # the source resource's
    source: str
    provider: str
    request: PrepareRequest


def _previews_by_host(resources: Sequence[Resource]) -> dict[str, list[_Preview]]:
    from pathlib import Path

    from protectctl.plan.resources import STATE_DIR, host_path

    hosts = {r.address.name: r.inputs for r in resources if r.address.kind == "host"}
    out: dict[str, list[_Preview]] = {}
    for r in resources:
        if r.address.kind != "source":
            continue
        kind = str(r.inputs["provider"])
        spec = r.inputs.get("spec")
        if not isinstance(load_provider(kind), PreparePreview) or not isinstance(spec, Mapping):
            continue
        nodes = r.inputs.get("nodes")
        on = [str(n["host"]) for n in nodes] if isinstance(nodes, list) and nodes else [str(r.inputs["host"])]
        source = str(r.inputs["source"])
        for host in on:
            node_spec = {**spec, "node": host} if nodes else dict(spec)
            state_dir = Path(host_path(str(hosts.get(host, {}).get("root", "/")), STATE_DIR))
            out.setdefault(host, []).append(
                _Preview(str(r.address), source, kind, PrepareRequest(source, node_spec, state_dir))
            )
    return out


def _preview_local(host: str, wanted: Sequence[_Preview]) -> list[tuple[_Preview, PrepareOutcome | str]]:
    out: list[tuple[_Preview, PrepareOutcome | str]] = []
    for w in wanted:
        provider = load_provider(w.provider)
        assert isinstance(provider, PreparePreview)
        try:
            out.append((w, provider.preview_prepare(w.request)))
        except ProtectctlError as err:
            out.append((w, str(err)))
    return out


_NO_AGENT = (126, 127)  # the remote shell's "cannot execute" and "not found": apply has not installed it
NO_AGENT = "no protectctl agent there yet (first apply)"
OLD_AGENT = "its protectctl agent is older than `agent prepare-preview` (apply upgrades it)"


@dataclass(frozen=True, slots=True)
class NoPreview:
    """The host's agent cannot answer: not installed yet, or too old (NO_AGENT, OLD_AGENT)."""

    why: str


def preview_on_host(conn: HostConnection, root: str, wanted: _Preview) -> PrepareOutcome | str | NoPreview:
    """What the agent on an SSH host says its provider would prepare there (`agent
    prepare-preview`); why not, when it answered with an error; NoPreview when the host has no
    agent (that knows the command) yet. Raises RemoteError when the host cannot be reached."""
    from protectctl.agent.sources import prepare_outcome_from_json, prepare_request_json
    from protectctl.plan.resources import agent_command

    stdin = json.dumps(prepare_request_json(wanted.provider, wanted.request)).encode()
    status, out, err = conn.exec_bytes(agent_command(root, "agent", "prepare-preview"), stdin=stdin, timeout_s=120)
    said = err.decode(errors="replace")
    if status in _NO_AGENT or (status == 1 and said.startswith("sudo: ") and "command not found" in said):
        return NoPreview(NO_AGENT)  # (under `become: sudo`, sudo says so and exits 1)
    if status == 2 and "No such command" in said:
        return NoPreview(OLD_AGENT)
    try:
        outcome = prepare_outcome_from_json(json.loads(out)) if status == 0 else None
    except ValueError:
        outcome = None
    if outcome is not None:
        return outcome
    lines = [line.removeprefix("Error: ") for line in said.strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[-300:] or f"the agent exited {status}"


def _preview_remote(
    host: str, inputs: Mapping[str, Any], hosts: Mapping[str, Mapping[str, Any]], wanted: Sequence[_Preview]
) -> list[tuple[_Preview, PrepareOutcome | str]] | str:
    """Each preview's outcome (or why it could not be read); a line for the whole host when it
    cannot be asked or has no agent yet."""
    conn: HostConnection | None = None
    out: list[tuple[_Preview, PrepareOutcome | str]] = []
    try:
        conn = connect(host, str(inputs.get("address", "local")), inputs, hosts)
        for w in wanted:
            got = preview_on_host(conn, str(inputs.get("root") or "/"), w)
            if isinstance(got, NoPreview):
                return (
                    f"host {host}: {got.why}: what apply would change for "
                    f"{', '.join(sorted({x.source for x in wanted}))} will be checked at apply"
                )
            out.append((w, got))
        return out
    except ProtectctlError as err:
        why = err.message.removeprefix(f"host {host}: ")
        return f"host {host}: what apply would change could not be read ({why}): it will be checked at apply"
    finally:
        if conn is not None:
            conn.close()


def prepare_drift(resources: Sequence[Resource]) -> tuple[list[str], dict[str, str]]:
    """`prepare_previews`' lines, and the sources whose hosts apply's prepare would change now
    (address → what: e.g. binlog_format set back by hand): drift, which `apply --refresh` repairs
    by preparing the source again. Every host is asked in parallel."""
    wanted = _previews_by_host(resources)
    if not wanted:
        return [], {}
    hosts = {r.address.name: dict(r.inputs) for r in resources if r.address.kind == "host"}

    def ask(host: str) -> list[tuple[_Preview, PrepareOutcome | str]] | str:
        inputs: Mapping[str, Any] = hosts.get(host, {})
        if str(inputs.get("address", "local")) == "local":
            return _preview_local(host, wanted[host])
        return _preview_remote(host, inputs, hosts, wanted[host])

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
        answers = dict(zip(sorted(wanted), pool.map(ask, sorted(wanted)), strict=True))
    lines: list[str] = []
    drifted: dict[str, list[str]] = {}
    for host, answer in answers.items():
        if isinstance(answer, str):
            lines.append(answer)
            continue
        for w, outcome in answer:
            if isinstance(outcome, str):
                lines.append(f"source {w.source} on host {host}: what apply would change could not be read: {outcome}")
                continue
            lines += [f"source {w.source} on host {host}: {line}" for line in (*outcome.changes, *outcome.warnings)]
            if outcome.changes:
                drifted.setdefault(w.address, []).extend(f"host {host}: {c}" for c in outcome.changes)
    return lines, {address: "; ".join(changes) for address, changes in drifted.items()}


def source_warnings(resources: Sequence[Resource]) -> list[str]:
    """Plan warnings (`plan --refresh`) for source paths missing on their hosts, every host
    asked in parallel; a host that cannot be asked is a warning too. Then what apply's prepare
    would change or refuse on each source host (prepare_previews)."""
    return source_refresh(resources)[0]


def source_refresh(resources: Sequence[Resource]) -> tuple[list[str], dict[str, str]]:
    """`source_warnings`, and the sources whose prepare drifted (prepare_drift)."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # beside the path check: one connect timeout, not two
        previews = pool.submit(prepare_drift, resources)
        paths = _path_warnings(resources)
        lines, drifted = previews.result()
    return paths + lines, drifted


def _path_warnings(resources: Sequence[Resource]) -> list[str]:
    wanted = wanted_paths(resources)
    hosts = {r.address.name: dict(r.inputs) for r in resources if r.address.kind == "host"}

    def check(host: str) -> list[str]:
        inputs: Mapping[str, Any] = hosts.get(host, {})
        conn: HostConnection | None = None
        try:  # connect too: bad connection settings (an unknown gateway) are this host's warning
            conn = connect(host, str(inputs.get("address", "local")), inputs, hosts)
            return [
                f"source {line} on host {host}: its syncs will fail until it is there"
                for line in missing_sources(conn, wanted[host])
            ]
        except ProtectctlError as err:
            return [f"host {host}: its source paths could not be checked: {err.message}"]
        finally:
            if conn is not None:
                conn.close()

    if not wanted:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
        return [line for lines in pool.map(check, sorted(wanted)) for line in lines]
