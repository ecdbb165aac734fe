"""Restore a vmImage point to a new image file beside the target, renamed into place once
complete: a raw image through protectctl's `restore_tree` (sparse, each chunk checked against
its id), a qcow2 written chunk by chunk through a read-write `qemu-nbd` export of a new image."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from protectctl.errors import ProtectctlError, RestoreError
from protectctl.provider import Node, RestoreOutcome, RestoreRequest, restore_tree
from protectctl.providers.vmimage import qemu
from protectctl.providers.vmimage.backup import NODE_NAME, prefetch
from protectctl.providers.vmimage.chunkmap import fsync_path
from protectctl.providers.vmimage.nbd import NbdClient


def target_format(target: Path, original: str) -> str:
    """qcow2 for a `.qcow2` target, raw for `.raw`/`.img`, else the image's own format."""
    suffix = target.suffix.lower()
    if suffix == ".qcow2":
        return "qcow2"
    if suffix in (".raw", ".img"):
        return "raw"
    return original if original in ("qcow2", "raw") else "raw"


def restore(request: RestoreRequest) -> RestoreOutcome:
    point = request.point
    if point.tree is None:
        raise RestoreError(f"point {point.id} has no content to restore")
    if request.subpaths:
        raise RestoreError(
            "a vmImage point restores as a whole image: --path inside an image is not supported",
            hint="restore the image, then mount it (e.g. guestmount or qemu-nbd) to pick files",
        )
    target = request.target if request.target is not None else Path(str(request.spec["path"]))
    fmt = target_format(target, str(point.extra.get("format", "raw")))
    _check_target(target, overwrite=request.overwrite)
    tree = request.reader.load_tree(point.tree)
    node = next((n for n in tree.nodes if n.name == NODE_NAME), None)
    if node is None:
        raise RestoreError(f"point {point.id} holds no disk image")
    needed = node.size - sum(length for _, length in node.holes)
    details: dict[str, object] = {"format": fmt, "virtual_size": node.size, "data_bytes": needed, "image": str(target)}
    notes: tuple[str, ...] = ()
    if not request.dry_run:
        notes = (
            *_write(request, node, target, fmt),
            "each chunk was checked against its id (an image has no whole-file hash)",
        )
    return RestoreOutcome(
        target=target,
        files=1,
        dirs=0,
        bytes_total=node.size,
        bytes_needed=needed,
        bytes_free=_free(target.parent),
        verified=0 if request.dry_run else 1,
        written=not request.dry_run,
        notes=notes,
        details=details,
    )


def _check_target(target: Path, *, overwrite: bool) -> None:
    if target.is_block_device():
        raise RestoreError(
            f"{target} is a block device; restore writes a new image file",
            hint=f"restore to a file, then copy it onto the device: qemu-img convert -n -O raw FILE {target}",
        )
    if target.is_dir():
        raise RestoreError(
            f"the target {target} is a directory; give the path of the new image file",
            hint=f"e.g. --target {target / 'restored.qcow2'}",
        )
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise RestoreError(
            f"{target} exists; restore writes a new image",
            hint="choose another --target, or pass --overwrite (the VM using it must be off)",
        )
    if not target.parent.is_dir():
        raise RestoreError(f"the directory {target.parent} does not exist")


def _write(request: RestoreRequest, node: Node, target: Path, fmt: str) -> tuple[str, ...]:
    """The image, written beside `target` and renamed into place once complete; the restore's notes."""
    assert request.point.tree is not None
    if fmt == "qcow2":
        qemu.need("qemu-img", "qemu-utils")
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    except OSError as err:
        raise RestoreError(f"cannot write beside {target}: {err.strerror}") from err
    try:
        if fmt == "qcow2":
            made = work / "image.qcow2"
            _write_qcow2(request, node, made, int(str(request.point.extra.get("cluster_size") or 0)))
            _own_like(made, node)
            notes: tuple[str, ...] = ()
        else:
            outcome = restore_tree(request.reader, request.point.tree, work, progress=request.progress)
            made = work / NODE_NAME.decode()
            notes = outcome.notes
        fsync_path(made)
        os.replace(made, target)
        fsync_path(target.parent)
    except ProtectctlError as err:
        raise RestoreError(err.message, hint=err.hint) from err
    except OSError as err:
        raise RestoreError(f"cannot write {target}: {err.strerror}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return notes


def _own_like(path: Path, node: Node) -> None:
    """The original image's mode (and, as root, its owner: e.g. libvirt-qemu)."""
    if os.geteuid() == 0:
        os.chown(path, node.uid, node.gid)
    os.chmod(path, node.mode & 0o7777)


def _write_qcow2(request: RestoreRequest, node: Node, made: Path, cluster: int) -> None:
    """A new qcow2 of the image's size, its data written through a read-write qemu-nbd export:
    holes are never written (a new qcow2 reads as zeros there), so sparse stays sparse."""
    options = ["-o", f"cluster_size={cluster}"] if cluster else []
    qemu.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *options, "--", str(made), str(node.size)],
        f"cannot create the qcow2 image {made}",
    )
    with qemu.export(made, "qcow2", None, writable=True) as ex, NbdClient(ex.socket, qemu.EXPORT) as client:
        if client.size != node.size:
            raise RestoreError(f"the new image has {client.size} bytes, not {node.size}")
        client.write_ranges(_pieces(request, node))


def _pieces(request: RestoreRequest, node: Node) -> Iterator[tuple[int, bytes | memoryview]]:
    """(offset, data) of every stored chunk laid out around the holes, in order, loaded ahead by
    a thread; each chunk is checked against its id as it is loaded."""
    reader, progress = request.reader, request.progress

    def loaded() -> Iterator[tuple[int, bytes]]:
        for index, blob in enumerate(node.chunks):
            yield index, reader.load_blob(blob)

    blobs = prefetch(loaded())
    pending = memoryview(b"")
    for offset, length in _data_segments(node.size, node.holes):
        while length:
            if not pending:
                item = next(blobs, None)
                if item is None:
                    raise RestoreError("stored content is shorter than the image")
                pending = memoryview(item[1])
                continue
            take = min(length, len(pending))
            yield offset, pending[:take]
            progress.advance(bytes_done=take)
            pending, offset, length = pending[take:], offset + take, length - take
    if pending or next(blobs, None) is not None:
        raise RestoreError("stored content is longer than the image")


def _data_segments(size: int, holes: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    pos = 0
    for start, length in sorted(holes):
        if start < pos or start + length > size:
            raise RestoreError("stored holes overlap or exceed the image")
        if start > pos:
            yield pos, start - pos
        pos = start + length
    if pos < size:
        yield pos, size - pos


def _free(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    return None
