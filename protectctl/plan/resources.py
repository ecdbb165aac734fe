"""Policy → addressable resources with their inputs and dependencies.

Pure: the policy, the policy directory and the host facts in; resources out. Relative
paths in a policy resolve against the directory of the file that holds them (lexically;
nothing is read). Inputs are JSON values complete enough for apply to act on them alone,
and never hold a secret: a passphrase appears only as where it lives (env name or file).
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.plan.address import Address
from protectctl.policy.document import Document, Policy
from protectctl.policy.model import (
    EncryptionKeySpec,
    HostSpec,
    Kind,
    MemberSpec,
    ProtectionGroupSpec,
    S3CredentialsSpec,
    SettingsSpec,
    SLASpec,
    StorageSpec,
    StorageType,
    TapeLibrarySpec,
)
from protectctl.policy.rules import settings_of
from protectctl.provider import PreparePreview, Service, ServiceContributor, SourceSpecBuilder, load_provider
from protectctl.provision.schedulers.base import unit_name

JsonValue = object
Inputs = Mapping[str, JsonValue]

AGENT_CONFIG = "etc/protectctl/agent.yaml"
SOURCES_DIR = "etc/protectctl/sources"
STATE_DIR = "var/lib/protectctl"
AGENT_VENV = "opt/protectctl"  # SSH hosts: the agent's virtualenv, installed offline by apply
AGENT_KEYS_DIR = "etc/protectctl/ssh"  # SSH keys an agent uses to reach sftp storage
AGENT_SECRETS_DIR = "etc/protectctl/keys"  # SSH hosts: passphrases apply copies for the agent (0600)


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What varies per machine and run, passed in so that planning stays pure."""

    agent_argv: tuple[str, ...]  # how the agent is started on the host, e.g. (python, -m, protectctl)
    version: str
    digest: str = ""  # SSH hosts: digest of the protectctl source the agent wheel is built from


@dataclass(frozen=True, slots=True)
class Resource:
    address: Address
    inputs: Inputs
    depends_on: tuple[Address, ...] = ()
    host: str | None = None  # the Host the effect runs on, if any
    replace_on: tuple[str, ...] = ()  # inputs whose change needs delete + create
    holds_data: bool = False  # deleting it may delete protected data
    notes: tuple[str, ...] = ()  # what applying it does beyond its inputs (a provider's prepare), for the plan

    @property
    def inputs_hash(self) -> str:
        return inputs_hash(self.inputs)


def inputs_hash(inputs: Inputs) -> str:
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class _Builder:
    policy: Policy
    facts: Mapping[str, HostFacts]
    out: list[Resource] = field(default_factory=list)
    settings: SettingsSpec = field(init=False)
    jobs: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    by_address: dict[Address, Resource] = field(default_factory=dict)  # shared resources (access, secret)
    _agent_extras: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        self.settings = settings_of(self.policy)

    def add(self, resource: Resource) -> None:
        self.out.append(resource)

    def agent_extras(self) -> dict[str, tuple[str, ...]]:
        """protectctl's extras each host's agent needs (its wheelhouse, provision/agent_install.py):
        `s3` for a host that protects into (and so restores from) an s3 Storage."""
        if self._agent_extras is None:
            self._agent_extras = agent_extras(self.policy)
        return self._agent_extras


def agent_extras(policy: Policy) -> dict[str, tuple[str, ...]]:
    """Host name -> the extras of protectctl its agent needs, for hosts that need any."""
    s3 = {
        name
        for name, doc in policy.of(Kind.STORAGE).items()
        if isinstance(doc.spec, StorageSpec) and doc.spec.type is StorageType.S3
    }
    if not s3:
        return {}
    hosts: set[str] = set()
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        spec = doc.spec
        assert isinstance(spec, ProtectionGroupSpec)
        if spec.storage in s3:
            for member in spec.members:
                hosts.update(member.all_hosts)
    return {host: ("s3",) for host in sorted(hosts)}


def build_resources(policy: Policy, facts: Mapping[str, HostFacts]) -> list[Resource]:
    """Every resource the policy asks for, in a stable order."""
    b = _Builder(policy, facts)
    for doc in policy.of(Kind.ENCRYPTION_KEY).values():
        _key(b, doc)
    for doc in policy.of(Kind.STORAGE).values():
        _storage(b, doc)
    for doc in policy.of(Kind.TAPE_LIBRARY).values():
        _library(b, doc)
    for doc in policy.of(Kind.HOST).values():
        _host(b, doc)
    for doc in policy.of(Kind.PROTECTION_GROUP).values():
        _group(b, doc)
    return b.out


def resolve_path(doc: Document, path: str) -> str:
    """A policy path made absolute against the directory of its file (lexically)."""
    if posixpath.isabs(path) or doc.ref.shipped:
        return posixpath.normpath(path)
    return _joined(doc.ref.file, path)


@functools.lru_cache(maxsize=4096)
def _joined(file: Path, path: str) -> str:
    # the same few paths recur for every member of a big policy, and pathlib's `parent` and
    # `str` cost more than the join itself (tests/bench/bench_plan.py)
    return posixpath.normpath(posixpath.join(str(file.parent), path))


def host_path(root: str, rel: str) -> str:
    return posixpath.normpath(posixpath.join(root, rel))


def _passphrase_ref(policy: Policy, key_name: str) -> dict[str, object]:
    doc = policy.get(Kind.ENCRYPTION_KEY, key_name)
    assert doc is not None and isinstance(doc.spec, EncryptionKeySpec)
    ref = doc.spec.passphrase
    return {"env": ref.env} if ref.env else {"file": resolve_path(doc, ref.file or "")}


def _key(b: _Builder, doc: Document) -> None:
    spec = doc.spec
    assert isinstance(spec, EncryptionKeySpec)
    ref = _passphrase_ref(b.policy, doc.name)
    # `generate` means something only for a file passphrase (apply never invents an env variable)
    inputs = {"passphrase": ref, "generate": spec.generate} if "file" in ref else {"passphrase": ref}
    b.add(Resource(Address("key", doc.name), inputs, replace_on=("passphrase",), holds_data=True))


def storage_inputs(policy: Policy, name: str) -> dict[str, object]:
    doc = policy.get(Kind.STORAGE, name)
    assert doc is not None and isinstance(doc.spec, StorageSpec)
    spec = doc.spec
    if spec.type is StorageType.S3:
        return _s3_inputs(policy, doc, spec)
    out: dict[str, object] = {
        "type": spec.type.value,
        "path": resolve_path(doc, spec.path or ""),
        "key": spec.encryption.key,
        "passphrase": _passphrase_ref(policy, spec.encryption.key),
    }
    if spec.type is StorageType.SFTP and spec.host:
        host_doc = policy.get(Kind.HOST, spec.host)
        assert host_doc is not None and isinstance(host_doc.spec, HostSpec)
        out["path"] = posixpath.normpath(spec.path or "")  # a path on the backup server, never resolved here
        out["host"] = spec.host
        out["ssh"] = ssh_inputs(host_doc)
        if host_doc.spec.gateway:  # reached through jump hosts: how to reach each of them too
            out["ssh"]["gateway"] = host_doc.spec.gateway  # type: ignore[index]
            out["ssh_hosts"] = _gateway_chain(policy, host_doc.spec.gateway)
        out["serve"] = host_path(host_root(host_doc), f"{AGENT_VENV}/bin/protectctl")
    return out


def _s3_inputs(policy: Policy, doc: Document, spec: StorageSpec) -> dict[str, object]:
    """An s3 Storage as apply and the agents use it: where, and each credential by reference only."""
    out: dict[str, object] = {
        "type": "s3",
        "path": f"s3://{spec.bucket}/{spec.prefix}",
        "endpoint": spec.endpoint,
        "region": spec.region,
        "bucket": spec.bucket,
        "prefix": spec.prefix,
        "credentials": _s3_credentials(doc, spec.credentials),
        "key": spec.encryption.key,
        "passphrase": _passphrase_ref(policy, spec.encryption.key),
    }
    if spec.agent_credentials is not None:
        out["agent_credentials"] = _s3_credentials(doc, spec.agent_credentials)
    if spec.object_lock is not None:
        out["object_lock"] = {"mode": spec.object_lock.mode, "retain_s": lock_retention_s(policy, doc.name)}
    return out


def _s3_credentials(doc: Document, creds: S3CredentialsSpec | None) -> dict[str, object] | None:
    if creds is None:
        return None
    return {
        field: {"env": ref.env} if ref.env else {"file": resolve_path(doc, ref.file or "")}
        for field, ref in (("access_key_id", creds.access_key_id), ("secret_access_key", creds.secret_access_key))
    }


def lock_retention_s(policy: Policy, storage: str) -> int:
    """How long an object-locked Storage locks what it writes: the longest disk retention of the
    groups backing up into it (a day if none does yet), so no point's data unlocks before its
    retention ends; prune extends the locks of objects a later point reuses."""
    longest = 0
    for group in policy.of(Kind.PROTECTION_GROUP).values():
        spec = group.spec
        assert isinstance(spec, ProtectionGroupSpec)
        sla = policy.get(Kind.SLA, spec.sla) if spec.storage == storage else None
        if sla is not None and isinstance(sla.spec, SLASpec):
            longest = max(longest, int(sla.spec.retention.disk.seconds))
    return longest or 86400


def _gateway_chain(policy: Policy, first: str) -> dict[str, dict[str, object]]:
    """SSH inputs of a jump host and of the jump hosts before it, by name (the rules refuse loops)."""
    chain: dict[str, dict[str, object]] = {}
    name: str | None = first
    while name is not None and name not in chain:
        doc = policy.get(Kind.HOST, name)
        assert doc is not None and isinstance(doc.spec, HostSpec)
        chain[name] = {**ssh_inputs(doc), "gateway": doc.spec.gateway}
        name = doc.spec.gateway
    return chain


def _storage(b: _Builder, doc: Document) -> None:
    spec = doc.spec
    assert isinstance(spec, StorageSpec)
    deps = [Address("key", spec.encryption.key)]
    if spec.host:
        deps.append(Address("host", spec.host))
        if spec.type is StorageType.SFTP:
            deps.append(Address("agent", spec.host))  # `protectctl serve` runs from the host's agent
    b.add(
        Resource(
            Address("storage", doc.name),
            storage_inputs(b.policy, doc.name),
            tuple(deps),
            replace_on=("type", "path"),
            holds_data=True,
        )
    )


def _library(b: _Builder, doc: Document) -> None:
    spec = doc.spec
    assert isinstance(spec, TapeLibrarySpec)
    b.add(
        Resource(
            Address("library", doc.name),
            {
                "type": spec.type,
                "path": resolve_path(doc, spec.path),
                "slots": spec.slots,
                "drives": spec.drives,
                "media": {"type": spec.media.type, "capacity": str(spec.media.capacity)},
                "key": spec.encryption.key,
            },
            (Address("key", spec.encryption.key),),
            replace_on=("type", "path"),
            holds_data=True,
        )
    )


def installs_agent(doc: Document) -> bool:
    """Whether apply installs the agent into ROOT/opt/protectctl: on SSH hosts, and on the local
    host when its timers are live (root /), so that no schedule runs from the environment that
    happened to run apply (deleting that venv would break every timer)."""
    assert isinstance(doc.spec, HostSpec)
    return not doc.spec.is_local or host_root(doc) == "/"


def metrics_path(doc: Document) -> str:
    """Where the agent of a Host writes its Prometheus textfile (its `metrics.path` under its root)."""
    assert isinstance(doc.spec, HostSpec)
    return host_path(host_root(doc), doc.spec.metrics.path.lstrip("/"))


def host_root(doc: Document) -> str:
    assert isinstance(doc.spec, HostSpec)
    return resolve_path(doc, doc.spec.root)


def _policy_file_path(doc: Document, path: str | None) -> str | None:
    """A control-machine path from the policy: `~` kept for the user's home, else resolved."""
    if path is None or path.startswith("~"):
        return path
    return resolve_path(doc, path)


def ssh_inputs(doc: Document) -> dict[str, object]:
    """How to reach an SSH host (no secret: a key is named by its file)."""
    spec = doc.spec
    assert isinstance(spec, HostSpec)
    return {
        "address": spec.address,
        "port": spec.port,
        "user": spec.user,
        "identity_file": _policy_file_path(doc, spec.identity_file),
        "host_key": spec.host_key,
        "known_hosts": _policy_file_path(doc, spec.known_hosts),
        "become": spec.become,
    }


def _host(b: _Builder, doc: Document) -> None:
    spec = doc.spec
    assert isinstance(spec, HostSpec)
    root = host_root(doc)
    deps = (Address("host", spec.gateway),) if spec.gateway else ()
    inputs: dict[str, object] = {
        "address": spec.address,
        "port": spec.port,
        "user": spec.user,
        "root": root,
        "scheduler": spec.scheduler.value,
        "gateway": spec.gateway,
    }
    if not spec.is_local:  # local hosts keep their inputs (and so their plans) unchanged
        inputs.update(ssh_inputs(doc))
        inputs["authorized_keys"] = spec.authorized_keys
        inputs["name"] = doc.name  # HostEffect acts on this host (effects see inputs only)
    b.add(Resource(Address("host", doc.name), inputs, deps, host=doc.name, replace_on=("address", "root")))
    facts = b.facts[doc.name]
    agent: dict[str, object] = {
        "host": doc.name,
        "root": root,
        "version": facts.version,
        "exec": list(facts.agent_argv),
        "config_path": host_path(root, AGENT_CONFIG),
        "state_dir": host_path(root, STATE_DIR),
        "sources_dir": host_path(root, SOURCES_DIR),
        "metrics_path": metrics_path(doc),
        "metrics_group": spec.metrics.group,
    }
    if installs_agent(doc):
        agent["install"] = {"venv": host_path(root, AGENT_VENV), "digest": facts.digest}
        if extras := b.agent_extras().get(doc.name):
            agent["install"]["extras"] = list(extras)  # type: ignore[index]
    b.add(
        Resource(Address("agent", doc.name), agent, (Address("host", doc.name),), host=doc.name, replace_on=("root",))
    )


def _group(b: _Builder, doc: Document) -> None:
    spec = doc.spec
    assert isinstance(spec, ProtectionGroupSpec)
    sla_doc = b.policy.get(Kind.SLA, spec.sla)
    assert sla_doc is not None and isinstance(sla_doc.spec, SLASpec)
    b.add(
        Resource(
            Address("group", doc.name),
            {"sla": spec.sla, "storage": spec.storage, "members": [m.name for m in spec.members]},
            (Address("storage", spec.storage),),
        )
    )
    for member in spec.members:
        _source(b, doc, spec, sla_doc.spec, member.name)


def _source(b: _Builder, doc: Document, group: ProtectionGroupSpec, sla: SLASpec, member_name: str) -> None:
    member = next(m for m in group.members if m.name == member_name)
    host_name = member.main_host
    host_doc = b.policy.get(Kind.HOST, host_name)
    assert host_doc is not None and isinstance(host_doc.spec, HostSpec)
    root = host_root(host_doc)
    source = f"{doc.name}/{member.name}"
    address = Address("source", source)
    keep = sla.retention
    scripts = group.scripts
    spec = _source_spec(b, member)
    if host_doc.spec.is_local and isinstance(spec.get("path"), str):
        spec["path"] = resolve_path(doc, str(spec["path"]))  # local sources resolve like other paths
    throttle = group.throttle
    storage = {"name": group.storage, **storage_inputs(b.policy, group.storage)}
    deps = [
        Address("group", doc.name),
        *(Address("agent", h) for h in member.all_hosts),
        Address("storage", group.storage),
    ]
    access = _access(b, group.storage, host_name, root, storage) if storage["type"] == StorageType.SFTP.value else None
    # an SSH host's agent cannot read the control machine's passphrase; a local host's timers
    # run without the environment of the shell that applied: both get a root-only copy
    ref = storage["passphrase"]
    needs_copy = not host_doc.spec.is_local or (isinstance(ref, Mapping) and ref.get("env") is not None)
    secret = _secret(b, str(storage["key"]), host_name, root) if needs_copy else None
    creds = (
        None
        if host_doc.spec.is_local or storage["type"] != StorageType.S3.value
        else _s3_secrets(b, group.storage, storage, host_name, root)
    )
    storage = agent_storage(storage, access, secret, creds)
    deps += [r.address for r in (access, secret, *(creds or ())) if r is not None]
    b.add(
        Resource(
            address,
            {
                "source": source,
                "group": doc.name,
                "member": member.name,
                "host": host_name,
                **(
                    {"nodes": [{"host": h, "config_path": _source_config_path(b, h, source)} for h in member.hosts]}
                    if member.hosts is not None
                    else {}
                ),
                "provider": member.provider,
                "spec": spec,
                "storage": storage,
                "retention": {
                    "keep_within_s": keep.disk.seconds,
                    "daily": keep.daily or 0,
                    "weekly": keep.weekly or 0,
                    "monthly": keep.monthly or 0,
                    "yearly": keep.yearly or 0,
                },
                "scripts": {"pre": scripts.pre, "post": scripts.post, "timeout_s": scripts.timeout.seconds}
                if scripts
                else None,
                "throttle": {
                    "rate_bps": int(throttle.rate.bytes_per_second),
                    "during": str(throttle.during) if throttle.during else None,
                }
                if throttle
                else None,
                "sync_interval_s": sla.sync.max_interval_s(),
                "full_interval_s": sla.full.max_interval_s(),
                # only when set: a policy without it plans exactly as before
                **({"parallelism": b.settings.parallelism} if b.settings.parallelism is not None else {}),
                "config_path": host_path(root, f"{SOURCES_DIR}/{doc.name}--{member.name}.yaml"),
            },
            tuple(deps),
            host=host_name,
            replace_on=("host", "config_path"),
            notes=tuple(previewer.prepare_notes(spec)) if (previewer := _previewer(member.provider)) else (),
        )
    )
    storage_doc = b.policy.get(Kind.STORAGE, group.storage)
    local_storage = (
        storage_doc is not None
        and isinstance(storage_doc.spec, StorageSpec)
        and storage_doc.spec.type is StorageType.LOCAL
    )
    for host in member.all_hosts:  # a pair: every host has the timers; the job itself picks the node
        other = b.policy.get(Kind.HOST, host)
        assert other is not None and isinstance(other.spec, HostSpec)
        suffix = "" if host == host_name else f"@{host}"
        other_root = host_root(other)
        writes = [host_path(other_root, STATE_DIR), posixpath.dirname(metrics_path(other))]
        if local_storage:
            writes.append(str(storage["path"]))
        confined = load_provider(member.provider).traits.confined_jobs
        facts = JobFacts(confined, bool(scripts and (scripts.pre or scripts.post)), tuple(writes))
        _schedules(
            b, source, host, other.spec, other_root, sla, local_storage=local_storage, suffix=suffix, job_facts=facts
        )
        contributor = _contributor(member.provider)
        for service in contributor.services(spec) if contributor is not None else ():
            _service(b, source, host, other.spec, other_root, suffix, service)


def _source_spec(b: _Builder, member: MemberSpec) -> dict[str, object]:
    """The member's spec as its agents receive it: shaped by the provider (SourceSpecBuilder),
    which for a member with `hosts:` learns where each host's agent keeps its state."""
    spec = member.provider_spec()
    provider = _spec_builder(member.provider)
    if provider is None:
        return spec
    hosts = None
    if member.hosts is not None:
        hosts = {}
        for host in member.hosts:
            host_doc = b.policy.get(Kind.HOST, host)
            assert host_doc is not None and isinstance(host_doc.spec, HostSpec)
            hosts[host] = host_path(host_root(host_doc), STATE_DIR)
    return provider.source_spec(spec, hosts)


# isinstance against a runtime-checkable Protocol costs ~30 µs: asked once per kind, not per source
@functools.cache
def _spec_builder(kind: str) -> SourceSpecBuilder | None:
    provider = load_provider(kind)
    return provider if isinstance(provider, SourceSpecBuilder) else None


@functools.cache
def _previewer(kind: str) -> PreparePreview | None:
    provider = load_provider(kind)
    return provider if isinstance(provider, PreparePreview) else None


@functools.cache
def _contributor(kind: str) -> ServiceContributor | None:
    provider = load_provider(kind)
    return provider if isinstance(provider, ServiceContributor) else None


def _source_config_path(b: _Builder, host: str, source: str) -> str:
    host_doc = b.policy.get(Kind.HOST, host)
    assert host_doc is not None
    group, member = source.split("/", 1)
    return host_path(host_root(host_doc), f"{SOURCES_DIR}/{group}--{member}.yaml")


def _access(b: _Builder, storage_name: str, host: str, root: str, storage: Mapping[str, object]) -> Resource:
    """The append-only SSH key of the agent on `host` for an sftp storage (one per pair)."""
    address = Address("access", f"{storage_name}/{host}")
    existing = b.by_address.get(address)
    if existing is not None:
        return existing
    backup = str(storage["host"])
    backup_doc = b.policy.get(Kind.HOST, backup)
    assert backup_doc is not None and isinstance(backup_doc.spec, HostSpec)
    inputs: dict[str, object] = {
        "host": host,
        "root": root,
        "storage": storage_name,
        "backup_host": backup,
        "repo": storage["path"],
        "serve": storage["serve"],
        "key_path": host_path(root, f"{AGENT_KEYS_DIR}/{storage_name}_ed25519"),
        "authorized_keys": backup_doc.spec.authorized_keys,
    }
    deps = [Address("agent", host), Address("storage", storage_name), Address("host", backup)]
    hops = _hops(b.policy, backup_doc)  # agent → jump hosts → backup server
    if len(hops) > 1:
        # on each jump host the agent's key may only open a tunnel to the next hop
        inputs["jump"] = [
            {"host": hop.name, "authorized_keys": _spec(hop).authorized_keys, "permit": _hostport(nxt)}
            for hop, nxt in zip(hops, hops[1:], strict=False)
        ]
        deps += [Address("host", hop.name) for hop in hops[:-1]]
    host_doc = b.policy.get(Kind.HOST, host)
    assert host_doc is not None and isinstance(host_doc.spec, HostSpec)
    pinned_by_file = [hop for hop in hops if _spec(hop).known_hosts]
    if pinned_by_file and not host_doc.spec.is_local:
        # the agent cannot read the control machine's knownHosts: it gets the entries it needs
        inputs["known_hosts_copy"] = host_path(root, f"{AGENT_KEYS_DIR}/known_hosts")
        inputs["known_hosts"] = [
            {"file": _policy_file_path(hop, _spec(hop).known_hosts), "name": _known_hosts_name(hop)}
            for hop in pinned_by_file
        ]
    res = Resource(address, inputs, tuple(deps), host=host, replace_on=("host", "root", "backup_host", "repo"))
    b.add(res)
    b.by_address[address] = res
    return res


def _spec(doc: Document) -> HostSpec:
    assert isinstance(doc.spec, HostSpec)
    return doc.spec


def _hops(policy: Policy, backup_doc: Document) -> list[Document]:
    """The hosts an agent goes through to the backup server, first jump host first."""
    hops = [backup_doc]
    seen = {backup_doc.name}
    while _spec(hops[0]).gateway and _spec(hops[0]).gateway not in seen:
        gateway = policy.get(Kind.HOST, str(_spec(hops[0]).gateway))
        assert gateway is not None
        seen.add(gateway.name)
        hops.insert(0, gateway)
    return hops


def _hostport(doc: Document) -> str:
    return f"{_spec(doc).address}:{_spec(doc).port}"


def _known_hosts_name(doc: Document) -> str:
    spec = _spec(doc)
    return spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"


def agent_storage(
    storage: Mapping[str, object],
    access: Resource | None,
    secret: Resource | None,
    creds: Sequence[Resource] | None = None,
) -> dict[str, object]:
    """A storage's inputs as the agent of a host uses them: its own append-only key (`access`,
    sftp), the knownHosts entries apply copied to it, its own passphrase copy (`secret`, SSH
    hosts), the s3 agent key (`agentCredentials`, else the Storage's) and, on SSH hosts, the
    copies of it apply made (`creds`). Used for its sources' configs and for restores sent to it."""
    out = dict(storage)
    if out.get("type") == StorageType.S3.value:
        agent_creds = out.pop("agent_credentials", None)
        if agent_creds is not None:
            out["credentials"] = agent_creds
        if creds:
            out["credentials"] = {str(r.inputs["field"]): {"file": r.inputs["path"]} for r in creds}
    if access is not None:
        out["identity_file"] = access.inputs["key_path"]
        copy = access.inputs.get("known_hosts_copy")  # only for SSH hosts, when a hop is pinned by file
        if copy:
            ssh = dict(out["ssh"])  # type: ignore[call-overload]
            if ssh.get("known_hosts"):
                ssh["known_hosts"] = copy
            out["ssh"] = ssh
            hops = out.get("ssh_hosts")
            if isinstance(hops, dict):
                out["ssh_hosts"] = {
                    name: {**hop, "known_hosts": copy if hop.get("known_hosts") else None} for name, hop in hops.items()
                }
    if secret is not None:
        out["passphrase"] = {"file": secret.inputs["path"]}
    return out


def agent_command(root: str, *args: str) -> tuple[str, ...]:
    """How the control machine runs the agent installed under an SSH host's `root`."""
    return (host_path(root, f"{AGENT_VENV}/bin/protectctl"), "--agent-config", host_path(root, AGENT_CONFIG), *args)


def _secret(b: _Builder, key_name: str, host: str, root: str) -> Resource:
    """The passphrase of `key_name` copied to an SSH host for its agent (one per key and host).

    The inputs say where the passphrase lives on the control machine and where the copy goes;
    the value itself never enters inputs, outputs, plans or logs."""
    address = Address("secret", f"{key_name}/{host}")
    existing = b.by_address.get(address)
    if existing is not None:
        return existing
    res = Resource(
        address,
        {
            "host": host,
            "root": root,
            "key": key_name,
            "passphrase": _passphrase_ref(b.policy, key_name),
            "path": host_path(root, f"{AGENT_SECRETS_DIR}/{key_name}.passphrase"),
        },
        (Address("agent", host), Address("key", key_name)),
        host=host,
        replace_on=("host", "path"),
    )
    b.add(res)
    b.by_address[address] = res
    return res


def _s3_secrets(
    b: _Builder, storage_name: str, storage: Mapping[str, object], host: str, root: str
) -> list[Resource] | None:
    """The agent key of an s3 Storage copied to an SSH host (both halves, 0600 root-only), like
    a passphrase copy; none when the Storage names no key (the host's own role or profile)."""
    creds = storage.get("agent_credentials") or storage.get("credentials")
    if not isinstance(creds, Mapping):
        return None
    out = []
    for half in ("access_key_id", "secret_access_key"):
        address = Address("secret", f"{storage_name}-s3-{half.replace('_', '-')}/{host}")
        existing = b.by_address.get(address)
        if existing is None:
            existing = Resource(
                address,
                {
                    "host": host,
                    "root": root,
                    "key": storage_name,
                    "field": half,
                    "passphrase": creds[half],
                    "path": host_path(root, f"{AGENT_SECRETS_DIR}/{storage_name}.s3-{half.replace('_', '-')}"),
                },
                (Address("agent", host), Address("storage", storage_name)),
                host=host,
                replace_on=("host", "path"),
            )
            b.add(existing)
            b.by_address[address] = existing
        out.append(existing)
    return out


def _jobs(b: _Builder, sla: SLASpec) -> list[tuple[str, str]]:
    """(job, schedule text) of an SLA; formatted once per SLA, not once per source."""
    jobs = b.jobs.get(id(sla))
    if jobs is None:
        settings = b.settings
        jobs = [
            ("sync", str(sla.sync)),
            ("full", str(sla.full)),
            ("prune", str(settings.schedules.prune)),
            ("verify", str(settings.schedules.verify)),
        ]
        if sla.tape is not None:
            jobs.append(("tape", str(sla.tape.schedule)))
        b.jobs[id(sla)] = jobs
    return jobs


def _schedules(
    b: _Builder,
    source: str,
    host: str,
    host_spec: HostSpec,
    root: str,
    sla: SLASpec,
    *,
    local_storage: bool,
    suffix: str = "",
    job_facts: JobFacts,
) -> None:
    """The timers of one source on its host.

    Prune runs where the repository may be pruned: an agent's key to a remote repository is
    append-only, so for sftp storage prune runs from the control machine (`protectctl prune`),
    not from a timer on the agent. Tape jobs need the library and the tape catalog, which live
    with the policy on the control machine: their timer runs `-C POLICY_DIR` there, so only
    sources of local hosts get one.
    """
    settings = b.settings.schedules
    group, member = source.split("/", 1)
    agent = b.facts[host]
    config = host_path(root, AGENT_CONFIG)
    # escaped parts: group "a-b" member "c" and group "a" member "b-c" must not share a timer
    # (unit_name(a, b, job) == unit_name(a, b) + "-" + job for a job name of letters)
    prefix = unit_name("protectctl", group, member)
    for job, schedule in _jobs(b, sla):
        if (job == "prune" and not local_storage) or (job == "tape" and not host_spec.is_local):
            continue
        if suffix and job not in ("sync", "full"):
            continue  # the other hosts of a pair back up (on the right node); prune, verify, tape run once
        where = ["-C", str(b.policy.root)] if job == "tape" else ["--agent-config", config]
        b.add(
            Resource(
                Address("schedule", f"{source}/{job}{suffix}"),
                {
                    "host": host,
                    "root": root,
                    "scheduler": host_spec.scheduler.value,
                    "name": f"{prefix}-{job}",
                    "description": f"protectctl {job} of {source}",
                    "argv": [*agent.agent_argv, *where, "run", job, group, "--member", member],
                    "schedule": schedule,
                    # every kind, so that a fleet's prunes and verifies do not hit one server at once
                    "randomized_delay_s": settings.randomized_delay.seconds,
                    "timeout_s": getattr(settings.timeouts, job).seconds,
                    "sandbox": _sandbox(job, job_facts),
                    "on_failure": settings.on_failure,
                    "mailto": settings.mailto,
                    "ac_power": settings.ac_power,
                    "inhibit": settings.inhibit,
                },
                (Address("source", source),),
                host=host,
                replace_on=("scheduler", "root", "name"),
            )
        )


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What decides how tightly a source's jobs can be confined (provision/schedulers/base.py Sandbox)."""

    confined: bool  # the provider's Traits.confined_jobs: sync/full only read files in-process
    scripts: bool  # the group runs pre/post scripts: they may need anything
    write_paths: tuple[str, ...]  # state dir, metrics dir, a local repository


def _sandbox(job: str, facts: JobFacts) -> dict[str, object]:
    """The Sandbox of one job, as JSON inputs (the fields of Sandbox)."""
    strict: dict[str, object] = {
        "write_paths": list(facts.write_paths),
        "capabilities": ["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"],
        "filter_syscalls": True,
        "change_user": False,
        "devices": False,
    }
    loose = {"write_paths": None, "capabilities": None}
    if facts.scripts and job in ("sync", "full"):
        return {**loose, "filter_syscalls": False, "change_user": True, "devices": True}
    if job == "tape":  # the control machine's policy dir, library paths, perhaps a tape device
        return {**loose, "filter_syscalls": True, "change_user": False, "devices": True}
    if job in ("sync", "full") and not facts.confined:
        # e.g. an application's tools run as its own user, writing files that user owns
        return {**loose, "filter_syscalls": True, "change_user": True, "devices": False}
    return strict


def _service(
    b: _Builder, source: str, host: str, host_spec: HostSpec, root: str, suffix: str, service: Service
) -> None:
    """A service the source's provider needs (ServiceContributor, e.g. a log receiver), kept running
    on the host: `protectctl agent <command> GROUP --member MEMBER`, supervised."""
    group, member = source.split("/", 1)
    agent = b.facts[host]
    b.add(
        Resource(
            Address("schedule", f"{source}/{service.name}{suffix}"),
            {
                "host": host,
                "root": root,
                "scheduler": host_spec.scheduler.value,
                "daemon": True,
                "name": f"{unit_name('protectctl', group, member)}-{service.name}",
                "description": f"protectctl {service.description} of {source}",
                "argv": [
                    *agent.agent_argv,
                    "--agent-config",
                    host_path(root, AGENT_CONFIG),
                    "agent",
                    *service.command,
                    group,
                    "--member",
                    member,
                ],
            },
            (Address("source", source),),
            host=host,
            replace_on=("scheduler", "root", "name"),
        )
    )
