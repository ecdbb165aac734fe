"""Restore a vmImage point to a new image file: the chunks are laid out around the holes by
protectctl's `restore_tree` (each chunk checked against its id) into a sparse raw file beside
the target, which becomes the target (raw) or is converted to it (`qemu-img convert`, qcow2)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from protectctl.errors import ProtectctlError, RestoreError
from protectctl.provider import RestoreOutcome, RestoreRequest, restore_tree
from protectctl.providers.vmimage import qemu
from protectctl.providers.vmimage.backup import NODE_NAME


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
        raise RestoreError("a vmImage point restores as a whole image: --path inside an image is not supported",
                           hint="restore the image, then mount it (e.g. guestmount or qemu-nbd) to pick files")
    extra = point.extra
    target = request.target if request.target is not None else Path(str(request.spec["path"]))
    fmt = target_format(target, str(extra.get("format", "raw")))
    if target.is_dir():
        raise RestoreError(f"the target {target} is a directory; give the path of the new image file",
                           hint=f"e.g. --target {target / 'restored.qcow2'}")
    if (target.exists() or target.is_symlink()) and not request.overwrite:
        raise RestoreError(f"{target} exists; restore writes a new image",
                           hint="choose another --target, or pass --overwrite (the VM using it must be off)")
    if not target.parent.is_dir():
        raise RestoreError(f"the directory {target.parent} does not exist")
    tree = request.reader.load_tree(point.tree)
    node = next((n for n in tree.nodes if n.name == NODE_NAME), None)
    if node is None:
        raise RestoreError(f"point {point.id} holds no disk image")
    needed = node.size - sum(length for _, length in node.holes)
    details: dict[str, object] = {"format": fmt, "virtual_size": node.size, "data_bytes": needed,
                                  "image": str(target)}
    if request.dry_run:
        return RestoreOutcome(target=target, files=1, dirs=0, bytes_total=node.size, bytes_needed=needed,
                              bytes_free=_free(target.parent), verified=0, written=False, details=details)
    if fmt == "qcow2":
        qemu.need("qemu-img", "qemu-utils")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        outcome = restore_tree(request.reader, point.tree, work, progress=request.progress)
        raw = work / NODE_NAME.decode()
        if fmt == "qcow2":
            made = work / "image.qcow2"
            cluster = int(str(extra.get("cluster_size") or 0))
            options = ["-o", f"cluster_size={cluster}"] if cluster else []
            qemu.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *options, "--", str(raw), str(made)],
                     f"cannot write the qcow2 image {target}")
            raw.unlink()
        else:
            made = raw
        _fsync(made)
        os.replace(made, target)
        _fsync_dir(target.parent)
    except ProtectctlError as err:
        raise RestoreError(err.message, hint=err.hint) from err
    except OSError as err:
        raise RestoreError(f"cannot write {target}: {err.strerror}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = (*outcome.notes, "each chunk was checked against its id (an image has no whole-file hash)")
    return RestoreOutcome(target=target, files=1, dirs=0, bytes_total=node.size, bytes_needed=needed,
                          bytes_free=_free(target.parent), verified=outcome.verified, written=True,
                          notes=notes, details=details)


def _free(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
