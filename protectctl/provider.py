"""The data-source provider Protocol, and how providers are found.

A provider is one class per data-source kind (filesystem, postgresql, ...), found through
the `protectctl.providers` entry-point group so a third party adds one by installing a
package. The Protocol is deliberately small: validate a member spec, take a snapshot into
the repository, restore a point. Optional abilities (preparing a host, shipping logs) are
separate runtime-checkable Protocols a provider may also satisfy.

This module owns the contract only; it does not import any provider or the engine at
import time (the CLI imports it for `validate`, which must start fast).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from protectctl.errors import ProviderError
from protectctl.progress import NullProgress, Progress

if TYPE_CHECKING:
    from protectctl.engine.ids import BlobId
    from protectctl.engine.repository import BlobWriter, Point, Repository
    from protectctl.restore.selection import PointReader

ENTRY_POINT_GROUP = "protectctl.providers"

# Used when protectctl runs from a source checkout that was never pip-installed, so its
# own entry points are not registered; installed entry points always win.
_BUILTIN = {
    "filesystem": "providers.filesystem:FilesystemProvider",
    "postgresql": "providers.postgresql:PostgresqlProvider",
}

SnapshotKind = Literal["sync", "full"]


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Everything a provider needs to write one recovery point's content."""

    source: str  # "group/member"
    spec: Mapping[str, object]  # the member spec, snake_case
    kind: SnapshotKind
    repo: Repository
    writer: BlobWriter
    state_dir: Path  # the agent's per-host state; change tracking lives under it
    progress: Progress = field(default_factory=NullProgress)


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
    repo: Repository | PointReader  # a PointReader when the point is read back from tape
    target: Path | None  # None: the original place
    subpaths: Sequence[str] = ()
    dry_run: bool = False
    overwrite: bool = False
    progress: Progress = field(default_factory=NullProgress)
    # The instant asked for (UTC) or "latest"; None when the caller picked the point itself.
    to_time: datetime | Literal["latest"] | None = None
    # Provider-specific restore options from the CLI (postgresql: port, database, as_name).
    options: Mapping[str, object] = field(default_factory=dict)
    state_dir: Path | None = None  # the agent's per-host state (where a provider keeps its spool)


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


class Provider(Protocol):
    """One kind of data source."""

    kind: str
    application: bool  # counts against the application recovery-point budget
    continuous_log_shipping: bool  # sync ships logs rather than taking a snapshot

    def validate(self, spec: Mapping[str, object]) -> list[str]:
        """Problems with a member spec, each a sentence naming the field; empty when fine."""
        ...

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        """Write the source's content to the repository; raises ProviderError."""
        ...

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Bring a point back (or, dry run, say what that would take); raises RestoreError."""
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
    """A provider that must configure the host before protecting it (e.g. WAL archiving)."""

    def prepare_host(self, request: PrepareRequest) -> PrepareOutcome:
        """Make the host ready (idempotent); raises ProviderError."""
        ...


@runtime_checkable
class PointChooser(Protocol):
    """A provider that picks the point to restore itself (e.g. base backup + logs for a time)."""

    def choose_point(
        self, points: Sequence[Point], to_time: datetime | Literal["latest"], *, source: str
    ) -> Point:
        """The point a restore to `to_time` starts from; raises RestoreError saying why none fits."""
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

    def place_job(self, source: str, spec: Mapping[str, object], kind: SnapshotKind,
                  state_dir: Path) -> JobPlacement:
        """The node to run `kind` on now; raises ProviderError when none can be reached."""
        ...


@runtime_checkable
class LogShipper(Protocol):
    """A provider that ships application logs between snapshots for roll-forward."""

    def ship_logs(self, request: SnapshotRequest) -> SnapshotOutcome:
        """Store the logs written since the last point."""
        ...


def available_kinds() -> list[str]:
    """Every provider kind that can be loaded here."""
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names | set(_BUILTIN))


def load_provider(kind: str) -> Provider:
    """The provider of `kind`; raises ProviderError naming the kinds that exist."""
    target = _find(kind)
    if target is None:
        known = ", ".join(available_kinds()) or "none"
        raise ProviderError(
            f"no provider for data-source kind {kind!r}",
            hint=f"known kinds: {known}; a third-party provider registers in the"
            f" {ENTRY_POINT_GROUP!r} entry-point group",
        )
    try:
        factory = target()
    except Exception as err:  # a broken plug-in must not crash the CLI with a traceback
        raise ProviderError(f"provider {kind!r} cannot be loaded: {err}") from err
    provider: Provider = factory()
    return provider


def _find(kind: str) -> Callable[[], Callable[[], Provider]] | None:
    """Built-in kinds first (no entry-point scan, ~50 ms of every agent run), then plug-ins;
    a plug-in cannot replace a built-in kind."""
    spec = _BUILTIN.get(kind)
    if spec is None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == kind:
                return ep.load
        return None
    module_name, _, attr = spec.partition(":")

    def load() -> Callable[[], Provider]:
        factory: Callable[[], Provider] = getattr(importlib.import_module(module_name), attr)
        return factory

    return load
