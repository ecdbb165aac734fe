"""A vmImage sync or full of a libvirt domain's disk while the domain runs: `virsh backup-begin`
in pull mode takes a checkpoint and exports the disk as it is at that instant (the guest's
filesystems frozen around it when its agent answers); the sync reads through NBD only the
chunks the dirty map since the last point's checkpoint marks.

The checkpoints are ordered so a crash anywhere loses no change:
1. the backup job takes the new checkpoint (its bitmap tracks every write from then on);
2. the sync reads what changed since the old checkpoint (libvirt's incremental export);
3. once the point is saved, the new checkpoint is recorded as the one to follow, then the old
   one is deleted. A crash before 3 leaves the old checkpoint recorded: the next sync reads
   from it, ends the backup job the crashed run left (`virsh domjobabort`) and deletes the
   leftover checkpoint. So at most one of our checkpoints per source and repository outlives a
   sync: the one the last point follows (a pruned point's checkpoint is long gone).

A domain that is shut off has no qemu to ask: its image file is read (backup.py), and a
transient domain that is not running does not exist for libvirt: the sync fails saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.provider import SnapshotOutcome, SnapshotRequest, safe_name
from protectctl.providers.vmimage import backup, libvirt, qemu
from protectctl.providers.vmimage.chunkmap import Tracked, chunk_count, chunk_size_for

log = logging.getLogger(__name__)


def snapshot(request: SnapshotRequest) -> SnapshotOutcome:
    domain = str(request.spec["domain"])
    path = Path(str(request.spec["path"]))
    now = libvirt.state(domain)
    if not libvirt.running(now):
        outcome: SnapshotOutcome = backup.snapshot(
            request, offline=f"the domain {domain} was {now}: its image file was read"
        )
        return outcome
    with _domain_lock(request.state_dir, domain):
        return _running(request, domain, path)


@contextlib.contextmanager
def _domain_lock(state_dir: Path, domain: str) -> Iterator[None]:
    """One sync of a domain at a time on this host: a backup job found while holding the lock
    was left by a run that died."""
    lock = state_dir / "vmimage" / f"{safe_name(domain)}.domain.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _running(request: SnapshotRequest, domain: str, path: Path) -> SnapshotOutcome:
    root = libvirt.live_xml(domain)
    disk = libvirt.disk_of(root, domain, path)
    if disk.driver not in ("qcow2", "raw"):
        raise ProviderError(
            f"{request.source}: the disk {disk.target} of {domain} is a {disk.driver} image;"
            " vmImage reads qcow2 and raw"
        )
    _end_leftover_job(domain)
    for stale in libvirt.stale_job_dirs(domain, disk.source):  # no job runs now: a dead run's
        log.warning("vmimage.job_dir_left", extra={"domain": domain, "path": stale})
        shutil.rmtree(stale, ignore_errors=True)
    info = qemu.image_info(path, disk.driver, shared=True)
    chunk = chunk_size_for(info.cluster_size if info.format == "qcow2" else 0)
    count = chunk_count(info.virtual_size, chunk)
    where = backup.state_path(request.state_dir, request.source, request.sink.repository_id)
    tag = backup.checkpoint_tag(request.source, request.sink.repository_id)
    tracked, reason = _previous(request, where, info, chunk, domain, tag)
    new = f"{tag}{time.time_ns():x}" if info.format == "qcow2" else None
    st = os.stat(path)
    run, consistency, why, reason = _read(request, domain, disk, root, info, chunk, count, tracked, reason, new)
    if reason is not None and not reason.startswith("first backup"):
        log.warning("vmimage.read_all", extra={"source": request.source, "reason": reason})
    if request.kind == "full":
        reason = reason or "a full reads every chunk (and counts the changes tracking missed)"
    tree = backup.image_tree(request.sink, st, info.virtual_size, chunk, run.ids)
    extra: dict[str, object] = {
        "path": str(path),
        "domain": domain,
        "disk": disk.target,
        "format": info.format,
        "virtual_size": info.virtual_size,
        "cluster_size": info.cluster_size,
        "chunk_size": chunk,
        "tracking": "checkpoint" if new else "none",
        "chunks_total": count,
        "chunks_read": run.chunks_read,
        "chunks_new": run.chunks_new,
        "read_all_reason": reason,
        "silent_changes": run.silent,
        "consistency": consistency,
        "consistency_reason": why,
    }
    if new:
        extra["checkpoint"] = new
    old = tracked.bitmap if tracked is not None else None
    state = Tracked("", new, info.format, info.virtual_size, chunk, bytes(run.ids), None, domain)

    def finish(point_id: str | None) -> None:
        if point_id is None:  # no point: the old checkpoint (still recorded) keeps every change
            if new:
                _quietly_delete(domain, new)
            return
        if backup.save(where, dataclasses.replace(state, point_id=point_id)) and old:
            _quietly_delete(domain, old)

    done: SnapshotOutcome = backup.outcome(tree, info.virtual_size, run, extra, finish)
    return done


def _previous(
    request: SnapshotRequest, where: Path, info: qemu.ImageInfo, chunk: int, domain: str, tag: str
) -> tuple[Tracked | None, str | None]:
    """The tracked state when its checkpoint can be followed, else None and why every chunk is
    read; our checkpoints other than the one followed (left by a run that died) are deleted."""
    tracked, reason = backup.previous(request, where, info, chunk)
    present = libvirt.checkpoints(domain)
    follow = tracked.bitmap if tracked is not None and tracked.domain == domain else None
    for leftover in present:
        if leftover.startswith(tag) and leftover != follow:
            _quietly_delete(domain, leftover)
    if tracked is None:
        return None, reason
    if info.format != "qcow2":
        return None, "a raw disk has no checkpoints: every data extent was read (only new chunks are stored)"
    if tracked.domain is None:
        return None, ("the last point was read from the image file (the domain was shut off): no checkpoint follows it")
    if tracked.domain != domain:
        return None, f"the last point followed a checkpoint of the domain {tracked.domain}, not {domain}"
    if tracked.bitmap not in present:
        return None, (
            f"the checkpoint {tracked.bitmap} is gone from the domain (deleted, or the domain redefined):"
            " changes since the last point cannot be known"
        )
    return tracked, None


def _read(
    request: SnapshotRequest,
    domain: str,
    disk: libvirt.Disk,
    root: ET.Element,
    info: qemu.ImageInfo,
    chunk: int,
    count: int,
    tracked: Tracked | None,
    reason: str | None,
    new: str | None,
) -> tuple[backup.Run, str, str, str | None]:
    """Begin the pull job (the guest frozen around it when it can be), read, end the job:
    (what was read, "application" or "crash", why, why every chunk was read)."""
    owner = libvirt.qemu_owner(root)
    marker = request.state_dir / "vmimage" / f"{safe_name(domain)}.frozen"
    try:
        with contextlib.ExitStack() as stack:
            consistency, why, frozen = _freeze(domain, marker)
            try:
                export, refused = _begin(stack, domain, disk, tracked, new, owner)
            finally:
                if frozen:
                    why = _thaw(domain, why, marker)
            if request.frozen is not None:
                request.frozen()
            if refused is not None:
                tracked, reason = None, refused
            run = backup.read_export(
                request, export.socket, export.export, export.bitmap_context, info.virtual_size, chunk, count, tracked
            )
    except BaseException:
        if new:
            _quietly_delete(domain, new)
        raise
    return run, consistency, why, reason


def _begin(
    stack: contextlib.ExitStack[bool | None],
    domain: str,
    disk: libvirt.Disk,
    tracked: Tracked | None,
    new: str | None,
    owner: tuple[int, int] | None,
) -> tuple[libvirt.PullExport, str | None]:
    """The pull job (ended when `stack` closes), incremental from the tracked checkpoint; a full
    one when libvirt cannot use that checkpoint (its bitmap lost from the image): then why."""
    since = tracked.bitmap if tracked is not None else None
    if since is not None:
        try:
            return stack.enter_context(
                libvirt.pull_backup(domain, disk, incremental=since, checkpoint=new, owner=owner)
            ), None
        except ProviderError as err:
            if not err.message.startswith(f"cannot begin a backup of {domain}"):
                raise
            log.warning("vmimage.checkpoint_refused", extra={"domain": domain, "checkpoint": since})
            refused = f"libvirt could not back up from the checkpoint {since} ({err.message}): every chunk was read"
    else:
        refused = None
    return stack.enter_context(
        libvirt.pull_backup(domain, disk, incremental=None, checkpoint=new, owner=owner)
    ), refused


def _freeze(domain: str, marker: Path) -> tuple[str, str, bool]:
    """Freeze the guest's filesystems when its agent answers: (consistency, why, frozen).
    `marker` exists while we may have the guest frozen: a run that died then left it so, and
    the next run thaws it (a guest someone else froze is left as it is)."""
    if not libvirt.agent_answers(domain):
        return "crash", "the guest agent did not answer: the disk was taken as after a power loss", False
    if marker.exists():
        if libvirt.frozen(domain):
            log.warning("vmimage.guest_left_frozen", extra={"domain": domain})
            libvirt.fsthaw(domain)
        marker.unlink()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        libvirt.fsfreeze(domain)  # the agent thaws what it froze when freezing fails
    except ProviderError as err:
        marker.unlink()
        return "crash", f"the guest agent could not freeze the filesystems ({err.message})", False
    return "application", "the guest agent froze the filesystems around the checkpoint", True


def _thaw(domain: str, why: str, marker: Path) -> str:
    try:
        libvirt.fsthaw(domain)
    except ProviderError as err:  # the checkpoint was taken frozen; the guest must not stay so
        log.error("vmimage.thaw_failed", extra={"domain": domain, "error": err.message})
        return f"{why} (thawing failed: {err.message}; run `virsh domfsthaw {domain}`)"
    marker.unlink(missing_ok=True)
    return why


def _end_leftover_job(domain: str) -> None:
    """End a backup job a run that died left on the domain; refuse when someone else's runs."""
    sock = libvirt.backup_socket(domain)
    if sock is None:
        return
    folder = os.path.dirname(sock)
    if not os.path.basename(folder).startswith(libvirt.BACKUP_DIR_PREFIX):
        raise ProviderError(
            f"another backup job runs on the domain {domain} (not protectctl's)",
            hint=f"wait for it to end, or end it: virsh domjobabort {domain}",
        )
    log.warning("vmimage.job_left", extra={"domain": domain, "socket": sock})
    libvirt.job_abort(domain)
    shutil.rmtree(folder, ignore_errors=True)


def _quietly_delete(domain: str, checkpoint: str) -> None:
    """Delete a checkpoint of ours; when libvirt cannot (its bitmap already gone from the
    image), forget it."""
    try:
        libvirt.checkpoint_delete(domain, checkpoint)
    except ProviderError:
        try:
            libvirt.checkpoint_delete(domain, checkpoint, metadata_only=True)
        except ProviderError as err:
            log.warning(
                "vmimage.checkpoint_left", extra={"domain": domain, "checkpoint": checkpoint, "error": err.message}
            )
