"""The data-source provider contract, the registry that finds providers, and the engine
services a provider may use: everything a provider imports from protectctl.

A provider is one class per data-source kind (filesystem, postgresql, a third party's),
found through the `protectctl.providers` entry-point group, so a third party adds one by
installing a package (docs/architecture.md, "How to write a provider"). It owns its member
kind: `kind`, `spec_model` (the pydantic model of `<kind>: {...}` in a ProtectionGroup
member), `traits` (what the policy rules must know of it), and the two jobs every provider
does: `snapshot` and `restore`. What only some providers do is an optional ability, each a
small runtime-checkable Protocol below (prepare a host, stream logs, choose the point to
restore from, report recovery windows or status problems, contribute services, ...):
callers ask the registry for the provider and check the ability they need.

Providers see the engine through narrow interfaces, the way restic's archiver sees only
`archiverRepo`: a `SnapshotSink` to store content and trees into, a `PointReader` to read a
point back, and three services: `archive` (a directory tree into the sink, with the change
journal), `restore_tree` (a stored tree onto a directory) and the node helpers. Nothing
else of `agent`, `engine` or `restore` is theirs to import.

This module imports no provider and, of the engine, only its value types (ids, trees) at
import time (`validate` imports it and must start fast): providers load when first asked
for, `Point` and the services import their implementation when used.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import ProviderError, RestoreError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from pydantic import BaseModel

    from protectctl.engine.points import Point
    from protectctl.policy.model import CamelSpec

__all__ = [
    "BlobId",
    "Node",
    "NodeType",
    "Tree",
    "Point",
    "LogChain",
    "SnapshotKind",
    "Compression",
    "SnapshotRequest",
    "SnapshotStats",
    "SnapshotOutcome",
    "SnapshotSink",
    "RestoreRequest",
    "RestoreOutcome",
    "PointReader",
    "Traits",
    "SpecProblem",
    "Provider",
    "PrepareRequest",
    "PrepareOutcome",
    "HostPreparer",
    "PreparePreview",
    "PointChooser",
    "JobPlacement",
    "JobPlacer",
    "MemberChecker",
    "SourceSpecBuilder",
    "SourceIdentity",
    "Service",
    "ServiceContributor",
    "LogStreamer",
    "RecoveryWindows",
    "StatusReporter",
    "RestoreOptions",
    "SourcePaths",
    "SourceRoot",
    "ContentItem",
    "ContentListing",
    "ContentWindow",
    "ListsContents",
    "ArchiveOptions",
    "Archived",
    "archive",
    "snapshot_problems",
    "journal_problems",
    "restore_tree",
    "file_node",
    "dir_node",
    "node_name",
    "safe_name",
    "validate_patterns",
    "journal_path",
    "ENTRY_POINT_GROUP",
    "builtin_kinds",
    "available_kinds",
    "load_provider",
    "spec_model",
    "traits",
    "check_restore_options",
]

ENTRY_POINT_GROUP = "protectctl.providers"
BUILTIN_INDEX = "protectctl.providers"  # its BUILTIN maps kind -> "module:Class"

SnapshotKind = Literal["sync", "full"]
Compression = Literal["default", "fast"]  # how SnapshotSink.store_content compresses new chunks


def __getattr__(name: str) -> object:
    # Point lives with the repository format (it imports the crypto layer): loaded on first use
    if name == "Point":
        from protectctl.engine.points import Point

        return Point
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the engine as a provider sees it -------------------------------------------------------


class SnapshotSink(Protocol):
    """Where a snapshot's content goes: one write session of the repository."""

    @property
    def repository_id(self) -> str:
        """The repository's id (e.g. to key state a provider keeps per repository)."""
        ...

    def hash_content(self, data: bytes | bytearray | memoryview) -> bytes:
        """The keyed content hash a file node records (restore verifies against it); thread-safe."""
        ...

    def store_content(
        self, data: bytes | bytearray | memoryview, *, compression: Compression = "default"
    ) -> tuple[BlobId, ...]:
        """Cut `data` into chunks and store those the repository lacks; returns the chunk ids.
        `compression="fast"`: a bulk stream whose content compresses about as well at a cheaper
        setting (a database's backup stream): its new chunks cost a third of the compression CPU."""
        ...

    def store_chunk(self, data: bytes | bytearray | memoryview) -> tuple[BlobId, bool]:
        """Store `data` as one chunk, uncut (a block-level source cuts its own, e.g. at an image's
        clusters) unless the repository has it; returns its id and whether it was new."""
        ...

    def save_tree(self, tree: Tree) -> BlobId:
        """Store a tree (its subtrees first) and return its id."""
        ...

    def has_blob(self, blob: BlobId) -> bool: ...

    def list_points(self, source: str) -> list[Point]:
        """The recovery points of `source` already in the repository, oldest first."""
        ...


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


class PointReader(Protocol):
    """A point read back: from the repository, or from tape."""

    def load_tree(self, blob_id: BlobId) -> Tree: ...

    def load_blob(self, blob_id: BlobId) -> bytes: ...

    def content_hasher(self) -> Hasher: ...


# -- the contract -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Everything a provider needs to write one recovery point's content."""

    source: str  # "group/member"
    spec: Mapping[str, object]  # the member spec, snake_case
    kind: SnapshotKind
    sink: SnapshotSink
    state_dir: Path  # the agent's per-host state; change tracking lives under it
    progress: Progress = field(default_factory=NullProgress)
    # Call once the source is frozen (a snapshot taken): the group's post script runs then,
    # not after the upload. Not called: it runs after the snapshot, as always.
    frozen: Callable[[], None] | None = None
    # What the caller asked of this run beyond its kind, e.g. {"express": False} (`run full
    # --no-express`: copy everything, not only what changed since the previous full).
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SnapshotStats:
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    chunks_new: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotOutcome:
    """What a snapshot produced; `finish` must be called once the point is saved (or not)."""

    tree: BlobId
    stats: SnapshotStats
    errors: tuple[str, ...]  # files that vanished or could not be read: the point is incomplete
    extra: Mapping[str, object]  # provider facts recorded in the point (e.g. silent changes)
    finish: Callable[[str | None], None]  # point id when saved, None when discarded


@dataclass(frozen=True, slots=True)
class RestoreRequest:
    source: str
    spec: Mapping[str, object]
    point: Point
    reader: PointReader
    target: Path | None  # None: the original place
    subpaths: Sequence[str] = ()
    dry_run: bool = False
    overwrite: bool = False
    progress: Progress = field(default_factory=NullProgress)
    # The instant asked for (UTC) or "latest"; None when the caller picked the point itself.
    to_time: datetime | Literal["latest"] | None = None
    # Restore options the provider accepts (RestoreOptions), plus the caller's facts
    # (`source_host_reachable`: False when the source's host is another machine).
    options: Mapping[str, object] = field(default_factory=dict)
    state_dir: Path | None = None  # the agent's per-host state (where a provider keeps its spool)
    points: Sequence[Point] = ()  # every point of the source in the repository; empty from tape
    from_tape: bool = False  # `reader` is a point read back from tape (no other point is at hand)
    delete: bool = False  # also remove what the target holds that the point does not (with overwrite)
    resume: bool = False  # continue an unfinished restore of this point into the target


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    target: Path
    files: int
    dirs: int
    bytes_total: int  # logical bytes of the selected files
    bytes_needed: int  # bytes the target must hold (holes excluded)
    bytes_free: int | None  # free bytes on the target filesystem, when known
    verified: int  # files whose content matched their stored hash
    written: bool  # False for a dry run
    notes: tuple[str, ...] = ()
    details: Mapping[str, object] = field(default_factory=dict)  # provider facts, JSON values


@dataclass(frozen=True, slots=True)
class Traits:
    """What the policy rules and the plan must know of a provider."""

    application: bool = False  # counts against the application snapshot budget (512) instead of files (64)
    continuous_log_shipping: bool = False  # ships logs continuously: may sync more often than every 15m
    multi_host: bool = False  # a member may name several hosts (`hosts: [a, b]`, e.g. a primary/standby pair)
    # its sync and full only read files in-process and write the repository and the agent's state:
    # they run in the tightest sandbox (no other user, bounded capabilities and writable paths)
    confined_jobs: bool = False


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """A problem with a member's spec; `path` is relative to the spec (YAML keys, camelCase)."""

    path: tuple[str | int, ...]
    summary: str
    detail: str | None = None
    warning: bool = False


class Provider(Protocol):
    """One kind of data source."""

    kind: str
    spec_model: type[CamelSpec]  # `<kind>: {...}` of a member: camelCase aliases, extra fields forbidden
    traits: Traits

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        """Write the source's content to the sink; raises ProviderError."""
        ...

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Bring a point back (or, dry run, say what that would take); raises RestoreError."""
        ...


# -- optional abilities ---------------------------------------------------------------------


@runtime_checkable
class MemberChecker(Protocol):
    """Checks of a member spec beyond its model (run by `validate`, located at file:line:col)."""

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        """Problems with `spec` (an instance of spec_model) of member `source`; `hosts` when
        the member is declared with `hosts:`."""
        ...


@runtime_checkable
class SourcePaths(Protocol):
    """A provider whose sources read paths on their host: `plan --refresh` and `hosts check`
    say when one is missing, before the first sync fails on it."""

    def source_paths(self, spec: Mapping[str, object]) -> list[str]:
        """The directories a member reads on its host, from its spec as the agent receives it
        (snake_case, a local host's relative path already resolved)."""
        ...


@runtime_checkable
class SourceSpecBuilder(Protocol):
    """A provider that shapes the spec its agents receive (e.g. one entry per host of a pair)."""

    def source_spec(self, spec: Mapping[str, object], hosts: Mapping[str, str] | None) -> dict[str, object]:
        """The spec as the agent receives it, from the member's (snake_case); `hosts`: for a member
        with `hosts:`, each host and its agent's state directory, in the member's order."""
        ...


@runtime_checkable
class SourceIdentity(Protocol):
    """What names a provider's data on a host, so two groups cannot protect the same data."""

    def source_identity(self, spec: Mapping[str, object], host: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Service:
    """A long-running agent process a source needs beside its timers (a supervised service)."""

    name: str  # the unit's suffix and the schedule address's last part, e.g. "stream"
    description: str  # e.g. "WAL streaming": the unit says "protectctl <description> of <source>"
    command: tuple[str, ...]  # the `protectctl agent ...` subcommand, e.g. ("wal-stream",)


@runtime_checkable
class ServiceContributor(Protocol):
    """A provider whose sources need a service on their hosts (e.g. a log receiver)."""

    def services(self, spec: Mapping[str, object]) -> list[Service]: ...


@runtime_checkable
class LogStreamer(Protocol):
    """A provider that streams logs continuously (the agent's `wal-stream` service)."""

    def stream_logs(self, source: str, spec: Mapping[str, object], state_dir: Path, log: Callable[[str], None]) -> None:
        """Receive logs until SIGTERM or SIGINT; raises ProtectctlError when `spec` does not stream."""
        ...


@runtime_checkable
class RecoveryWindows(Protocol):
    """A provider that rolls logs forward: the time spans its points can be restored to."""

    def recovery_windows(self, points: Sequence[Point]) -> list[str]:
        """Lines describing the recoverable spans, gaps and dropped logs of one source's points."""
        ...


@runtime_checkable
class StatusReporter(Protocol):
    """A provider that knows more of a source's health than its points' ages."""

    def status_problems(
        self, source: str, spec: Mapping[str, object], points: Sequence[Point], state_dir: Path
    ) -> list[str]:
        """Problems that put `source` out of SLA (one sentence each); empty when none."""
        ...


@runtime_checkable
class RestoreOptions(Protocol):
    """A provider that takes restore options (`restore --port/--database/--as`)."""

    restore_options: frozenset[str]  # option names as the CLI passes them: port, database, as_name


@runtime_checkable
class LogChain(Protocol):
    """A provider whose points form a log chain (full backups rolled forward by log points):
    prune keeps the log points a kept base needs, not only the points the rules pick."""

    def point_role(self, point: Point) -> Literal["base", "log", "point"]:
        """The point's role: a full the logs roll forward ("base"), logs shipped by a sync ("log"),
        or a point that restores on its own ("point")."""
        ...


@runtime_checkable
class SourceRoot(Protocol):
    """A provider whose points hold a directory tree with an absolute place on its host, so a
    path can be given as it was protected (`--path /etc/hostname` of a source of `/etc`)."""

    def source_root(self, spec: Mapping[str, object], point: Point | None) -> str | None:
        """The absolute path the point's tree root stood for (the point's own record first,
        else the spec's), or None when it has none."""
        ...


@dataclass(frozen=True, slots=True)
class ContentItem:
    """One thing a point holds as its provider names it (e.g. a database), as `ls` shows it."""

    name: str
    size: int | None = None  # bytes, when known
    details: Mapping[str, object] = field(default_factory=dict)  # JSON values, e.g. {"oid": 16384}


@dataclass(frozen=True, slots=True)
class ContentListing:
    """What a restore to a time would bring back: the items of the base point it starts from."""

    base: Point  # the point such a restore starts from
    start: datetime  # the recoverable window the time falls in
    end: datetime
    items: tuple[ContentItem, ...]
    notes: tuple[str, ...] = ()  # e.g. a base point that did not record its items


@dataclass(frozen=True, slots=True)
class ContentWindow:
    """A span of time an item can be restored to, from one base point (`versions`)."""

    item: ContentItem
    start: datetime
    end: datetime
    base: Point
    last: Point  # the newest point whose logs the span replays (the base when none)
    points: int  # the points the span uses, the base included


@runtime_checkable
class ListsContents(Protocol):
    """A provider whose points hold items other than files to browse (e.g. databases): `ls` and
    `versions` answer with those items and the windows they can be restored to; `cat` refuses."""

    content_type: str  # what an item is, e.g. "database"
    # how one item is brought back, `{source}` and `{name}` filled in by the caller, e.g.
    # "protectctl restore {source} --to-time TIME --database {name} --as NEW_NAME"
    content_hint: str

    def list_contents(self, points: Sequence[Point], to_time: datetime | Literal["latest"]) -> ContentListing:
        """The items a restore to `to_time` would hold (of `points`, one source's, oldest first);
        raises RestoreError when nothing can be restored to that time."""
        ...

    def content_windows(self, name: str, points: Sequence[Point]) -> list[ContentWindow]:
        """Each recoverable window whose base point holds the item `name`, oldest first."""
        ...


@dataclass(frozen=True, slots=True)
class PrepareRequest:
    source: str  # "group/member"
    spec: Mapping[str, object]  # the member spec, snake_case
    state_dir: Path  # the agent's per-host state directory on that host


@dataclass(frozen=True, slots=True)
class PrepareOutcome:
    changes: tuple[str, ...] = ()  # what was changed, one sentence each
    warnings: tuple[str, ...] = ()  # what the operator must know or do (e.g. a restart is pending)


@runtime_checkable
class HostPreparer(Protocol):
    """A provider that must configure the host before protecting it (e.g. log archiving)."""

    def prepare_host(self, request: PrepareRequest) -> PrepareOutcome:
        """Make the host ready (idempotent); raises ProviderError."""
        ...


@runtime_checkable
class PreparePreview(Protocol):
    """A HostPreparer that says what its prepare does, for the plan: from the spec alone on every
    plan (notes on the source's change), and reading the host, changing nothing (`plan --refresh`)."""

    def prepare_notes(self, spec: Mapping[str, object]) -> list[str]:
        """What apply's prepare does on the source's host(s), one sentence each, from the spec as
        the agents receive it (pure: nothing is read)."""
        ...

    def preview_prepare(self, request: PrepareRequest) -> PrepareOutcome:
        """What prepare would change on this host now (`changes`) and what it would refuse
        (`warnings`), one sentence each, reading only; raises ProviderError when it cannot tell."""
        ...


@runtime_checkable
class PointChooser(Protocol):
    """A provider that picks the point to restore itself (e.g. base backup + logs for a time)."""

    def choose_point(
        self,
        points: Sequence[Point],
        to_time: datetime | Literal["latest"],
        *,
        source: str,
        options: Mapping[str, object] | None = None,
    ) -> Point:
        """The point a restore to `to_time` starts from; raises RestoreError saying why none fits.
        `options`: the restore options given (RestoreOptions), e.g. a position that names the instant."""
        ...


@dataclass(frozen=True, slots=True)
class JobPlacement:
    """Where a backup job of a source held by several hosts (a primary/standby pair) runs."""

    spec: Mapping[str, object] | None  # the spec of the chosen node; None: not on this host now (exit 0)
    state_dir: Path | None = None  # that node's agent state, when it differs from the caller's
    reason: str = ""  # why this node, or why none here: one sentence for the operator
    host: str | None = None  # the Host of the chosen node (recorded in the point), when it differs


@runtime_checkable
class JobPlacer(Protocol):
    """A provider whose sources may span hosts: it picks the node a sync or full runs against."""

    def place_job(self, source: str, spec: Mapping[str, object], kind: SnapshotKind, state_dir: Path) -> JobPlacement:
        """The node to run `kind` on now; raises ProviderError when none can be reached."""
        ...


# -- engine services ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    """What `archive` reads: a directory tree, filtered, with the change journal."""

    root: Path
    include: Sequence[str] = ()  # gitignore-style patterns (see validate_patterns)
    exclude: Sequence[str] = ()
    one_file_system: bool = False
    verify_all: bool = False  # read every file and compare with the journal (a full)
    # Per file (path relative to root, lstat): True to read it even though the journal says it
    # is unchanged (e.g. modified too close to the previous backup to trust its identity).
    # Given, no directory or entry is reused from the journal without asking.
    reread: Callable[[bytes, os.stat_result], bool] | None = None
    keep_trees: bool = False  # return every tree saved (they cannot be read back before the commit)
    # How the sync sees the tree (agent/snapshots.py): auto | btrfs | reflink | none.
    snapshot: str = "none"
    # Block-level change tracking of big files (agent/tracking.py): auto | off; sizes in bytes.
    change_tracking: str = "off"
    tracking_min_size: int | None = None
    tracking_block_size: int | None = None
    # The change journal (agent/changes.py): "watch" walks only what the watcher saw change.
    change_journal: str = "off"


@dataclass(frozen=True, slots=True)
class Archived:
    """What `archive` stored; `finish` must be called once the point is saved (or not)."""

    tree: BlobId
    files: int
    dirs: int
    bytes_total: int
    bytes_read: int
    files_read: int
    files_reused: int
    silent_changes: int  # files whose content changed while their identity did not (a full)
    silent_changed: tuple[str, ...]  # the first of them, by path
    errors: tuple[str, ...]  # entries that vanished or could not be read
    root: os.stat_result  # the root directory's lstat
    trees: Mapping[BlobId, Tree]  # with keep_trees: every tree saved, by id
    finish: Callable[[str | None], None]  # commits the journal (point id) or drops it (None)
    # How the tree was captured and big files tracked (snapshot kind and why, block tracking).
    capture: Mapping[str, object] = field(default_factory=dict)


def archive(request: SnapshotRequest, options: ArchiveOptions, *, journal: str | None = None) -> Archived:
    """Archive `options.root` into `request.sink`, reading only what changed since the journal
    of `journal` (default: the request's source) was last committed; raises ProviderError when
    the root cannot be read."""
    if options.snapshot != "none" or options.change_tracking != "off":
        from protectctl.agent.tracking import archive_captured

        return archive_captured(request, options, journal=journal or request.source)
    from protectctl.agent.archive import archive as run

    return run(request, options, journal=journal or request.source)


def snapshot_problems(root: Path, source: str, mode: str) -> list[str]:
    """What keeps `source` from the consistent captures `mode` asks for (one sentence each): a
    snapshot a killed sync left, an explicit snapshot kind the filesystem under `root` lacks."""
    from protectctl.agent.snapshots import capture_problems

    return capture_problems(root, source, mode)


def journal_problems(state_dir: Path, source: str) -> list[str]:
    """What keeps `source`'s change journal (`agent watch`) from working, one sentence each:
    a host without fanotify, a watcher that is not running."""
    from protectctl.agent.changes import journal_problems as problems

    return problems(state_dir, source)


def journal_path(state_dir: Path, source: str, repository_id: str) -> Path:
    """Where `archive` keeps the change journal of `source` in a repository."""
    return state_dir / "journal" / f"{safe_name(source)}.{repository_id}.db"


def restore_tree(
    reader: PointReader,
    tree: BlobId,
    target: Path,
    *,
    subpaths: Sequence[str] = (),
    dry_run: bool = False,
    overwrite: bool = False,
    root_meta: Mapping[str, object] | None = None,
    progress: Progress | None = None,
    writeback: bool = False,
    delete: bool = False,
    resume: bool = False,
) -> RestoreOutcome:
    """Restore `tree` (or its `subpaths`) below `target`, every file verified against its hash;
    raises RestoreError. `writeback`: start writing data to disk early (the caller fsyncs next).
    `delete`, `resume`: as in RestoreRequest."""
    from protectctl.restore.run import restore_tree as run

    return run(
        reader,
        tree,
        target,
        subpaths=subpaths,
        dry_run=dry_run,
        overwrite=overwrite,
        root_meta=root_meta,
        progress=progress,
        writeback=writeback,
        delete=delete,
        resume=resume,
    )


def node_name(name: str | bytes) -> bytes:
    """A tree node's name as stored: bytes (a text name is its UTF-8 spelling, undecodable
    bytes kept as they came through surrogateescape)."""
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def file_node(
    name: str | bytes, st: os.stat_result, *, size: int, chunks: tuple[BlobId, ...], content_hash: bytes
) -> Node:
    """A file's tree node: `st`'s metadata (no xattrs) and the stored content."""
    from protectctl.agent.fsmeta import base_node

    return base_node(node_name(name), st, NodeType.FILE, (), size=size, chunks=chunks, content_hash=content_hash)


def dir_node(name: str | bytes, st: os.stat_result, subtree: BlobId) -> Node:
    """A directory's tree node: `st`'s metadata (no xattrs) and its stored tree."""
    from protectctl.agent.fsmeta import base_node

    return base_node(node_name(name), st, NodeType.DIR, (), subtree=subtree)


def safe_name(source: str) -> str:
    """A file-name-safe, collision-free spelling of a source name."""
    from protectctl.agent.lock import safe_name as spell

    return spell(source)


def validate_patterns(patterns: Sequence[object], field_name: str) -> list[str]:
    """Problems with include/exclude patterns (empty = fine)."""
    from protectctl.agent.patterns import validate_patterns as check

    return check(patterns, field_name)


# -- the registry ---------------------------------------------------------------------------


def builtin_kinds() -> tuple[str, ...]:
    """The kinds shipped with protectctl, found without an entry-point scan."""
    return tuple(sorted(_builtin()))


def available_kinds() -> list[str]:
    """Every provider kind that can be loaded here (scans the entry points)."""
    return sorted(set(_plugins()) | set(_builtin()))


def load_provider(kind: str) -> Provider:
    """The provider of `kind`; raises ProviderError naming the kinds that exist."""
    return _load(kind)


def spec_model(kind: str) -> type[CamelSpec]:
    """The pydantic model of `kind`'s member spec; raises ProviderError."""
    return _load(kind).spec_model


def traits(kind: str) -> Traits:
    """What the rules must know of `kind`; raises ProviderError."""
    return _load(kind).traits


_FLAGS = {"as_name": "--as"}


def check_restore_options(kind: str, source: str, options: Mapping[str, object]) -> None:
    """Refuse restore options the provider of `kind` does not take (RestoreError)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if not given:
        return
    provider = _load(kind)
    accepted = provider.restore_options if isinstance(provider, RestoreOptions) else frozenset()
    refused = [k for k in given if k not in accepted]
    if refused:
        flags = ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in refused)
        takes = ", ".join(_FLAGS.get(k, "--" + k.replace("_", "-")) for k in sorted(accepted)) or "none"
        raise RestoreError(
            f"{source} is a {kind} source: its restore takes no {flags}",
            hint=f"restore options of {kind} sources: {takes}",
        )


@cache
def _builtin() -> dict[str, str]:
    index: dict[str, str] = getattr(importlib.import_module(BUILTIN_INDEX), "BUILTIN", {})
    return dict(index)


@cache
def _plugins() -> dict[str, Callable[[], object]]:
    """kind -> loader of the class, from the entry points (~50 ms: only when a kind is not built in)."""
    import importlib.metadata

    found: dict[str, Callable[[], object]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.load)
    return found


_ABSENT = object()


@cache
def _load(kind: str) -> Provider:
    """Built-in kinds first (no entry-point scan), then plug-ins; a plug-in cannot replace a
    built-in kind. One instance per kind and process: providers keep no state of their own."""
    target = _builtin().get(kind)
    try:
        if target is not None:
            module_name, _, attr = target.partition(":")
            factory = getattr(importlib.import_module(module_name), attr)
        else:
            loader = _plugins().get(kind)
            if loader is None:
                known = ", ".join(available_kinds()) or "none"
                raise ProviderError(
                    f"no provider for data-source kind {kind!r}",
                    hint=f"known kinds: {known}; a third-party provider registers in the"
                    f" {ENTRY_POINT_GROUP!r} entry-point group",
                )
            factory = loader()
        provider: Provider = factory()
    except ProviderError:
        raise
    except Exception as err:  # a broken plug-in must not crash the CLI with a traceback
        raise ProviderError(f"provider {kind!r} cannot be loaded: {err}") from err
    # looked up statically: a provider may build its spec_model on first use (no pydantic on the job path)
    missing = [
        a
        for a in ("kind", "spec_model", "traits", "snapshot", "restore")
        if inspect.getattr_static(provider, a, _ABSENT) is _ABSENT
    ]
    if missing:
        raise ProviderError(
            f"provider {kind!r} is incomplete: it has no {', '.join(missing)}",
            hint='see docs/architecture.md, "How to write a provider"',
        )
    return provider
