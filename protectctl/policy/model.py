"""Policy documents as pydantic models: the one source of truth for the policy shape.

Pure: no I/O. YAML keys are camelCase (the DESIGN contract) through aliases; unknown
fields are errors. Durations, sizes, rates and schedules are parsed once here into the
typed values of `protectctl.units` and never re-parsed. The JSON Schema in `schemas/` is
exported from these models. A member's data source is its provider's own spec model (the
protectctl.provider registry): `group_model` builds the ProtectionGroup model of a set of
provider kinds.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
    model_validator,
)

from protectctl.units import JSON_PATTERNS, ByteSize, ChangeRate, Duration, Rate, Schedule, TimeWindow, UnitError

API_VERSION = "protectctl/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _parser(cls: Any, example: str, what: str) -> Any:
    """An Annotated type that parses text into a units value once, at load time."""

    # values are immutable, and a big policy repeats the same few texts (`5%/day` in each of
    # 1,000 groups: 10 % of validate, tests/bench/bench_plan.py), so each text is parsed once
    parsed: dict[str, object] = {}

    def parse(value: object) -> object:
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"expected {what} as text, like {example!r}")
        text = str(value)
        found = parsed.get(text)
        if found is not None:
            return found
        try:
            found = cls.parse(text)
        except UnitError as err:
            raise ValueError(str(err)) from None
        if len(parsed) < 4096:
            parsed[text] = found
        return found

    return Annotated[
        cls,
        BeforeValidator(parse),
        PlainSerializer(str, return_type=str),
        WithJsonSchema(
            {
                "type": "string",
                "description": f"{what}, e.g. {example!r}",
                "examples": [example],
                "pattern": JSON_PATTERNS[cls],
            }
        ),
    ]


if TYPE_CHECKING:  # to the type checker these are the parsed values they become
    DurationText = Duration
    SizeText = ByteSize
    RateText = Rate
    ChangeRateText = ChangeRate
    ScheduleText = Schedule
    WindowText = TimeWindow
else:
    DurationText = _parser(Duration, "14d", "a duration")
    SizeText = _parser(ByteSize, "100GB", "a size")
    RateText = _parser(Rate, "50Mbit", "a rate")
    ChangeRateText = _parser(ChangeRate, "10%/day", "a change rate")
    ScheduleText = _parser(Schedule, "daily at 20:00", "a schedule")
    WindowText = _parser(TimeWindow, "mon-fri 08:00-18:00", "a time window")

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")]


class Spec(BaseModel):
    """Base of every spec: camelCase aliases, unknown fields forbidden, immutable.

    Validators are built on first use (`defer_build`), not at import: a command builds only the
    models its policy's kinds need (~60 ms of every policy command; docs/performance.md)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=None, defer_build=True
    )


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class CamelSpec(Spec):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=camel, defer_build=True
    )


class Scheduler(StrEnum):
    SYSTEMD = "systemd"
    CRON = "cron"


class StorageType(StrEnum):
    LOCAL = "local"
    SFTP = "sftp"
    S3 = "s3"


class Kind(StrEnum):
    HOST = "Host"
    ENCRYPTION_KEY = "EncryptionKey"
    STORAGE = "Storage"
    TAPE_LIBRARY = "TapeLibrary"
    SLA = "SLA"
    PROTECTION_GROUP = "ProtectionGroup"
    SETTINGS = "Settings"


# --- Host -----------------------------------------------------------------------------


class MetricsSpec(CamelSpec):
    """The agent's Prometheus textfile, for node_exporter's textfile collector."""

    path: str = Field(
        "/var/lib/prometheus/node-exporter/protectctl.prom",
        pattern="^/[^\\s\"'\\\\]*\\.prom$",
        description="absolute path on the host (under its root); node_exporter reads *.prom files "
        "of its --collector.textfile.directory",
    )
    group: str = Field(
        "prometheus",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="the group node_exporter runs as: it may read the file (0640), nobody else",
    )


class HostSpec(CamelSpec):
    address: str = Field(description="`local` for the machine running protectctl, else a name or IP")
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    host_key: str | None = Field(None, description="pinned public host key, e.g. 'ssh-ed25519 AAAA...'")
    known_hosts: str | None = None
    gateway: Name | None = Field(None, description="another Host used as jump host")
    become: Literal["sudo"] | None = None
    scheduler: Scheduler = Scheduler.SYSTEMD
    root: str = Field("/", description="every path protectctl writes on this host lives under root")
    metrics: MetricsSpec = Field(
        default_factory=lambda: MetricsSpec(),
        description="where the agent writes its Prometheus textfile (docs/monitoring.md)",
    )
    authorized_keys: str = Field(
        ".ssh/authorized_keys",
        description="SSH hosts holding sftp storage: the login user's authorized_keys file (relative to its "
        "home); apply adds each agent's append-only key here",
    )

    @property
    def is_local(self) -> bool:
        return self.address == "local"


# --- EncryptionKey --------------------------------------------------------------------


class PassphraseRef(CamelSpec):
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PassphraseRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env: VARIABLE` or `file: path` (never the passphrase itself)")
        return self


class EncryptionKeySpec(CamelSpec):
    passphrase: PassphraseRef
    generate: bool = Field(
        True, description="for `file:` passphrases: the first apply creates a random one (mode 0600) if missing"
    )


# --- Storage --------------------------------------------------------------------------


class EncryptionRef(CamelSpec):
    key: Name


class S3CredentialsSpec(CamelSpec):
    """An S3 key pair, each half by reference (`env:` or `file:`), never the value."""

    access_key_id: PassphraseRef
    secret_access_key: PassphraseRef


class ObjectLockSpec(CamelSpec):
    mode: Literal["compliance", "governance"] = Field(
        description="compliance: no one can delete a locked object before its retention ends; governance: "
        "keys with s3:BypassGovernanceRetention can"
    )


S3_FIELDS: tuple[str, ...] = ("endpoint", "bucket", "prefix", "credentials", "agent_credentials", "object_lock")


class StorageSpec(CamelSpec):
    type: StorageType
    path: str | None = Field(None, description="local and sftp: the repository's directory")
    host: Name | None = Field(None, description="for sftp: the Host holding the repository")
    endpoint: str | None = Field(
        None, pattern=r"^https?://", description="s3: any S3-compatible endpoint; omit for AWS"
    )
    region: str = Field("us-east-1", description="s3: the bucket's region")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="s3: the bucket")
    prefix: str = Field("", pattern=r"^([A-Za-z0-9._-]+/)*$", description="s3: keys start with this, e.g. site-a/")
    credentials: S3CredentialsSpec | None = Field(
        None,
        description="s3: the control machine's key (init, prune, check, restore); omit to use the "
        "AWS default chain (environment, profile, instance role)",
    )
    agent_credentials: S3CredentialsSpec | None = Field(
        None,
        description="s3: the key agents get (apply copies it to SSH hosts, root-only); a least-privilege "
        "key that can write but not destroy locked points",
    )
    object_lock: ObjectLockSpec | None = Field(
        None,
        description="s3: lock every object a point needs until the point's retention ends (the bucket "
        "must have object lock enabled)",
    )
    encryption: EncryptionRef

    @model_validator(mode="after")
    def _fields_of_type(self) -> StorageSpec:
        if self.type is StorageType.SFTP and self.host is None:
            raise ValueError("an sftp Storage needs `host:` naming the backup server Host")
        if self.type is StorageType.S3:
            if self.bucket is None:
                raise ValueError("an s3 Storage needs `bucket:`")
            if self.path is not None or self.host is not None:
                raise ValueError("an s3 Storage takes `bucket:` and `prefix:`, not `path:` or `host:`")
        else:
            if self.path is None:
                raise ValueError(f"a {self.type.value} Storage needs `path:`")
            given = [camel(f) for f in S3_FIELDS if getattr(self, f) not in (None, "")]
            if given:
                raise ValueError(f"{', '.join(given)}: only for `type: s3`")
        return self


# --- TapeLibrary ----------------------------------------------------------------------


class MediaSpec(CamelSpec):
    type: str = "LTO-9"
    capacity: SizeText = Field(default_factory=lambda: ByteSize.parse("18TB"))


class TapeLibrarySpec(CamelSpec):
    type: Literal["virtual", "device"] = "virtual"
    path: str
    slots: int = Field(24, ge=1, le=10000)
    drives: int = Field(1, ge=1, le=64)
    media: MediaSpec = Field(default_factory=MediaSpec)
    encryption: EncryptionRef


# --- SLA ------------------------------------------------------------------------------


class RetentionSpec(CamelSpec):
    disk: DurationText
    daily: int | None = Field(None, ge=0)
    weekly: int | None = Field(None, ge=0)
    monthly: int | None = Field(None, ge=0)
    yearly: int | None = Field(None, ge=0)


class TapeCopySpec(CamelSpec):
    library: Name
    pool: Name
    schedule: ScheduleText
    retention: DurationText
    copy_from: Literal["disk", "source"] = "disk"


class SLASpec(CamelSpec):
    sync: ScheduleText
    full: ScheduleText
    retention: RetentionSpec
    tape: TapeCopySpec | None = None


# --- ProtectionGroup ------------------------------------------------------------------


class ScriptsSpec(CamelSpec):
    pre: str | None = None
    post: str | None = None
    timeout: DurationText = Field(default_factory=lambda: Duration.parse("10m"))


class ThrottleSpec(CamelSpec):
    rate: RateText
    during: WindowText | None = None


class MemberSpec(CamelSpec):
    """A member: a name, its Host(s) and one data source, `<provider kind>: {...}`.

    This base has no data-source field: `group_model` derives the model a policy is read with,
    one optional field per installed provider kind holding that provider's `spec_model`.
    """

    provider_kinds: ClassVar[tuple[str, ...]] = ()  # set on each derived model

    name: Name
    host: Name | None = Field(None, description="the Host holding the data")
    hosts: tuple[Name, ...] | None = Field(
        None,
        description="instead of `host:`, the Hosts of one source that spans several (for providers "
        "with multi-host sources, e.g. a primary/standby pair of database servers)",
    )

    @model_validator(mode="after")
    def _one_provider(self) -> MemberSpec:
        if (self.host is None) == (self.hosts is None):
            raise ValueError(
                "a member needs exactly one of `host: NAME` or `hosts: [NAME, NAME]` "
                "(a source that spans several hosts, e.g. a primary/standby pair)"
            )
        kinds = type(self).provider_kinds
        given = [k for k in kinds if getattr(self, _field_name(k), None) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a member needs exactly one data source ({', '.join(kinds)}); found "
                + (", ".join(given) if given else "none")
            )
        return self

    @property
    def provider(self) -> str:
        return next(k for k in type(self).provider_kinds if getattr(self, _field_name(k), None) is not None)

    @property
    def all_hosts(self) -> tuple[str, ...]:
        """Every Host of the member: its one `host`, or the hosts of a pair (first: the resource's host)."""
        return self.hosts if self.hosts is not None else (self.host or "",)

    @property
    def main_host(self) -> str:
        return self.all_hosts[0] if self.all_hosts else ""

    def source(self) -> BaseModel:
        """The member's data-source spec, an instance of its provider's spec model."""
        spec = getattr(self, _field_name(self.provider))
        assert isinstance(spec, BaseModel)
        return spec

    def provider_spec(self) -> dict[str, object]:
        """The member's data-source spec in snake_case, as providers receive it."""
        return self.source().model_dump(mode="json", by_alias=False)


class ProtectionGroupSpec(CamelSpec):
    sla: Name
    storage: Name
    size_hint: SizeText | None = None
    change_rate: ChangeRateText | None = None
    scripts: ScriptsSpec | None = None
    throttle: ThrottleSpec | None = None
    members: tuple[MemberSpec, ...] = Field(min_length=1)


MEMBER_FIELDS = frozenset({"name", "host", "hosts"})  # a member's keys besides its data source


def _field_name(kind: str) -> str:
    return kind.replace("-", "_")


@cache
def group_model(kinds: tuple[str, ...]) -> type[ProtectionGroupSpec]:
    """The ProtectionGroup spec model of a set of provider kinds: each member takes one
    `<kind>: {...}` validated by that provider's spec model (raises ProviderError)."""
    from protectctl.provider import spec_model

    fields: dict[str, Any] = {
        _field_name(kind): (spec_model(kind) | None, Field(None, alias=kind, description=f"a {kind} data source"))
        for kind in kinds
    }
    member = create_model("MemberSpec", __base__=MemberSpec, __module__=__name__, **fields)
    member.provider_kinds = kinds
    members = (tuple[member, ...], Field(min_length=1))
    return create_model("ProtectionGroupSpec", __base__=ProtectionGroupSpec, __module__=__name__, members=members)


def member_kinds(spec: object, *, named: bool = False) -> tuple[str, ...]:
    """The provider kinds a ProtectionGroup spec (as read) is validated with: the built-in ones,
    and every installed one when a member has a key that is neither a member field nor a
    built-in kind (the entry-point scan costs ~50 ms, so only then). `named`: of the built-in
    ones only those the members name (their providers load; the others' need not)."""
    from protectctl.provider import available_kinds, builtin_kinds

    builtin = builtin_kinds()
    members = spec.get("members") if isinstance(spec, dict) else None
    used: set[str] = set()
    for member in members if isinstance(members, list) else ():
        if isinstance(member, dict) and any(k not in MEMBER_FIELDS and k not in builtin for k in member):
            return tuple(available_kinds())
        used.update(member if isinstance(member, dict) else ())
    return tuple(k for k in builtin if k in used) if named else builtin


def spec_model_for(
    kind: Kind, spec: object = None, *, installed: bool = False, narrow: bool = False
) -> type[CamelSpec]:
    """The model a document's spec is validated with; a ProtectionGroup's depends on the
    provider kinds its members name (`installed`: every installed kind, for the JSON Schema).

    `narrow`: a ProtectionGroup model of only the built-in kinds its members name. A spec it
    accepts is accepted alike by the full model (the other kinds' fields are optional); one it
    refuses must be validated again with the full model, whose errors are the ones to report."""
    if kind is not Kind.PROTECTION_GROUP:
        return SPEC_MODELS[kind]
    if installed:
        from protectctl.provider import available_kinds

        return group_model(tuple(available_kinds()))
    return group_model(member_kinds(spec, named=narrow))


# --- Settings -------------------------------------------------------------------------


class StateSettings(CamelSpec):
    backend: Literal["local", "s3", "postgres"] = "local"
    path: str = Field(".protectctl/state.json", description="local: the state file")
    storage: Name | None = Field(None, description="s3: a Storage of type s3; the state lives under its prefix")
    key: str = Field(
        "state/default.json",
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="s3: the state object's key below the Storage's prefix",
    )
    dsn: PassphraseRef | None = Field(None, description="postgres: the connection string, by `env:` or `file:`")
    schema_: str = Field(
        "protectctl",
        alias="schema",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="postgres: the schema holding the state table",
    )
    name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="postgres: the state's name (one row per name), like a workspace",
    )

    @model_validator(mode="after")
    def _fields_of_backend(self) -> StateSettings:
        if self.backend == "s3" and self.storage is None:
            raise ValueError("the s3 state backend needs `storage:` naming a Storage of type s3")
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("the postgres state backend needs `dsn: {env: VARIABLE}` (or `file:`)")
        return self


class BudgetSettings(CamelSpec):
    application_source: int = Field(512, ge=1)
    file_source: int = Field(64, ge=1)


class JobTimeouts(CamelSpec):
    """How long each kind of scheduled job may run before it is stopped (and counted failed)."""

    sync: DurationText = Field(default_factory=lambda: Duration.parse("6h"))
    full: DurationText = Field(default_factory=lambda: Duration.parse("1d"))
    prune: DurationText = Field(default_factory=lambda: Duration.parse("6h"))
    verify: DurationText = Field(default_factory=lambda: Duration.parse("12h"))
    tape: DurationText = Field(default_factory=lambda: Duration.parse("2d"))


class ScheduleDefaults(CamelSpec):
    randomized_delay: DurationText = Field(
        default_factory=lambda: Duration.parse("2m"), description="every timer starts up to this much later, at random"
    )
    prune: ScheduleText = Field(default_factory=lambda: Schedule.parse("daily at 04:00"))
    verify: ScheduleText = Field(default_factory=lambda: Schedule.parse("weekly on sat at 05:00"))
    timeouts: JobTimeouts = Field(default_factory=JobTimeouts)
    on_failure: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9:_.@%\\-]+\.(service|target)$",
        description="systemd hosts: a unit started when a job fails, e.g. 'notify-email@%n.service'",
    )
    mailto: str = Field(
        "root",
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="cron hosts: who gets mail about failed runs ('' for nobody); successful runs print nothing",
    )
    ac_power: bool = Field(False, description="run jobs only on AC power (on battery a run is skipped)")
    inhibit: bool = Field(False, description="hold a systemd-inhibit lock against sleep and shutdown while a job runs")


class SettingsSpec(CamelSpec):
    state: StateSettings = Field(default_factory=StateSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    schedules: ScheduleDefaults = Field(default_factory=ScheduleDefaults)
    parallelism: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPUs a backup job may use: compression and encryption threads, and worker "
        "processes for a first backup (default: the host's cores, at most 4); a restore's file "
        "threads follow it too; 1 keeps a protected server's other cores free",
    )


def default_settings() -> SettingsSpec:
    """`SettingsSpec()`, the Settings of a policy that has none, without building the Settings
    models' validators (~40 ms of every policy command): pydantic does not validate defaults
    (`validate_default` is off) and they pass the model validators, so the value is the same,
    unset fields and all (tests/unit/test_startup_paths.py)."""
    return SettingsSpec.model_construct(
        set(),
        state=StateSettings.model_construct(set()),
        budgets=BudgetSettings.model_construct(set()),
        schedules=ScheduleDefaults.model_construct(set(), timeouts=JobTimeouts.model_construct(set())),
    )


# --- Documents ------------------------------------------------------------------------


class Metadata(Spec):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


SPEC_MODELS: dict[Kind, type[CamelSpec]] = {
    Kind.HOST: HostSpec,
    Kind.ENCRYPTION_KEY: EncryptionKeySpec,
    Kind.STORAGE: StorageSpec,
    Kind.TAPE_LIBRARY: TapeLibrarySpec,
    Kind.SLA: SLASpec,
    Kind.PROTECTION_GROUP: ProtectionGroupSpec,
    Kind.SETTINGS: SettingsSpec,
}


class Header(Spec):
    """The envelope of every document; validated before the spec."""

    api_version: Literal["protectctl/v1"] = Field(alias="apiVersion")
    kind: Kind
    metadata: Metadata
    spec: dict[str, Any] = Field(default_factory=dict)
