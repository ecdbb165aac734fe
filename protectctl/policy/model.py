"""Policy documents as pydantic models: the one source of truth for the policy shape.

Pure: no I/O. YAML keys are camelCase (the DESIGN contract) through aliases; unknown
fields are errors. Durations, sizes, rates and schedules are parsed once here into the
typed values of `protectctl.units` and never re-parsed. The JSON Schema in `schemas/` is
exported from these models.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from protectctl.units import ByteSize, ChangeRate, Duration, Rate, Schedule, TimeWindow, UnitError

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
        WithJsonSchema({"type": "string", "description": f"{what}, e.g. {example!r}", "examples": [example]}),
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
    """Base of every spec: camelCase aliases, unknown fields forbidden, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=None)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class CamelSpec(Spec):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=camel
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
    authorized_keys: str = Field(
        ".ssh/authorized_keys",
        description="SSH hosts holding sftp storage: the login user's authorized_keys file (relative to its "
                    "home); apply adds each agent's append-only key here")

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
                    "keys with s3:BypassGovernanceRetention can")


S3_FIELDS: tuple[str, ...] = ("endpoint", "bucket", "prefix", "credentials", "agent_credentials", "object_lock")


class StorageSpec(CamelSpec):
    type: StorageType
    path: str | None = Field(None, description="local and sftp: the repository's directory")
    host: Name | None = Field(None, description="for sftp: the Host holding the repository")
    endpoint: str | None = Field(None, pattern=r"^https?://", description="s3: any S3-compatible endpoint; "
                                 "omit for AWS")
    region: str = Field("us-east-1", description="s3: the bucket's region")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", description="s3: the bucket")
    prefix: str = Field("", pattern=r"^([A-Za-z0-9._-]+/)*$", description="s3: keys start with this, e.g. site-a/")
    credentials: S3CredentialsSpec | None = Field(
        None, description="s3: the control machine's key (init, prune, check, restore); omit to use the "
                          "AWS default chain (environment, profile, instance role)")
    agent_credentials: S3CredentialsSpec | None = Field(
        None, description="s3: the key agents get (apply copies it to SSH hosts, root-only); a least-privilege "
                          "key that can write but not destroy locked points")
    object_lock: ObjectLockSpec | None = Field(
        None, description="s3: lock every object a point needs until the point's retention ends (the bucket "
                          "must have object lock enabled)")
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


class FilesystemMember(CamelSpec):
    path: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    one_file_system: bool = False


class PostgresqlNodeSpec(CamelSpec):
    """One host of a primary/standby pair where its cluster differs from the member's defaults."""

    data_dir: str | None = Field(None, pattern=r"^/")
    port: int | None = Field(None, ge=1, le=65535)
    socket_dir: str | None = Field(None, pattern=r"^/")
    spool_dir: str | None = Field(None, pattern=r"^/")


class PostgresqlMember(CamelSpec):
    data_dir: str = Field(pattern=r"^/", description="the cluster's absolute data directory")
    port: int = Field(5432, ge=1, le=65535)
    socket_dir: str = Field("/var/run/postgresql", pattern=r"^/", description="unix_socket_directories entry")
    os_user: str = Field("postgres", description="the OS user PostgreSQL runs as; its binaries never run as root")
    bin_dir: str = Field("/usr/lib/postgresql/15/bin", pattern=r"^/")
    allow_restart: bool = Field(False, description="apply may restart the cluster when archiving needs it")
    spool_dir: str | None = Field(None, pattern=r"^/", description="where archive_command spools WAL for the "
                                  "agent (default: <host root>/var/lib/protectctl-spool/<group>--<member>)")
    spool_limit: SizeText = Field(default_factory=lambda: ByteSize.parse("4GiB"),
                                  description="past this, segments are dropped loudly instead of filling the disk")
    streaming: bool = Field(False, description="stream WAL with pg_receivewal (RPO of seconds)")
    backup_from: Literal["primary", "standby"] = Field(
        "primary", description="a member with `hosts:` (a primary/standby pair): base backups run on the node "
        "that is primary now, or on a standby; WAL always ships from the primary")
    per_host: dict[Name, PostgresqlNodeSpec] = Field(
        default_factory=dict, description="a member with `hosts:`: what differs on one host of the pair "
        "(dataDir, port, socketDir, spoolDir); the other fields apply to every host")


PROVIDER_FIELDS: tuple[str, ...] = ("filesystem", "postgresql")


class MemberSpec(CamelSpec):
    name: Name
    host: Name | None = Field(None, description="the Host holding the data")
    hosts: tuple[Name, ...] | None = Field(
        None, description="instead of `host:`, a PostgreSQL primary/standby pair protected as one source "
        "(docs/postgresql.md)")
    filesystem: FilesystemMember | None = None
    postgresql: PostgresqlMember | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> MemberSpec:
        if (self.host is None) == (self.hosts is None):
            raise ValueError("a member needs exactly one of `host: NAME` or `hosts: [NAME, NAME]` "
                             "(a PostgreSQL primary/standby pair)")
        given = [f for f in PROVIDER_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a member needs exactly one data source ({', '.join(PROVIDER_FIELDS)}); found "
                + (", ".join(given) if given else "none")
            )
        return self

    @property
    def provider(self) -> str:
        return next(f for f in PROVIDER_FIELDS if getattr(self, f) is not None)

    @property
    def all_hosts(self) -> tuple[str, ...]:
        """Every Host of the member: its one `host`, or the hosts of a pair (first: the resource's host)."""
        return self.hosts if self.hosts is not None else (self.host or "",)

    @property
    def main_host(self) -> str:
        return self.all_hosts[0] if self.all_hosts else ""

    def provider_spec(self) -> dict[str, object]:
        """The member's data-source spec in snake_case, as providers receive it."""
        spec = getattr(self, self.provider)
        assert isinstance(spec, BaseModel)
        return spec.model_dump(mode="json", by_alias=False)


class ProtectionGroupSpec(CamelSpec):
    sla: Name
    storage: Name
    size_hint: SizeText | None = None
    change_rate: ChangeRateText | None = None
    scripts: ScriptsSpec | None = None
    throttle: ThrottleSpec | None = None
    members: tuple[MemberSpec, ...] = Field(min_length=1)


# --- Settings -------------------------------------------------------------------------


class StateSettings(CamelSpec):
    backend: Literal["local", "s3", "postgres"] = "local"
    path: str = Field(".protectctl/state.json", description="local: the state file")
    storage: Name | None = Field(None, description="s3: a Storage of type s3; the state lives under its prefix")
    key: str = Field("state/default.json", pattern=r"^[A-Za-z0-9._/-]+$",
                     description="s3: the state object's key below the Storage's prefix")
    dsn: PassphraseRef | None = Field(None, description="postgres: the connection string, by `env:` or `file:`")
    schema_: str = Field("protectctl", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                         description="postgres: the schema holding the state table")
    name: str = Field("default", pattern=r"^[A-Za-z0-9._-]+$",
                      description="postgres: the state's name (one row per name), like a workspace")

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


class ScheduleDefaults(CamelSpec):
    randomized_delay: DurationText = Field(default_factory=lambda: Duration.parse("2m"))
    prune: ScheduleText = Field(default_factory=lambda: Schedule.parse("daily at 04:00"))
    verify: ScheduleText = Field(default_factory=lambda: Schedule.parse("weekly on sat at 05:00"))


class SettingsSpec(CamelSpec):
    state: StateSettings = Field(default_factory=StateSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    schedules: ScheduleDefaults = Field(default_factory=ScheduleDefaults)


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
