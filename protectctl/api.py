"""Everything the CLI may call: one typed function per command, values in, results (data) out.

Each command is written in its layer (docs/architecture.md) and named here; what is left here
is the few commands that only tie layers together. Functions raise `ProtectctlError` for
anything a user should read and never print: the CLI renders results (cli/views.py).

What is imported at the top of this module is light (the standard library, errors, and modules
that import the rest inside their functions), so that `validate` and an agent's timer-started
sync load only what they use (tests/integration/test_agent_startup.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protectctl.agent.sources import (  # sources, jobs, points, status, check, repair
    BackupFailure,
    BackupSkipped,
    CheckResult,
    SourceTarget,
    check,
    check_storage,
    list_points,
    open_storage,
    passphrase_reader,
    points_of_storage,
    prepare_on_agent,
    prepare_outcome_json,
    preview_on_agent,
    prune,
    recovery_windows,
    repair_index,
    repair_points,
    run_backup,
    select_sources,
    source_job,
    status,
    storages_of,
    stream_logs,
)
from protectctl.apply.operations import (  # plan, apply, destroy
    DEFAULT_LOCK_TIMEOUT_S,
    ApplyReport,
    apply,
    make_plan,
    plan,
    read_plan,
    save_plan,
    state_backend,
)
from protectctl.browse.targets import (  # ls, cat, versions, diff, find, mount
    browse_cat,
    browse_diff,
    browse_find,
    browse_ls,
    browse_mount,
    browse_sources,
    browse_versions,
    removed_sources,
)
from protectctl.errors import ProtectctlError, StateError
from protectctl.restore.service import restore, restore_on_agent  # restore, agent restore
from protectctl.tape.keyops import keys_export, keys_import, keys_list, keys_rotate
from protectctl.tape.session import (  # run tape, verify's tape half, tape list/label/move/recycle/inventory
    TAPE_JOB_LOCK_TIMEOUT_S,
    TAPE_LOCK_TIMEOUT_S,
    run_tape,
    tape_inventory,
    tape_label,
    tape_list,
    tape_move,
    tape_recycle,
    tape_service,
    tape_session,
    verify_tape,
)

if TYPE_CHECKING:
    from protectctl.errors import Diagnostic
    from protectctl.plan.model import GroupEstimate
    from protectctl.plan.resources import Resource
    from protectctl.policy.load import Policy
    from protectctl.provision.checks import HostCheck
    from protectctl.state.model import State

__all__ = [  # written in their layers; the rest of the facade is below
    "DEFAULT_LOCK_TIMEOUT_S",
    "TAPE_JOB_LOCK_TIMEOUT_S",
    "TAPE_LOCK_TIMEOUT_S",
    "ApplyReport",
    "BackupFailure",
    "BackupSkipped",
    "CheckResult",
    "SourceTarget",
    "apply",
    "browse_cat",
    "browse_diff",
    "browse_find",
    "browse_ls",
    "browse_mount",
    "browse_sources",
    "browse_versions",
    "check",
    "check_storage",
    "keys_export",
    "keys_import",
    "keys_list",
    "keys_rotate",
    "list_points",
    "make_plan",
    "open_storage",
    "passphrase_reader",
    "plan",
    "prepare_on_agent",
    "prepare_outcome_json",
    "preview_on_agent",
    "prune",
    "read_plan",
    "recovery_windows",
    "removed_sources",
    "repair_index",
    "repair_points",
    "restore",
    "restore_on_agent",
    "run_backup",
    "run_tape",
    "save_plan",
    "source_job",
    "sources",
    "state_backend",
    "status",
    "storages_of",
    "stream_logs",
    "tape_inventory",
    "tape_label",
    "tape_list",
    "tape_move",
    "tape_recycle",
    "tape_service",
    "tape_session",
    "verify_tape",
]
JsonSchema = dict[str, object]
sources = select_sources  # the sources a job acts on: of the agent config on a host, or of the policy
list_points_of_storage = points_of_storage  # every readable point of one storage


# --- policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidateResult:
    policy_dir: Path
    documents: dict[str, int]  # kind → how many documents of it the user wrote
    warnings: tuple[Diagnostic, ...]


def load(policy_dir: Path, *, allow_empty: bool = False) -> Policy:
    from protectctl.plan.compile import load as load_policy

    return load_policy(policy_dir, allow_empty=allow_empty)


def validate(policy_dir: Path) -> ValidateResult:
    policy = load(policy_dir)
    counts: dict[str, int] = {}
    for doc in policy.all():
        if not doc.ref.shipped:
            counts[doc.kind.value] = counts.get(doc.kind.value, 0) + 1
    return ValidateResult(policy.root, counts, tuple(policy.warnings))


def alerts(policy_dir: Path, out: Path | None = None) -> str:
    """`protectctl alerts`: Prometheus alerting rules derived from each SLA (policy/alerts.py), as YAML;
    also written to `out` when given."""
    from protectctl.fsutil import atomic_write
    from protectctl.policy.alerts import alert_rules, rules_yaml

    text = rules_yaml(alert_rules(load(policy_dir)))
    if out is not None:
        try:
            atomic_write(out, text.encode("utf-8"))
        except OSError as err:
            raise ProtectctlError(f"writing {out}: {err.strerror}") from err
    return text


def resources(policy: Policy) -> list[Resource]:
    from protectctl.plan.compile import resources as desired

    return desired(policy)


def estimates(policy: Policy) -> list[GroupEstimate]:
    from protectctl.plan.compile import estimates as of_policy

    return of_policy(policy)


def graph_dot(policy_dir: Path) -> str:
    from protectctl.plan.graph import build_graph, check_acyclic, to_dot

    graph = build_graph(resources(load(policy_dir)))
    check_acyclic(graph)
    return to_dot(graph)


def schema_documents() -> dict[str, JsonSchema]:
    from protectctl.policy.schema import document_schemas

    return document_schemas()


def combined_schema() -> JsonSchema:
    """One JSON Schema for any document, chosen by `kind` (schemas/protectctl.json)."""
    from protectctl.policy.schema import combined_schema as combine
    from protectctl.policy.schema import document_schemas

    return combine(document_schemas())


def write_schemas(out_dir: Path) -> list[Path]:
    import json

    from protectctl.fsutil import atomic_write_text
    from protectctl.policy.schema import combined_schema as combine
    from protectctl.policy.schema import document_schemas

    written = []
    schemas = document_schemas()
    for name, schema in [*schemas.items(), ("protectctl", combine(schemas))]:
        path = out_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


# --- state ----------------------------------------------------------------------------


def state_home(policy_dir: Path, policy: Policy | None = None) -> Path:
    """Where this machine keeps its own files beside the state (tape catalog, remote sources' views)."""
    from protectctl.tape.session import state_home as of_policy

    return of_policy(policy or load(policy_dir))


def read_state(policy_dir: Path) -> State:
    return state_backend(policy_dir).read()


def state_migrate(policy_dir: Path, to: str, lock_timeout_s: float) -> tuple[str, str, str, int]:
    """Copy the state from the configured backend to `to` (its fields from the same Settings), with
    its lineage and serial; returns (from, to, lineage, serial)."""
    from protectctl.policy.rules import settings_of
    from protectctl.state.factory import migrate, open_state_backend

    policy = load(policy_dir)
    settings = settings_of(policy).state
    if to == settings.backend:
        raise StateError(
            f"the state is already in the {to} backend",
            hint="name another backend with --to; set its fields in Settings.spec.state first",
        )
    source = open_state_backend(policy, settings)
    target = open_state_backend(policy, settings, to)
    lineage, serial = migrate(source, target, lock_timeout_s=lock_timeout_s)
    return source.describe(), target.describe(), lineage, serial


def state_rm(policy_dir: Path, addresses: Sequence[str], lock_timeout_s: float) -> list[str]:
    backend = state_backend(policy_dir)
    with backend.lock("state rm", lock_timeout_s):
        state = backend.read()
        missing = [a for a in addresses if a not in state.resources]
        if missing:
            raise StateError(f"not in the state: {', '.join(missing)}", hint="see `protectctl state list`")
        for a in addresses:
            del state.resources[a]
        state.serial += 1
        backend.write(state)
    return list(addresses)


def state_unlock(policy_dir: Path, force: bool) -> str:
    return state_backend(policy_dir).unlock(force=force)


# --- hosts -------------------------------------------------------------------------------


def hosts_check(policy_dir: Path, name: str | None = None) -> list[HostCheck]:
    """Check every Host (or one): reachable with the pinned key, python, agent, timers, disk,
    and the paths its sources read (provision/checks.py)."""
    from protectctl.provision.checks import check_hosts

    policy = load(policy_dir)
    return check_hosts(resources(policy), lambda: state_backend(policy_dir, policy).read(), name)
