"""From a policy directory to what the plan and the jobs work on: the loaded policy, the host
facts, the desired resources, the capacity estimates and the Storages as the control machine
reaches them.

The one module of plan/ that looks at this machine: it reads the policy files (policy.load) and
where this install's `protectctl` script is; everything it calls is pure.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protectctl import __version__
from protectctl.errors import ProtectctlError
from protectctl.plan.model import GroupEstimate
from protectctl.plan.resources import (
    AGENT_VENV,
    HostFacts,
    Resource,
    build_resources,
    host_path,
    host_root,
    installs_agent,
    storage_inputs,
)
from protectctl.policy.load import Document, Policy, load_policy
from protectctl.policy.model import Kind, ProtectionGroupSpec, SLASpec


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building big acyclic structures.

    Loading and planning allocate hundreds of thousands of small objects that form no cycles;
    with the collector on, each gen-2 pass walks all of them again: 40 % of `plan` for
    1,000 groups (tests/bench/bench_plan.py). Restored afterwards for long-running callers.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # what was built stays alive: move it out of the collector's sight, or the first
        # collection after re-enabling walks it all once more (0.7 s for 1,000 groups)
        gc.freeze()
        if was_enabled:
            gc.enable()


def load(policy_dir: Path, *, allow_empty: bool = False) -> Policy:
    with gc_paused():
        return load_policy(policy_dir, allow_empty=allow_empty)


def host_facts(policy: Policy) -> dict[str, HostFacts]:
    # the local agent is this install: its console script beside the interpreter running us, so
    # the plan is the same whether we were started as `protectctl`, `python -m` or `python3.11 -m`
    # (otherwise every schedule shows an update when CI and a shell start protectctl differently)
    script = Path(sys.executable).parent / "protectctl"
    argv = (str(script),) if script.is_file() else (sys.executable, "-m", "protectctl")
    facts = {}
    for name, doc in policy.of(Kind.HOST).items():
        facts[name] = _installed_agent_facts(doc) if installs_agent(doc) else HostFacts(argv, __version__)
    return facts


def _installed_agent_facts(doc: Document) -> HostFacts:
    """An SSH host, or the local host with root /, runs the agent apply installs:
    ROOT/opt/protectctl/bin/protectctl."""
    from protectctl.provision.agent_install import source_digest  # hashes the source tree: only when needed

    venv = host_path(host_root(doc), AGENT_VENV)
    return HostFacts(agent_argv=(f"{venv}/bin/protectctl",), version=__version__, digest=source_digest())


def resources(policy: Policy) -> list[Resource]:
    return build_resources(policy, host_facts(policy))


def estimates(policy: Policy) -> list[GroupEstimate]:
    from protectctl.policy.capacity import estimate
    from protectctl.policy.rules import long_term_snapshots

    out = []
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        sla_doc = policy.get(Kind.SLA, spec.sla)
        assert sla_doc is not None and isinstance(sla_doc.spec, SLASpec)
        sla = sla_doc.spec
        e = estimate(
            size=spec.size_hint,
            change_rate=spec.change_rate,
            sync=sla.sync,
            full=sla.full,
            disk_retention=sla.retention.disk,
            long_term=long_term_snapshots(sla),
        )
        n = len(spec.members)
        out.append(
            GroupEstimate(
                group=doc.name,
                sla=spec.sla,
                sources=n,
                bytes_per_full=e.bytes_per_full,
                points_per_snapshot=e.points_per_snapshot,
                snapshots_retained=e.snapshots_retained,
                points_total=e.points_total,
                points_all_sources=e.points_total * n,
                disk_bytes=e.disk_bytes * n if e.disk_bytes is not None else None,
            )
        )
    return out


def policy_storages(policy: Policy) -> dict[str, dict[str, object]]:
    """Every Storage of the policy as the control machine reaches it: its path → its inputs (with
    `name`), the control machine's credentials, not an agent's."""
    out: dict[str, dict[str, object]] = {}
    for name in sorted(policy.of(Kind.STORAGE)):
        storage: dict[str, object] = {"name": name, **storage_inputs(policy, name)}
        out[str(storage["path"])] = storage
    return out


def named_storages(policy: Policy, storage_name: str | None) -> list[dict[str, object]]:
    """The inputs of the Storage named `storage_name`, or of every Storage in the policy."""
    found = [
        dict(r.inputs)
        for r in resources(policy)
        if r.address.kind == "storage" and (storage_name is None or r.address.name == storage_name)
    ]
    if not found:
        known = ", ".join(sorted(policy.of(Kind.STORAGE))) or "none"
        what = f"no Storage named {storage_name!r}" if storage_name else "the policy has no Storage"
        raise ProtectctlError(what, hint=f"storages: {known}")
    return found
