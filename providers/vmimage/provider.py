"""The vmImage provider: a virtual machine's disk image on its host, protected as one image.

Member spec (`vmImage:`, spec.py): ``path`` (the qcow2 or raw image), ``domain`` (a libvirt
domain using it: read while it runs through checkpoints, domain.py).

* sync and full: backup.py. qcow2 images are read through a read-only `qemu-nbd` export;
  a sync reads only the chunks a persistent dirty bitmap marks (`qemu-img bitmap`, mapped
  with `nbdinfo --map=qemu:dirty-bitmap:...`); raw images are read by their data extents
  (SEEK_DATA/SEEK_HOLE). Chunks are fixed-size and cluster-aligned, stored uncut
  (`SnapshotSink.store_chunk`); a point references its predecessor's unchanged chunks.
* a running libvirt domain's disk: domain.py (`virsh backup-begin` in pull mode with a
  checkpoint per point, the guest agent's fsfreeze around it when it answers).
* restore: restore.py, to a new qcow2 or raw image.

Without a domain the image must not be written during a sync (shut the guest off, or pause
it): nothing else can freeze the guest or give a point-in-time view of a running VM.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from pydantic import BaseModel

from protectctl.provider import (
    RestoreOutcome,
    RestoreRequest,
    SnapshotOutcome,
    SnapshotRequest,
    SpecProblem,
    Traits,
)
from protectctl.providers.vmimage.spec import VmImageMember


class VmImageProvider:
    """A virtual machine disk image (qcow2 or raw) on a host."""

    kind = "vmImage"
    spec_model = VmImageMember
    # a VM is an application source (512 points); its jobs run qemu tools and write the image's bitmaps
    traits = Traits(application=True, continuous_log_shipping=False, confined_jobs=False)

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        assert isinstance(spec, VmImageMember)
        return []

    def source_identity(self, spec: Mapping[str, object], host: str) -> str:
        path = spec.get("path")
        return posixpath.normpath(str(path)) if path else repr(sorted(spec.items()))

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        if request.spec.get("domain"):
            from protectctl.providers.vmimage import domain

            outcome: SnapshotOutcome = domain.snapshot(request)
            return outcome
        from protectctl.providers.vmimage.backup import snapshot

        outcome = snapshot(request)
        return outcome

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        from protectctl.providers.vmimage.restore import restore

        outcome: RestoreOutcome = restore(request)
        return outcome
