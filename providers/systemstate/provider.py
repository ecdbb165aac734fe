"""The systemState provider: what bare-metal recovery needs besides the files.

Member spec (`systemState:`, spec.py): ``root`` (default /), ``exclude`` (patterns under /etc).

* sync and full: the state is captured (capture.py) into a staging directory under the
  agent's state, then archived with /etc through protectctl's `archive` (so it dedups with the
  host's file sources and a sync reads only changed files). A point's tree: `etc/` and `state/`.
* restore: into a directory only (`--target DIR`), plus the `recover.sh` runbook
  (runbook.py); nothing runs on the live system unless the operator runs the runbook.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from protectctl.errors import ProtectctlError, RestoreError
from protectctl.provider import (
    ArchiveOptions,
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotStats,
    SpecProblem,
    Traits,
    Tree,
    archive,
    dir_node,
    restore_tree,
    safe_name,
    validate_patterns,
)
from protectctl.providers.systemstate.spec import SystemStateMember

RUNBOOK = "recover.sh"


class SystemStateProvider:
    """A host's system state: packages, /etc, users, units, disks, boot config."""

    kind = "systemState"
    spec_model = SystemStateMember
    traits = Traits(application=False, continuous_log_shipping=False, confined_jobs=False)

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        assert isinstance(spec, SystemStateMember)
        return [
            SpecProblem(
                ("exclude", index),
                f"exclude[{index}] {problem.removeprefix('_[0] ')}",
                "use gitignore-style patterns relative to /etc, e.g. 'ssl/private/'",
            )
            for index, pattern in enumerate(spec.exclude)
            for problem in validate_patterns([pattern], "_")
        ]

    def source_identity(self, spec: Mapping[str, object], host: str) -> str:
        return f"system-state:{posixpath.normpath(str(spec.get('root') or '/'))}"

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        from protectctl.providers.systemstate.capture import capture

        root = Path(str(request.spec.get("root") or "/"))
        if not (root / "etc").is_dir():
            raise ProtectctlError(f"{request.source}: {root} has no etc directory: is it a system's root?")
        staging = request.state_dir / "systemstate" / f"{safe_name(request.source)}.capture"
        got = capture(root, staging)
        exclude = [str(p) for p in request.spec.get("exclude") or ()]  # type: ignore[attr-defined]
        etc = archive(
            request,
            ArchiveOptions(root=root / "etc", exclude=exclude, verify_all=request.kind == "full"),
            journal=f"{request.source}#etc",
        )
        try:
            state = archive(request, ArchiveOptions(root=staging), journal=f"{request.source}#state")
        except BaseException:
            etc.finish(None)
            raise
        try:
            tree = request.sink.save_tree(
                Tree((dir_node("etc", etc.root, etc.tree), dir_node("state", state.root, state.tree)))
            )
        except BaseException:  # no point: both journals are dropped, as the agent would on a failed job
            etc.finish(None)
            state.finish(None)
            raise

        def finish(point_id: str | None) -> None:
            etc.finish(point_id)
            state.finish(point_id)

        return SnapshotOutcome(
            tree=tree,
            stats=SnapshotStats(
                files=etc.files + state.files,
                dirs=etc.dirs + state.dirs + 1,
                bytes_total=etc.bytes_total + state.bytes_total,
                bytes_read=etc.bytes_read + state.bytes_read,
            ),
            errors=(*got.errors, *(f"/etc: {e}" for e in etc.errors), *state.errors),
            extra={
                "root": str(root),
                "captured": sorted(got.files),
                "gaps": got.gaps,
                "units": len(got.units),
                "disks": [str(d["path"]) for d in got.disks],
                "files_read": etc.files_read + state.files_read,
            },
            finish=finish,
        )

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        from protectctl.providers.systemstate.runbook import render

        if request.target is None:
            raise RestoreError(
                f"{request.source}: system state restores into a directory, never onto the live system",
                hint="pass --target DIR, then review and run DIR/recover.sh",
            )
        if request.point.tree is None:
            raise RestoreError(f"point {request.point.id} has no content to restore")
        target = request.target
        outcome = restore_tree(
            request.reader,
            request.point.tree,
            target,
            subpaths=request.subpaths,
            dry_run=request.dry_run,
            overwrite=request.overwrite,
            progress=request.progress,
        )
        if request.dry_run or request.subpaths:
            return outcome
        try:
            manifest = json.loads((target / "state" / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            raise RestoreError(f"the restored state has no readable manifest.json: {err}") from err
        script = target / RUNBOOK
        tmp = target / f".{RUNBOOK}.tmp"
        try:
            tmp.unlink(missing_ok=True)  # a leftover, or a link planted there: never written through
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(render(manifest, point=request.point.id))
            os.chmod(tmp, 0o700)
            os.replace(tmp, script)
        except OSError as err:
            raise RestoreError(f"cannot write {script}: {err.strerror}") from err
        notes = (*outcome.notes, f"review, then run {script} (--dry-run lists its steps); it changes nothing by itself")
        return RestoreOutcome(
            target=outcome.target,
            files=outcome.files + 1,
            dirs=outcome.dirs,
            bytes_total=outcome.bytes_total,
            bytes_needed=outcome.bytes_needed,
            bytes_free=outcome.bytes_free,
            verified=outcome.verified,
            written=True,
            notes=notes,
            details={**outcome.details, "runbook": str(script), "gaps": manifest.get("gaps", [])},
        )
