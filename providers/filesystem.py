"""The filesystem provider: protect a directory tree, bring back any point of it.

Member spec (`filesystem:` in a ProtectionGroup member): ``path`` (the directory; relative
paths of a local host resolve against the policy file), ``include`` and ``exclude``
(gitignore-style patterns), ``oneFileSystem``, ``snapshot`` (auto | btrfs | reflink | none:
how a sync freezes the tree, docs/change-tracking.md), ``changeTracking`` (auto | off:
block-level tracking of big files), ``changeTrackingMinSize`` (default 64MiB) and
``changeTrackingBlockSize`` (default 16KiB, a power of two from 4KiB to 1MiB) and
``changeJournal`` (watch | off, default off: `watch` runs the agent's fanotify watcher as a
service beside the timers, and a sync walks only the directories it saw change).

Snapshots go through protectctl's `archive` service with a per-source change journal kept
under the agent's state directory, so a sync reads only files whose identity changed.
Restores go through `restore_tree`, which keeps every write inside the target and verifies
each file against its stored hash. Everything from protectctl comes through
protectctl.provider (docs/architecture.md).
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from protectctl.errors import ProtectctlError, RestoreError
from protectctl.provider import (
    Archived,
    ArchiveOptions,
    RestoreOutcome,
    RestoreRequest,
    Service,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotStats,
    SpecProblem,
    Traits,
    archive,
    journal_problems,
    restore_tree,
    snapshot_problems,
    validate_patterns,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from protectctl.policy.model import CamelSpec
    from protectctl.provider import Point


def __getattr__(name: str) -> object:
    if name == "FilesystemMember":
        from protectctl.providers.filesystem_member import FilesystemMember

        model: type[CamelSpec] = FilesystemMember
        return model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _SpecModel:
    """`FilesystemProvider.spec_model`, imported on first use. Reading a policy needs the
    pydantic model; an agent running a job from its config never does, and importing it
    (pydantic and the policy models with it) was ~0.4 s of every timer-started sync."""

    def __get__(self, obj: object, owner: type | None = None) -> type[CamelSpec]:
        from protectctl.providers.filesystem_member import FilesystemMember

        return FilesystemMember


_MIN_BLOCK, _MAX_BLOCK = 4 << 10, 1 << 20


@lru_cache(maxsize=4096)
def _pattern_problems(pattern: str) -> tuple[str, ...]:
    # a big policy repeats the same few patterns in every group: each is compiled once
    return tuple(p.removeprefix("_[0] ") for p in validate_patterns([pattern], "_"))


class FilesystemProvider:
    """Directories on a host's filesystem."""

    kind = "filesystem"
    spec_model = _SpecModel()
    traits = Traits(application=False, continuous_log_shipping=False, confined_jobs=True)

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        from protectctl.providers.filesystem_member import FilesystemMember

        assert isinstance(spec, FilesystemMember)
        problems = []
        for name in ("include", "exclude"):
            for index, pattern in enumerate(getattr(spec, name)):
                problems += [
                    SpecProblem(
                        (name, index), f"{name}[{index}] {problem}", "use gitignore-style patterns, e.g. '*.tmp'"
                    )
                    for problem in _pattern_problems(pattern)
                ]
        block = spec.change_tracking_block_size
        if block is not None and not _valid_block(block.bytes):
            problems.append(
                SpecProblem(
                    ("changeTrackingBlockSize",),
                    f"changeTrackingBlockSize {block} is not a power of two from 4KiB to 1MiB",
                    "use e.g. 16KiB (smaller reads less of a changed file, stores more chunks)",
                )
            )
        return problems

    def source_paths(self, spec: Mapping[str, object]) -> list[str]:
        path = spec.get("path")
        return [str(path)] if path else []

    def source_identity(self, spec: Mapping[str, object], host: str) -> str:
        path = spec.get("path")
        return posixpath.normpath(str(path)) if path else repr(sorted(spec.items()))

    def source_root(self, spec: Mapping[str, object], point: Point | None) -> str | None:
        recorded = point.extra.get("path") if point is not None else None
        root = recorded if isinstance(recorded, str) else spec.get("path")
        return posixpath.normpath(str(root)) if root else None

    def services(self, spec: Mapping[str, object]) -> list[Service]:
        """`changeJournal: watch`: the change journal's watcher (`protectctl agent watch`)."""
        return [Service("watch", "change journal watcher", ("watch",))] if spec.get("change_journal") == "watch" else []

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        options = _options(request.spec, verify_all=request.kind == "full")
        # No phase of our own: the writer's "upload" phase frames the snapshot; we add files.
        result = archive(request, options)
        return SnapshotOutcome(
            tree=result.tree,
            stats=SnapshotStats(
                files=result.files,
                dirs=result.dirs,
                bytes_total=result.bytes_total,
                bytes_read=result.bytes_read,
            ),
            errors=result.errors,
            extra=_extra(result, options),
            finish=result.finish,
        )

    # -- restore -------------------------------------------------------------------------

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        target = request.target if request.target is not None else Path(str(request.spec["path"]))
        if request.point.tree is None:
            raise RestoreError(f"point {request.point.id} has no content to restore")
        root = request.point.extra.get("root")
        return restore_tree(
            request.reader,
            request.point.tree,
            target,
            subpaths=request.subpaths,
            dry_run=request.dry_run,
            overwrite=request.overwrite,
            root_meta=root if isinstance(root, Mapping) else None,
            progress=request.progress,
            delete=request.delete,
            resume=request.resume,
        )

    # -- status --------------------------------------------------------------------------

    def status_problems(self, source: str, spec: Mapping[str, object], points: object, state_dir: Path) -> list[str]:
        path = spec.get("path")
        if not path:
            return []
        problems = snapshot_problems(Path(str(path)), source, str(spec.get("snapshot") or "auto"))
        if spec.get("change_journal") == "watch":
            problems += journal_problems(state_dir, source)
        return problems


def _valid_block(size: int) -> bool:
    return _MIN_BLOCK <= size <= _MAX_BLOCK and size & (size - 1) == 0


def _size(spec: Mapping[str, object], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    from protectctl.units import ByteSize, UnitError  # only here: its import compiles a dozen regexes

    try:
        return value if isinstance(value, int) else ByteSize.parse(str(value)).bytes
    except UnitError as err:
        raise ProtectctlError(f"{key}: {err}") from err


def _block_size(spec: Mapping[str, object]) -> int | None:
    block = _size(spec, "change_tracking_block_size")
    return block if block is not None and _valid_block(block) else None


def _options(spec: Mapping[str, object], *, verify_all: bool) -> ArchiveOptions:
    include = spec.get("include") or []
    exclude = spec.get("exclude") or []
    if not isinstance(include, list | tuple) or not isinstance(exclude, list | tuple):
        raise ProtectctlError("include and exclude must be lists of patterns")
    return ArchiveOptions(
        root=Path(str(spec["path"])),
        include=[str(p) for p in include],
        exclude=[str(p) for p in exclude],
        one_file_system=bool(spec.get("one_file_system", False)),
        verify_all=verify_all,
        snapshot=str(spec.get("snapshot") or "auto"),
        change_tracking=str(spec.get("change_tracking") or "auto"),
        tracking_min_size=_size(spec, "change_tracking_min_size"),
        tracking_block_size=_block_size(spec),
        change_journal=str(spec.get("change_journal") or "off"),
    )


def _extra(result: Archived, options: ArchiveOptions) -> dict[str, object]:
    extra: dict[str, object] = {
        "path": str(options.root),
        "files_read": result.files_read,
        "files_reused": result.files_reused,
        "silent_changes": result.silent_changes,
    }
    if result.silent_changed:
        extra["silent_changed"] = list(result.silent_changed)
    extra.update(result.capture)
    st = result.root
    extra["root"] = {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
    }
    return extra
