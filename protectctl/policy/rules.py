"""Semantic rules over a whole policy: references, uniqueness, SLA limits, budgets.

Pure: values in, `Problem`s out (their line:col is resolved by the loader).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from protectctl.errors import Severity
from protectctl.policy.load import Document, Policy, Problem
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
)

MIN_SYNC_S = 15 * 60
MIN_FULL_S = 60 * 60
MAX_FULL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class ProviderTraits:
    """What the policy rules must know of a provider, without importing it."""

    application: bool  # counts against the application budget (512) instead of files (64)
    continuous_log_shipping: bool  # may sync more often than every 15 minutes


PROVIDER_TRAITS: dict[str, ProviderTraits] = {
    "filesystem": ProviderTraits(application=False, continuous_log_shipping=False),
    "postgresql": ProviderTraits(application=True, continuous_log_shipping=True),
}


def settings_of(policy: Policy) -> SettingsSpec:
    docs = list(policy.of(Kind.SETTINGS).values())
    if docs:
        assert isinstance(docs[0].spec, SettingsSpec)
        return docs[0].spec
    return _default_settings()


@cache
def _default_settings() -> SettingsSpec:
    # built once: the defaults parse schedules, and resources ask for them per source (bench_plan)
    return SettingsSpec()


def check_rules(policy: Policy) -> list[Problem]:
    problems: list[Problem] = []
    for check in (_settings, _hosts, _storages, _libraries, _slas, _groups, _sources_unique):
        problems.extend(check(policy))
    return problems


def _ref(policy: Policy, doc: Document, path: tuple[str | int, ...], kind: Kind, name: str | None,
         ) -> Iterator[Problem]:
    if name is None or policy.get(kind, name) is not None or (kind, name) in policy.broken:
        return
    known = sorted(policy.of(kind))
    detail = f"defined {kind.value}s: {', '.join(known)}" if known else f"no {kind.value} is defined"
    yield Problem(doc.ref, path, f"{kind.value} {name!r} is not defined", detail)


def _settings(policy: Policy) -> Iterator[Problem]:
    docs = list(policy.of(Kind.SETTINGS).values())
    for extra in docs[1:]:
        yield Problem(extra.ref, ("kind",), "more than one Settings document",
                      f"keep one (the first is {docs[0].name!r})")
    if docs:
        state = settings_of(policy).state
        yield from _ref(policy, docs[0], ("spec", "state", "storage"), Kind.STORAGE, state.storage)
        storage = policy.get(Kind.STORAGE, state.storage) if state.storage else None
        if state.backend == "s3" and storage is not None and isinstance(storage.spec, StorageSpec) \
                and storage.spec.type is not StorageType.S3:
            yield Problem(docs[0].ref, ("spec", "state", "storage"),
                          f"the s3 state backend needs a Storage of type s3; {state.storage!r} is "
                          f"{storage.spec.type.value}", "name a `type: s3` Storage")


def _hosts(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.HOST).values():
        spec = doc.spec
        assert isinstance(spec, HostSpec)
        yield from _ref(policy, doc, ("spec", "gateway"), Kind.HOST, spec.gateway)
        if not spec.is_local and not spec.host_key and not spec.known_hosts:
            yield Problem(doc.ref, ("spec", "address"),
                          f"host {doc.name!r} is reached over SSH but its host key is not pinned",
                          "add `hostKey: \"ssh-ed25519 AAAA...\"` (from the host's /etc/ssh/ssh_host_*_key.pub) "
                          "or `knownHosts: path`; unknown host keys are refused")


def _storages(policy: Policy) -> Iterator[Problem]:
    for doc in policy.of(Kind.STORAGE).values():
        spec = doc.spec
        assert isinstance(spec, StorageSpec)
        yield from _ref(policy, doc, ("spec", "encryption", "key"), Kind.ENCRYPTION_KEY, spec.encryption.key)
        yield from _ref(policy, doc, ("spec", "host"), Kind.HOST, spec.host)
        if spec.type is StorageType.SFTP and spec.path and not posixpath.isabs(spec.path):
            yield Problem(doc.ref, ("spec", "path"), f"sftp storage path {spec.path!r} is not absolute",
                          "give the repository's absolute path on the backup server")


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
            yield Problem(doc.ref, ("spec", "full"), f"full backup `{spec.full}` runs less often than weekly",
                          "a full must run at least weekly, e.g. `weekly on sun at 02:00`")
        if full_min < MIN_FULL_S:
            yield Problem(doc.ref, ("spec", "full"), f"full backup `{spec.full}` runs more often than hourly",
                          "fulls run from hourly to weekly; use `sync` for frequent protection")
        if spec.sync.max_interval_s() > full_max:
            yield Problem(doc.ref, ("spec", "sync"), f"sync `{spec.sync}` runs less often than the full",
                          "sync at least as often as the full backup")
        if spec.tape is not None:
            yield from _ref(policy, doc, ("spec", "tape", "library"), Kind.TAPE_LIBRARY, spec.tape.library)
            if spec.tape.retention <= spec.retention.disk:
                yield Problem(doc.ref, ("spec", "tape", "retention"),
                              f"tape retention {spec.tape.retention} is not longer than disk retention "
                              f"{spec.retention.disk}", "keep tapes longer than disk, e.g. `7y`")


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
                yield Problem(doc.ref, ("spec", "members", i, "name"),
                              f"member name {member.name!r} is used twice in group {doc.name!r}",
                              "member names are unique within a group")
            seen.setdefault(member.name, i)
            yield from _local_storage_on_ssh_host(policy, doc, spec, i)
            pg = member.postgresql
            if pg is not None and not pg.allow_restart:
                yield Problem(doc.ref, ("spec", "members", i, "postgresql", "allowRestart"),
                              f"{doc.name}/{member.name}: apply will not restart PostgreSQL; if wal_level or "
                              "archive_mode must change, WAL archiving (and so point-in-time recovery) starts "
                              "only at the cluster's next restart",
                              "set `allowRestart: true` to let apply restart it", Severity.WARNING)
        sla_doc = policy.get(Kind.SLA, spec.sla)
        if sla_doc is not None:
            assert isinstance(sla_doc.spec, SLASpec)
            yield from _sla_fits_members(doc, spec, sla_doc.spec, budgets.file_source, budgets.application_source)


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
            yield Problem(doc.ref, ("spec", "members", i, "host"),
                          f"{doc.name}/{member.name} on SSH host {name!r} backs up into local storage "
                          f"{spec.storage!r}: its agent writes to {storage.spec.path} on {name}, not on this "
                          "machine (only right when that path is shared storage mounted on both)",
                          "use a `type: sftp` Storage on a backup-server Host for a repository that "
                          "agents on several hosts share", Severity.WARNING)
            return


def _pair(policy: Policy, doc: Document, i: int) -> Iterator[Problem]:
    """`hosts:` (a primary/standby pair): PostgreSQL only, distinct Hosts that exist, perHost among them."""
    spec = doc.spec
    assert isinstance(spec, ProtectionGroupSpec)
    member = spec.members[i]
    if member.hosts is None:
        if member.postgresql is not None and member.postgresql.per_host:
            yield Problem(doc.ref, ("spec", "members", i, "postgresql", "perHost"),
                          "perHost is for a member with `hosts:` (a primary/standby pair)",
                          "move the values into the member's postgresql fields")
        return
    where = ("spec", "members", i, "hosts")
    if member.postgresql is None:
        yield Problem(doc.ref, where, f"`hosts:` is for PostgreSQL primary/standby pairs; member "
                      f"{member.name!r} is a {member.provider} source", "use `host: NAME`")
        return
    if len(member.hosts) < 2 or len(set(member.hosts)) != len(member.hosts):
        yield Problem(doc.ref, where, f"the hosts of a pair must be two or more different Hosts, not "
                      f"{list(member.hosts)}", "e.g. `hosts: [db1, db2]`")
    for j, host in enumerate(member.hosts):
        yield from _ref(policy, doc, (*where, j), Kind.HOST, host)
    for host in member.postgresql.per_host:
        if host not in member.hosts:
            yield Problem(doc.ref, ("spec", "members", i, "postgresql", "perHost", host),
                          f"perHost names {host!r}, which is not one of the pair's hosts",
                          f"use one of: {', '.join(member.hosts)}")


def _sla_fits_members(doc: Document, group: ProtectionGroupSpec, sla: SLASpec,
                      file_budget: int, app_budget: int) -> Iterator[Problem]:
    traits = [PROVIDER_TRAITS.get(m.provider, ProviderTraits(False, False)) for m in group.members]
    if sla.sync.min_interval_s() < MIN_SYNC_S and not all(t.continuous_log_shipping for t in traits):
        yield Problem(doc.ref, ("spec", "sla"),
                      f"SLA {group.sla!r} syncs `{sla.sync}`, more often than every 15m",
                      "only providers with continuous log shipping may sync more often; use `every 15m` or less")
    snapshots = snapshots_retained(sla)
    for t in set(traits):
        budget = app_budget if t.application else file_budget
        if snapshots > budget:
            what = "application" if t.application else "file"
            yield Problem(doc.ref, ("spec", "sla"),
                          f"SLA {group.sla!r} keeps {snapshots} snapshots per source, over the budget of "
                          f"{budget} per {what} source",
                          "shorten retention.disk, take fulls less often, or raise Settings.budgets")


def long_term_snapshots(sla: SLASpec) -> int:
    """Snapshots kept past the disk retention by the weekly/monthly/yearly counts."""
    keep = sla.retention
    return (keep.weekly or 0) + (keep.monthly or 0) + (keep.yearly or 0)


def snapshots_retained(sla: SLASpec) -> int:
    """Snapshots (fulls) kept: those within disk retention plus the long-term bucket counts."""
    from protectctl.plan.capacity import snapshots_retained as within

    return within(sla.full, sla.retention.disk) + long_term_snapshots(sla)


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
                    yield Problem(doc.ref, ("spec", "members", i), f"data source {data!r} on host "
                                  f"{host!r} is already protected by {owner}",
                                  "a data source belongs to one protection group only", Severity.ERROR)
                else:
                    owners[identity] = here


def _identities(member: MemberSpec) -> list[tuple[str, str]]:
    """(host, data identity) of each host of a member (a pair's hosts may override dataDir)."""
    spec = member.provider_spec()
    overrides = spec.pop("per_host", None) or {}
    out = []
    for host in member.all_hosts:
        node = overrides.get(host) if isinstance(overrides, dict) else None
        if isinstance(node, dict) and node.get("data_dir"):
            out.append((host, _source_identity({"data_dir": node["data_dir"]})))
        else:
            out.append((host, _source_identity(spec)))
    return out


def _source_identity(spec: dict[str, object]) -> str:
    path = spec.get("path") or spec.get("data_dir") or ""
    return posixpath.normpath(str(path)) if path else repr(sorted(spec.items()))
