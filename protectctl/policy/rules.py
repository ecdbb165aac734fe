"""Semantic rules over a whole policy: references, uniqueness, SLA limits, budgets.

Pure: values in, `Problem`s out (their line:col is resolved by the loader). What a rule must
know of a provider (its traits, its own checks of a member) it asks the registry
(protectctl.provider); no provider is named here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from functools import cache

from protectctl.errors import Severity
from protectctl.policy import capacity
from protectctl.policy.document import Document, Policy, Problem
from protectctl.policy.model import (
    HostSpec,
    Kind,
    MemberSpec,
    ProtectionGroupSpec,
    SettingsSpec,
    SLASpec,
    StorageSpec,
    StorageType,
    TapeLibrarySpec,
    default_settings,
)
from protectctl.provider import MemberChecker, SourceIdentity, Traits, builtin_kinds, load_provider

MIN_SYNC_S = 15 * 60
MIN_FULL_S = 60 * 60
MAX_FULL_S = 7 * 24 * 3600


def settings_of(policy: Policy) -> SettingsSpec:
    docs = list(policy.of(Kind.SETTINGS).values())
    if docs:
        assert isinstance(docs[0].spec, SettingsSpec)
        return docs[0].spec
    return _default_settings()


@cache
def _default_settings() -> SettingsSpec:
    # built once: the defaults parse schedules, and resources ask for them per source (bench_plan)
    return default_settings()


def check_rules(policy: Policy) -> list[Problem]:
    problems: list[Problem] = []
    for check in (_settings, _hosts, _storages, _libraries, _slas, _groups, _sources_unique):
        problems.extend(check(policy))
    return problems


def _ref(
    policy: Policy,
    doc: Document,
    path: tuple[str | int, ...],
    kind: Kind,
    name: str | None,
) -> Iterator[Problem]:
    if name is None or policy.get(kind, name) is not None or (kind, name) in policy.broken:
        return
    known = sorted(policy.of(kind))
    detail = f"defined {kind.value}s: {', '.join(known)}" if known else f"no {kind.value} is defined"
    yield Problem(doc.ref, path, f"{kind.value} {name!r} is not defined", detail)


def _settings(policy: Policy) -> Iterator[Problem]:
    docs = list(policy.of(Kind.SETTINGS).values())
    for extra in docs[1:]:
        yield Problem(
            extra.ref, ("kind",), "more than one Settings document", f"keep one (the first is {docs[0].name!r})"
        )
    if docs:
        state = settings_of(policy).state
        yield from _ref(policy, docs[0], ("spec", "state", "storage"), Kind.STORAGE, state.storage)
        storage = policy.get(Kind.STORAGE, state.storage) if state.storage else None
        if (
            state.backend == "s3"
            and storage is not None
            and isinstance(storage.spec, StorageSpec)
            and storage.spec.type is not StorageType.S3
        ):
            yield Problem(
                docs[0].ref,
                ("spec", "state", "storage"),
                f"the s3 state backend needs a Storage of type s3; {state.storage!r} is {storage.spec.type.value}",
                "name a `type: s3` Storage",
            )


def _hosts(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.HOST).values():
        spec = doc.spec
        assert isinstance(spec, HostSpec)
        yield from _ref(policy, doc, ("spec", "gateway"), Kind.HOST, spec.gateway)
        if not spec.is_local and not spec.host_key and not spec.known_hosts:
            yield Problem(
                doc.ref,
                ("spec", "address"),
                f"host {doc.name!r} is reached over SSH but its host key is not pinned",
                'add `hostKey: "ssh-ed25519 AAAA..."` (from the host\'s /etc/ssh/ssh_host_*_key.pub) '
                "or `knownHosts: path`; unknown host keys are refused",
            )


def _storages(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.STORAGE).values():
        spec = doc.spec
        assert isinstance(spec, StorageSpec)
        yield from _ref(policy, doc, ("spec", "encryption", "key"), Kind.ENCRYPTION_KEY, spec.encryption.key)
        yield from _ref(policy, doc, ("spec", "host"), Kind.HOST, spec.host)
        if spec.type is StorageType.SFTP and spec.path and not posixpath.isabs(spec.path):
            yield Problem(
                doc.ref,
                ("spec", "path"),
                f"sftp storage path {spec.path!r} is not absolute",
                "give the repository's absolute path on the backup server",
            )


def _libraries(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.TAPE_LIBRARY).values():
        spec = doc.spec
        assert isinstance(spec, TapeLibrarySpec)
        yield from _ref(policy, doc, ("spec", "encryption", "key"), Kind.ENCRYPTION_KEY, spec.encryption.key)


def _slas(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.SLA).values():
        spec = doc.spec
        assert isinstance(spec, SLASpec)
        if doc.ref.shipped:
            continue
        full_max, full_min = spec.full.max_interval_s(), spec.full.min_interval_s()
        if full_max > MAX_FULL_S:
            yield Problem(
                doc.ref,
                ("spec", "full"),
                f"full backup `{spec.full}` runs less often than weekly",
                "a full must run at least weekly, e.g. `weekly on sun at 02:00`",
            )
        if full_min < MIN_FULL_S:
            yield Problem(
                doc.ref,
                ("spec", "full"),
                f"full backup `{spec.full}` runs more often than hourly",
                "fulls run from hourly to weekly; use `sync` for frequent protection",
            )
        if spec.sync.max_interval_s() > full_max:
            yield Problem(
                doc.ref,
                ("spec", "sync"),
                f"sync `{spec.sync}` runs less often than the full",
                "sync at least as often as the full backup",
            )
        if spec.tape is not None:
            yield from _ref(policy, doc, ("spec", "tape", "library"), Kind.TAPE_LIBRARY, spec.tape.library)
            if spec.tape.retention <= spec.retention.disk:
                yield Problem(
                    doc.ref,
                    ("spec", "tape", "retention"),
                    f"tape retention {spec.tape.retention} is not longer than disk retention {spec.retention.disk}",
                    "keep tapes longer than disk, e.g. `7y`",
                )


def _groups(policy: Policy) -> Iterator[Problem]:
    budgets = settings_of(policy).budgets
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        yield from _ref(policy, doc, ("spec", "sla"), Kind.SLA, spec.sla)
        yield from _ref(policy, doc, ("spec", "storage"), Kind.STORAGE, spec.storage)
        seen: dict[str, int] = {}
        for i, member in enumerate(spec.members):
            yield from _ref(policy, doc, ("spec", "members", i, "host"), Kind.HOST, member.host)
            yield from _pair(policy, doc, i)
            if member.name in seen:
                yield Problem(
                    doc.ref,
                    ("spec", "members", i, "name"),
                    f"member name {member.name!r} is used twice in group {doc.name!r}",
                    "member names are unique within a group",
                )
            seen.setdefault(member.name, i)
            yield from _local_storage_on_ssh_host(policy, doc, spec, i)
            yield from _provider_checks(doc, spec, i)
        sla_doc = policy.get(Kind.SLA, spec.sla)
        if sla_doc is not None:
            assert isinstance(sla_doc.spec, SLASpec)
            yield from _sla_fits_members(doc, spec, sla_doc, budgets.file_source, budgets.application_source)


def _local_storage_on_ssh_host(policy: Policy, doc: Document, spec: ProtectionGroupSpec, i: int) -> Iterator[Problem]:
    """A `type: local` Storage is a path on the machine each agent runs on: a member on an SSH
    host writes its points there, on that host, not into the control machine's repository."""
    storage = policy.get(Kind.STORAGE, spec.storage)
    if storage is None or not isinstance(storage.spec, StorageSpec) or storage.spec.type is not StorageType.LOCAL:
        return
    member = spec.members[i]
    for name in member.all_hosts:
        host = policy.get(Kind.HOST, name)
        if host is not None and isinstance(host.spec, HostSpec) and not host.spec.is_local:
            yield Problem(
                doc.ref,
                ("spec", "members", i, "host"),
                f"{doc.name}/{member.name} on SSH host {name!r} backs up into local storage "
                f"{spec.storage!r}: its agent writes to {storage.spec.path} on {name}, not on this "
                "machine (only right when that path is shared storage mounted on both)",
                "use a `type: sftp` Storage on a backup-server Host for a repository that "
                "agents on several hosts share",
                Severity.WARNING,
            )
            return


def _provider_checks(doc: Document, spec: ProtectionGroupSpec, i: int) -> Iterator[Problem]:
    """The member provider's own checks of its spec (MemberChecker), located under the member."""
    member = spec.members[i]
    provider = _checker(member.provider)
    if provider is None:
        return
    for p in provider.check_member(member.source(), source=f"{doc.name}/{member.name}", hosts=member.hosts):
        yield Problem(
            doc.ref,
            ("spec", "members", i, member.provider, *p.path),
            p.summary,
            p.detail,
            Severity.WARNING if p.warning else Severity.ERROR,
        )


def _pair(policy: Policy, doc: Document, i: int) -> Iterator[Problem]:
    """`hosts:` (a source spanning hosts, e.g. a primary/standby pair): a multi-host provider only,
    two or more distinct Hosts that exist."""
    spec = doc.spec
    assert isinstance(spec, ProtectionGroupSpec)
    member = spec.members[i]
    if member.hosts is None:
        return
    where = ("spec", "members", i, "hosts")
    if not load_provider(member.provider).traits.multi_host:
        kinds = [k for k in builtin_kinds() if load_provider(k).traits.multi_host]
        yield Problem(
            doc.ref,
            where,
            f"`hosts:` is for sources that span several hosts ({', '.join(kinds)}); "
            f"member {member.name!r} is a {member.provider} source, which has one",
            "use `host: NAME`",
        )
        return
    if len(member.hosts) < 2 or len(set(member.hosts)) != len(member.hosts):
        yield Problem(
            doc.ref,
            where,
            f"the hosts of a pair must be two or more different Hosts, not {list(member.hosts)}",
            "e.g. `hosts: [db1, db2]`",
        )
    for j, host in enumerate(member.hosts):
        yield from _ref(policy, doc, (*where, j), Kind.HOST, host)


def _sla_fits_members(
    doc: Document, group: ProtectionGroupSpec, sla_doc: Document, file_budget: int, app_budget: int
) -> Iterator[Problem]:
    sla = sla_doc.spec
    assert isinstance(sla, SLASpec)
    traits: list[Traits] = [load_provider(m.provider).traits for m in group.members]
    if sla.sync.min_interval_s() < MIN_SYNC_S and not all(t.continuous_log_shipping for t in traits):
        hint = "only providers with continuous log shipping may sync more often; use `every 15m` or less"
        yield Problem(
            doc.ref, ("spec", "sla"), f"SLA {group.sla!r} syncs `{sla.sync}`, more often than every 15m", hint
        )
        if not sla_doc.ref.shipped:  # both places: the line to change is the SLA's own `sync:`
            plain = sorted(
                {m.provider for m, t in zip(group.members, traits, strict=True) if not t.continuous_log_shipping}
            )
            yield Problem(
                sla_doc.ref,
                ("spec", "sync"),
                f"`{sla.sync}` is more often than every 15m, and group {doc.name!r} uses this SLA "
                f"for {', '.join(plain)} sources",
                hint,
            )
    snapshots = snapshots_retained(sla)
    for t in set(traits):
        budget = app_budget if t.application else file_budget
        if snapshots > budget:
            what = "application" if t.application else "file"
            yield Problem(
                doc.ref,
                ("spec", "sla"),
                f"SLA {group.sla!r} keeps {snapshots} snapshots per source, over the budget of "
                f"{budget} per {what} source",
                "shorten retention.disk, take fulls less often, or raise Settings.budgets",
            )


def long_term_snapshots(sla: SLASpec) -> int:
    """Snapshots kept past the disk retention by the weekly/monthly/yearly counts."""
    keep = sla.retention
    return (keep.weekly or 0) + (keep.monthly or 0) + (keep.yearly or 0)


def snapshots_retained(sla: SLASpec) -> int:
    """Snapshots (fulls) kept: those within disk retention plus the long-term bucket counts."""
    return capacity.snapshots_retained(sla.full, sla.retention.disk) + long_term_snapshots(sla)


def _sources_unique(policy: Policy) -> Iterator[Problem]:
    """A data source (host + provider + path) belongs to one protection group only."""
    owners: dict[tuple[str, str, str], str] = {}
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        for i, member in enumerate(spec.members):
            here = f"{doc.name}/{member.name}"
            for host, data in _identities(member):
                identity = (host, member.provider, data)
                owner = owners.get(identity)
                if owner is not None and owner != here:
                    yield Problem(
                        doc.ref,
                        ("spec", "members", i),
                        f"data source {data!r} on host {host!r} is already protected by {owner}",
                        "a data source belongs to one protection group only",
                        Severity.ERROR,
                    )
                else:
                    owners[identity] = here


def _identities(member: MemberSpec) -> list[tuple[str, str]]:
    """(host, data identity) of each host of a member, as its provider names its data
    (SourceIdentity); else the whole spec."""
    spec = member.provider_spec()
    provider = _identifier(member.provider)
    if provider is not None:
        return [(host, provider.source_identity(spec, host)) for host in member.all_hosts]
    return [(host, repr(sorted(spec.items()))) for host in member.all_hosts]


# An isinstance check against a runtime-checkable Protocol costs ~30 µs (Python 3.11): asked once
# per kind, not once per member (1,000 groups: tests/bench/bench_plan.py).
@cache
def _checker(kind: str) -> MemberChecker | None:
    provider = load_provider(kind)
    return provider if isinstance(provider, MemberChecker) else None


@cache
def _identifier(kind: str) -> SourceIdentity | None:
    provider = load_provider(kind)
    return provider if isinstance(provider, SourceIdentity) else None
