"""The filesystem provider: protect a directory tree, bring back any point of it.

Member spec (snake_case): ``path`` (absolute, required), ``include`` and ``exclude``
(gitignore-style patterns, see protectctl.agent.patterns), ``one_file_system`` (bool).

Snapshots go through the agent's archiver with a per-source change journal kept under the
agent's state directory (journal/<source>.<repository id>.db), so a sync reads only files
whose identity changed. Restores go through protectctl.restore, which keeps every write
inside the target and verifies each file against its stored hash.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Mapping
from pathlib import Path

from protectctl.agent.archiver import ArchiveOptions, Archiver, ArchiveResult
from protectctl.agent.journal import Journal, writing_error
from protectctl.agent.lock import safe_name
from protectctl.agent.patterns import PathFilter, validate_patterns
from protectctl.errors import ProtectctlError, RestoreError
from protectctl.provider import (
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotStats,
)

_FIELDS = {"path", "include", "exclude", "one_file_system"}


class FilesystemProvider:
    """Directories on a host's filesystem."""

    kind = "filesystem"
    application = False
    continuous_log_shipping = False

    def validate(self, spec: Mapping[str, object]) -> list[str]:
        problems = [
            f"unknown field {key!r} (known: {', '.join(sorted(_FIELDS))})"
            for key in spec
            if key not in _FIELDS
        ]
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            problems.append("path is required: the absolute directory to protect, e.g. /srv/docs")
        elif not os.path.isabs(path):
            problems.append(f"path {path!r} must be absolute, e.g. /srv/docs")
        for name in ("include", "exclude"):
            value = spec.get(name, [])
            if not isinstance(value, list):
                problems.append(f"{name} must be a list of patterns, e.g. ['*.tmp', 'cache/']")
            else:
                problems.extend(validate_patterns(value, name))
        if not isinstance(spec.get("one_file_system", False), bool):
            problems.append("one_file_system must be true or false")
        return problems

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        options = _options(request.spec, verify_all=request.kind == "full")
        journal = Journal(
            journal_path(request.state_dir, request.source, request.repo.id), repo_id=request.repo.id
        )
        try:
            journal_out = journal.begin()
        except (sqlite3.Error, OSError) as err:
            journal.close()
            raise writing_error(journal.path, err) from err
        try:
            # No phase of our own: the writer's "upload" phase frames the snapshot; we add files.
            result = Archiver(
                request.repo, request.writer, journal, journal_out, options, request.progress
            ).run()
        except sqlite3.Error as err:  # the next journal cannot be written: a full disk
            journal_out.abort()
            journal.close()
            raise writing_error(journal.path, err) from err
        except BaseException:
            journal_out.abort()
            journal.close()
            raise
        journal.close()
        assert result.tree is not None

        def finish(point_id: str | None) -> None:
            if point_id is None:
                journal_out.abort()
            else:
                journal_out.commit({"point_id": point_id, "source": request.source})

        return SnapshotOutcome(
            tree=result.tree,
            stats=SnapshotStats(
                files=result.files,
                dirs=result.dirs,
                bytes_total=result.bytes_total,
                bytes_read=result.bytes_read,
            ),
            errors=tuple(result.errors),
            extra=_extra(result, options),
            finish=finish,
        )

    # -- restore -------------------------------------------------------------------------

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        from protectctl.restore.run import restore_tree

        target = request.target if request.target is not None else Path(str(request.spec["path"]))
        if request.point.tree is None:
            raise RestoreError(f"point {request.point.id} has no content to restore")
        root = request.point.extra.get("root")
        return restore_tree(
            request.repo,
            request.point.tree,
            target,
            subpaths=request.subpaths,
            dry_run=request.dry_run,
            overwrite=request.overwrite,
            root_meta=root if isinstance(root, Mapping) else None,
            progress=request.progress,
        )


def journal_path(state_dir: Path, source: str, repo_id: str) -> Path:
    """Where the change journal of `source` in repository `repo_id` lives."""
    return state_dir / "journal" / f"{safe_name(source)}.{repo_id}.db"


def _options(spec: Mapping[str, object], *, verify_all: bool) -> ArchiveOptions:
    include = spec.get("include") or []
    exclude = spec.get("exclude") or []
    if not isinstance(include, list) or not isinstance(exclude, list):
        raise ProtectctlError("include and exclude must be lists of patterns")
    return ArchiveOptions(
        root=Path(str(spec["path"])),
        filter=PathFilter([str(p) for p in include], [str(p) for p in exclude]),
        one_file_system=bool(spec.get("one_file_system", False)),
        verify_all=verify_all,
    )


def _extra(result: ArchiveResult, options: ArchiveOptions) -> dict[str, object]:
    extra: dict[str, object] = {
        "path": str(options.root),
        "files_read": result.files_read,
        "files_reused": result.files_reused,
        "silent_changes": result.silent_changes,
    }
    if result.silent_changed:
        extra["silent_changed"] = list(result.silent_changed)
    if result.root is not None:
        st = result.root
        extra["root"] = {
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "atime_ns": st.st_atime_ns,
            "mtime_ns": st.st_mtime_ns,
        }
    return extra
