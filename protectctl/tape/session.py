"""The tape side of the commands: a TapeService for a policy, the lock that lets one run at a
time move cartridges, what the plan must know of the tape catalog, the copy a restore reads
from, and the policy's repositories as key targets (`keys list/rotate/export/import`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from protectctl.errors import ProtectctlError

if TYPE_CHECKING:
    from protectctl.agent.jobs import SourceJob
    from protectctl.policy.load import Policy
    from protectctl.progress import Progress
    from protectctl.state.model import State
    from protectctl.tape.catalog import Copy
    from protectctl.tape.repokeys import RepoKeyTarget
    from protectctl.tape.service import (
        CartridgeRow,
        InventoryResult,
        RecycleResult,
        TapeRunResult,
        TapeService,
        TapeVerifyResult,
    )

TAPE_LOCK_TIMEOUT_S = 10.0  # interactive tape commands
TAPE_JOB_LOCK_TIMEOUT_S = 4 * 3600.0  # `run tape`: the tape timers of a group's members fire together


def state_home(policy: Policy) -> Path:
    """Where this machine keeps its own files beside the state (tape catalog, remote sources' views):
    the local state file's directory, whichever backend holds the state."""
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import local_state_path

    return local_state_path(policy, settings_of(policy).state).parent


def _policy(policy_dir: Path, policy: Policy | None) -> Policy:
    from protectctl.plan.compile import load

    return policy if policy is not None else load(policy_dir)


def tape_service(policy_dir: Path, policy: Policy | None = None) -> TapeService:
    """The policy's TapeService: catalog and keys beside the state file."""
    from protectctl.tape.service import TapeService, context_from_policy

    policy = _policy(policy_dir, policy)
    return TapeService(context_from_policy(policy, state_home(policy)), now=datetime.now(UTC))


@contextmanager
def tape_session(
    policy_dir: Path, command: str, policy: Policy | None = None, *, timeout_s: float = TAPE_LOCK_TIMEOUT_S
) -> Iterator[TapeService]:
    """A TapeService that may move cartridges and change the catalog: one at a time per policy.

    Two runs must not load cartridges into the same drives or write the catalog over each other
    (each reads it at the start and writes it back); the lock (flock, released the moment its
    holder dies) is held from the catalog read to the last write. Readers (`tape list`, `keys
    list`, plan) need no lock: the catalog is replaced atomically."""
    from protectctl.agent.lock import source_lock

    policy = _policy(policy_dir, policy)
    home = state_home(policy)
    with source_lock(home / "tape", "library", command, timeout_s=timeout_s, what="the tape libraries of this policy"):
        service = tape_service(policy_dir, policy)
        service.release_drives()  # cartridges a killed run left loaded: nobody else holds the lock
        yield service


def tape_observations(policy: Policy, state: State, now: datetime) -> dict[str, Mapping[str, str]]:
    """Observations fields from the tape catalog: keys and libraries unexpired cartridges need.

    Read even when the policy no longer has a TapeLibrary (that is when it matters most)."""
    home = state_home(policy)
    path = home / "tape" / "catalog.json"
    try:
        os.stat(path)
    except FileNotFoundError:
        return {}  # no catalog, no cartridges: the tape code is not even imported (every `plan`)
    except OSError:
        pass  # load_catalog says what is wrong
    from protectctl.tape.catalog import load_catalog
    from protectctl.tape.guard import keys_in_use, libraries_in_use

    catalog = load_catalog(path)  # TapeError when damaged: plan stops
    if not catalog.cartridges:
        return {}
    from protectctl.tape.keys import KeyStore  # imports cryptography: only when cartridges exist

    key_names = {k.id: k.name for k in KeyStore(home / "keys", {}).infos()}
    library_keys = {
        a.split(".", 1)[1]: str(r.inputs.get("key")) for a, r in state.resources.items() if r.kind == "library"
    }
    return {
        "keys_in_use": keys_in_use(catalog, key_names, library_keys, now),
        "libraries_in_use": libraries_in_use(catalog, now),
    }


def tape_key_warnings(policy: Policy, points: Mapping[str, int] | None = None) -> list[str]:
    """Plan warnings: tape keys protecting data, and key files of repositories holding points
    (`points`: storage address → recovery points), that were never exported."""
    from protectctl.policy.model import Kind

    out: list[str] = []
    if policy.of(Kind.TAPE_LIBRARY):
        try:
            out += tape_service(policy.root, policy).key_warnings()
        except ProtectctlError as err:
            out.append(f"tape keys could not be checked: {err.message}")
    if points is not None and any(points.values()):
        from protectctl.tape import repokeys

        try:
            out += repokeys.unexported_warnings(
                repokeys.rows(repository_key_targets(policy, remote=False), state_home(policy)), points
            )
        except ProtectctlError as err:
            out.append(f"repository keys could not be checked: {err.message}")
    return out


def tape_copy_for_restore(
    policy: Policy, job: SourceJob, when: datetime | Literal["latest"], *, from_tape: bool
) -> Copy | None:
    """The tape copy to restore from: asked for, or the disk has no point for `when` (or is gone)."""
    from protectctl.catalog.select import select_point
    from protectctl.errors import RepositoryError, RestoreError
    from protectctl.policy.model import Kind

    if not policy.of(Kind.TAPE_LIBRARY):
        if from_tape:
            raise RestoreError("the policy has no TapeLibrary", hint="restore from disk (drop --from tape)")
        return None
    service = tape_service(policy.root, policy)
    if from_tape:
        return service.choose(job.source, when)
    if not service.copies_of(job.source):
        return None
    try:
        from protectctl.agent.jobs import list_points as disk_points

        on_disk = [p for p in disk_points(job.storage, job.passphrase(), job.source) if p.source == job.source]
    except RepositoryError:
        on_disk = []
    try:
        tape_copy = service.choose(job.source, when)
    except RestoreError:
        return None
    try:
        disk_point = select_point(on_disk, when, source=job.source)
    except RestoreError:
        return tape_copy
    return tape_copy if tape_copy.point_time > disk_point.time else None


def repository_key_targets(policy: Policy, *, remote: bool = True) -> list[RepoKeyTarget]:
    """The policy's Storages as protectctl.tape.repokeys targets; sftp ones (reached over SSH with
    the backup Host's own credentials) unless `remote` is False, as for plan, which stays offline."""
    from protectctl.agent.sources import open_storage, passphrase_reader
    from protectctl.plan.resources import storage_inputs
    from protectctl.policy.model import Kind
    from protectctl.tape.repokeys import RepoKeyTarget

    out = []
    for name in sorted(policy.of(Kind.STORAGE)):
        inputs = storage_inputs(policy, name)
        local = inputs["type"] == "local"
        if not local and not remote:
            continue
        ref = inputs["passphrase"]
        assert isinstance(ref, Mapping)
        source = f"env {ref['env']}" if ref.get("env") else f"file {ref.get('file')}"
        out.append(
            RepoKeyTarget(
                name,
                str(inputs["key"]),
                source,
                open_storage(inputs),
                passphrase_reader(inputs),
                Path(str(inputs["path"])) if local else None,
            )
        )
    return out


# --- the tape commands --------------------------------------------------------------------


def run_tape(
    policy_dir: Path,
    group: str,
    member: str | None,
    *,
    all_points: bool = False,
    progress: Progress | None = None,
    lock_timeout_s: float = TAPE_JOB_LOCK_TIMEOUT_S,
) -> TapeRunResult:
    """D2D2T (or D2T): copy the group's points that are not on tape yet to its SLA's pool."""
    from protectctl.agent.sources import select_sources, source_job
    from protectctl.tape.service import group_target

    policy = _policy(policy_dir, None)
    target, copy_from = group_target(policy, group)
    jobs = [source_job(t) for t in select_sources(policy_dir, agent_config=None, group=group, member=member)]
    with tape_session(policy_dir, f"tape copy of {group}", policy, timeout_s=lock_timeout_s) as service:
        return service.copy_group(group, target, jobs, all_points=all_points, copy_from=copy_from, progress=progress)


def verify_tape(policy_dir: Path, group: str, member: str | None) -> TapeVerifyResult | None:
    """Read back the cartridges holding the group's tape copies (and its pool's filling ones);
    None when the group's SLA has no tape copy."""
    from protectctl.agent.sources import select_sources
    from protectctl.tape.service import group_target, has_tape_copy

    policy = _policy(policy_dir, None)
    if not has_tape_copy(policy, group):
        return None
    target, _copy_from = group_target(policy, group)
    names = [t.source for t in select_sources(policy_dir, agent_config=None, group=group, member=member)]
    with tape_session(policy_dir, f"verify tape copies of {group}", policy) as service:
        return service.verify_pool(group, target, names)


def tape_list(policy_dir: Path, pool: str | None = None) -> list[CartridgeRow]:
    return list(tape_service(policy_dir).rows(pool))


def tape_label(policy_dir: Path, count: int, pool: str, library: str | None = None) -> list[CartridgeRow]:
    with tape_session(policy_dir, "tape label") as service:
        made = {c.barcode for c in service.label(count, pool, library)}
        return [r for r in service.rows() if r.barcode in made]


def tape_move(policy_dir: Path, barcode: str, to: str) -> CartridgeRow:
    with tape_session(policy_dir, f"tape move {barcode}") as service:
        service.move(barcode, to)
        return next(r for r in service.rows() if r.barcode == barcode)


def tape_recycle(policy_dir: Path, *, dry_run: bool = False) -> RecycleResult:
    with tape_session(policy_dir, "tape recycle") as service:
        return service.recycle(dry_run=dry_run)


def tape_inventory(policy_dir: Path, *, rebuild: bool = False) -> InventoryResult:
    with tape_session(policy_dir, "tape inventory") as service:
        return service.inventory(rebuild=rebuild)
