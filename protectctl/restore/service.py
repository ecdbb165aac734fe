"""`restore` and `agent restore`: which source, which instant, where to, and who restores.

The control machine resolves the source (of the policy, or of a group removed from it), the
instant and the target. A target on another host (`HOST:/path`) is restored there by that host's
agent: the control machine sends it the source's inputs and the instant as JSON over SSH
(`agent restore` reads it on stdin and prints a RestoreResult). A restore on this machine reads
from disk or, when asked or when the disk no longer has the point, from tape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protectctl.agent.sources import SourceTarget, read_agent_config, select_sources, source_job
from protectctl.errors import ProtectctlError, RestoreError

if TYPE_CHECKING:
    from protectctl.agent.jobs import RestoreResult
    from protectctl.progress import Progress

When = datetime | Literal["latest"]


def restore(
    policy_dir: Path,
    source: str,
    to_time: str,
    *,
    agent_config: Path | None,
    target: str | None,
    subpaths: Sequence[str],
    dry_run: bool,
    overwrite: bool,
    progress: Progress | None,
    from_tape: bool = False,
    options: Mapping[str, object] | None = None,
    delete: bool = False,
    resume: bool = False,
) -> RestoreResult:
    """Restore a source to a time. `options` are the restore options its provider takes
    (RestoreOptions); any other is refused before anything runs. `delete`: remove what the target
    holds beyond the point (with `overwrite`); `resume`: continue an unfinished restore there."""
    from protectctl.agent.jobs import restore as run_restore
    from protectctl.catalog.timespec import parse_time
    from protectctl.plan.address import SourceRef
    from protectctl.provider import check_restore_options

    try:
        ref = SourceRef.parse(source)
    except ValueError as err:
        raise RestoreError(str(err)) from err
    if ref.member is None:
        raise RestoreError(f"restore needs one source, GROUP/MEMBER, not {source!r}")
    try:
        (job_target,) = select_sources(
            policy_dir, agent_config=agent_config, group=ref.group, member=ref.member, include_remote=True
        )
    except ProtectctlError:
        if agent_config is not None:
            raise
        job_target = removed_target(policy_dir, source, target)
    check_restore_options(job_target.provider, source, options or {})
    when = parse_time(to_time, now=datetime.now(UTC))
    on_host, path = parse_target(target, job_target)
    if (delete or resume) and (on_host is not None or from_tape):
        raise RestoreError(
            "--delete and --resume work for restores from disk onto this machine",
            hint="restore here with --target PATH, then copy",
        )
    if on_host is not None:
        if from_tape:
            raise RestoreError(
                "restores from tape write on this machine (the library is here)",
                hint="restore to a path here (--target PATH), then copy",
            )
        return restore_on_host(
            policy_dir,
            job_target,
            on_host,
            when,
            target=path,
            subpaths=subpaths,
            dry_run=dry_run,
            overwrite=overwrite,
            options=options or {},
        )
    if job_target.remote:  # what is still on that host (e.g. logs not yet shipped) cannot be read from here
        options = {**(options or {}), "source_host_reachable": False}
    job = source_job(job_target)
    if agent_config is not None and from_tape:
        raise RestoreError(
            "restores from tape run on the control machine, which holds the tape catalog",
            hint="run `protectctl -C POLICY_DIR restore ... --from tape` there",
        )
    # an agent (--agent-config) restores from its repository; tapes are the control machine's
    if agent_config is None:
        from protectctl.plan.compile import load
        from protectctl.tape.session import tape_copy_for_restore, tape_session

        policy = load(policy_dir)
        copy = tape_copy_for_restore(policy, job, when, from_tape=from_tape)
        if copy is not None and (delete or resume):
            raise RestoreError(
                "--delete and --resume work for restores from disk",
                hint="the point is read from tape here: restore to an empty --target",
            )
        if copy is not None:
            with tape_session(policy_dir, f"restore {source} from tape", policy) as service:
                return service.restore(
                    job, copy, target=path, subpaths=subpaths, dry_run=dry_run, overwrite=overwrite, progress=progress
                )
    return run_restore(
        job,
        when,
        target=path,
        subpaths=subpaths,
        dry_run=dry_run,
        overwrite=overwrite,
        progress=progress,
        options=options,
        delete=delete,
        resume=resume,
    )


def parse_target(target: str | None, job_target: SourceTarget) -> tuple[str | None, Path | None]:
    """`--target` as (the host whose agent restores, or None for this machine; the path there, or
    None for where the source was). `HOST:/path` names another host; `local:PATH` and a path with
    a slash before any colon are paths here. An SSH host's source restores on that host by default."""
    on_host: str | None = job_target.host if job_target.remote and not target else None
    if not target:
        return on_host, None
    host, colon, rest = target.partition(":")
    if colon and "/" not in host:
        if host != "local" and (host != job_target.host or job_target.remote):
            on_host = host  # another machine: its agent restores there
        target = rest
    if on_host is None:
        return None, Path(target).absolute()
    if not target.startswith("/"):
        raise RestoreError(f"--target {host}:{target}: a path on another host must be absolute")
    return on_host, Path(target)


def removed_target(policy_dir: Path, source: str, target: str | None) -> SourceTarget:
    """A source whose group (or member) was removed from the policy, restorable while its points
    exist: to a --target only, since the policy no longer says where it belongs."""
    from protectctl.browse.service import source_root
    from protectctl.browse.targets import browse_sources
    from protectctl.plan.compile import load

    (found,) = browse_sources(policy_dir, source, agent_config=None)  # raises: no source matches
    if not target:
        with found.open_repository() as repo:
            points = repo.scan_points(found.source).points
        root = source_root(found.provider, {}, points[-1]) if points else None
        raise RestoreError(
            f"{source} is no longer in the policy: restore it with --target PATH",
            hint=f"it was protected at {root}" if root else "`points list --all` shows its points",
        )
    group, _, member = found.source.partition("/")
    inputs: dict[str, Any] = {
        "source": found.source,
        "group": group,
        "member": member,
        "provider": found.provider,
        "spec": {},
        "storage": dict(found.storage),
        "retention": {"keep_within_s": 0},
        "sync_interval_s": 900,
        "full_interval_s": 86400,
    }
    return SourceTarget(inputs, load(policy_dir).root / ".protectctl" / "removed", "local")


def restore_on_host(
    policy_dir: Path,
    job_target: SourceTarget,
    host: str,
    when: When,
    *,
    target: Path | None,
    subpaths: Sequence[str],
    dry_run: bool,
    overwrite: bool,
    options: Mapping[str, object],
) -> RestoreResult:
    """A restore onto an SSH host, run there by its agent (`agent restore`) with that host's own
    access to the storage: its append-only key (reads are allowed) and its passphrase copy. The
    control machine sends the source's inputs and the instant, already resolved to UTC."""
    from protectctl.agent.jobs import RestoreResult
    from protectctl.plan.address import Address
    from protectctl.plan.compile import load, resources
    from protectctl.plan.resources import agent_command, agent_storage, storage_inputs
    from protectctl.provision.host import connect

    policy = load(policy_dir)
    by_address = {r.address: r for r in resources(policy)}
    host_res = by_address.get(Address("host", host))
    if host_res is None:
        raise RestoreError(f"no Host named {host!r} in the policy")
    host_inputs = dict(host_res.inputs)
    if str(host_inputs.get("address")) == "local":
        raise RestoreError(f"host {host} is this machine: give --target PATH")
    name = str(job_target.inputs["storage"]["name"])
    storage: dict[str, Any] = {"name": name, **storage_inputs(policy, name)}
    access = by_address.get(Address("access", f"{name}/{host}"))
    secret = by_address.get(Address("secret", f"{storage['key']}/{host}"))
    creds = [by_address.get(Address("secret", f"{name}-s3-{f}/{host}")) for f in ("access-key-id", "secret-access-key")]
    s3_ready = (
        storage["type"] == "s3"
        and secret is not None
        and (all(creds) or not (storage.get("agent_credentials") or storage.get("credentials")))
    )
    if not s3_ready and (storage["type"] != "sftp" or access is None or secret is None):
        why = (
            f"storage {name} is a path on this machine"
            if storage["type"] == "local"
            else f"host {host} has no key to storage {name} (no member of it is protected there)"
        )
        raise RestoreError(
            f"host {host} cannot read {job_target.source}'s recovery points: {why}",
            hint="restore here with --target PATH and copy the result over",
        )
    request = {
        "inputs": {
            **job_target.inputs,
            "storage": agent_storage(storage, access, secret, [c for c in creds if c] or None),
        },
        "to_time": when if isinstance(when, str) else when.astimezone(UTC).isoformat(),
        "target": str(target) if target is not None else None,
        "subpaths": list(subpaths),
        "dry_run": dry_run,
        "overwrite": overwrite,
        "options": {**options, "source_host_reachable": host == job_target.host},
    }
    argv = agent_command(str(host_inputs.get("root") or "/"), "agent", "restore")
    hosts = {a.name: dict(r.inputs) for a, r in by_address.items() if a.kind == "host"}
    conn = connect(host, str(host_inputs["address"]), host_inputs, hosts)
    try:
        status, out, err = conn.exec_bytes(argv, stdin=json.dumps(request).encode(), timeout_s=7 * 86400)
    finally:
        conn.close()
    if status != 0:
        said = [line.removeprefix("Error: ") for line in err.decode(errors="replace").strip().splitlines()]
        raise RestoreError(f"host {host}: {' '.join(said[:3]) or f'the agent restore exited {status}'}")
    return RestoreResult.from_json(json.loads(out))


def restore_on_agent(request: Mapping[str, Any], *, agent_config: Path | None) -> RestoreResult:
    """`agent restore`: a restore the control machine sent to this host (see restore_on_host)."""
    from protectctl.agent.jobs import restore as run_restore

    agent = read_agent_config(agent_config, "agent restore")
    target = SourceTarget(dict(request["inputs"]), Path(str(agent["state_dir"])), str(agent["host"]))
    when = request["to_time"]
    return run_restore(
        source_job(target),
        when if when == "latest" else datetime.fromisoformat(when),
        target=Path(request["target"]) if request.get("target") else None,
        subpaths=list(request.get("subpaths") or []),
        dry_run=bool(request.get("dry_run")),
        overwrite=bool(request.get("overwrite")),
        options=dict(request.get("options") or {}),
    )
