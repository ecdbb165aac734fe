"""A vmImage sync or full: read the chunks that changed (qcow2: the persistent dirty bitmap;
raw: the data extents, none when the file is untouched since the last point), store them
uncut, and reference the previous point's chunks for the rest.

The bitmap rotation is ordered so a crash anywhere loses no change:
1. add a new bitmap (it tracks every write from now on);
2. read what the old bitmap marks dirty (a superset of what changed since the last point);
3. once the point is saved, record the new bitmap as the one to follow, then remove the old.
A crash before 3 leaves the old bitmap recorded (it still holds every change): the next sync
reads what it marks and removes the leftover new one. When tracking cannot be trusted (no
state, a bitmap gone or left inconsistent, the state's point or one of its chunks pruned away,
the image resized), the sync reads every chunk and the point says why.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.provider import (
    BlobId,
    SnapshotOutcome,
    SnapshotRequest,
    SnapshotSink,
    SnapshotStats,
    Tree,
    file_node,
    safe_name,
)
from protectctl.providers.vmimage import libvirt, qemu
from protectctl.providers.vmimage.chunkmap import (
    ID_SIZE,
    ZERO_ID,
    Tracked,
    all_zero,
    chunk_count,
    chunk_size_for,
    is_zero,
    layout,
    load_tracked,
    read_ranges,
    save_tracked,
    touched,
)
from protectctl.providers.vmimage.nbd import NbdClient

log = logging.getLogger(__name__)

NODE_NAME = b"disk.raw"  # the guest's view of the disk, whatever the image format


def state_path(state_dir: Path, source: str, repository_id: str) -> Path:
    return state_dir / "vmimage" / f"{safe_name(source)}.{repository_id}.map"


def bitmap_tag(source: str, repository_id: str) -> str:
    """The prefix of this source's bitmaps in this repository (another repository keeps its own)."""
    digest = hashlib.sha256(f"{source}\0{repository_id}".encode()).hexdigest()[:12]
    return f"{qemu.BITMAP_PREFIX}{digest}-"


def checkpoint_tag(source: str, repository_id: str) -> str:
    """The prefix of this source's libvirt checkpoints in this repository (domain.py); each is
    also a bitmap of the same name in the image."""
    digest = hashlib.sha256(f"{source}\0{repository_id}".encode()).hexdigest()[:12]
    return f"{qemu.BITMAP_PREFIX}cp-{digest}-"


@dataclasses.dataclass(slots=True)
class Run:
    """What one snapshot found and read."""

    ids: bytearray
    bytes_read: int = 0
    bytes_added: int = 0
    chunks_read: int = 0
    chunks_new: int = 0
    silent: int = 0  # chunks a full found changed that the tracking did not mark


def snapshot(request: SnapshotRequest, *, offline: str | None = None) -> SnapshotOutcome:
    """A sync or full of the image file (`offline`: why a member with a domain reads its file:
    the domain is shut off)."""
    spec = request.spec
    path = Path(str(spec["path"]))
    try:
        st = os.stat(path)
    except OSError as err:
        raise ProviderError(f"{request.source}: cannot read the image {path}: {err.strerror}") from err
    where = state_path(request.state_dir, request.source, request.sink.repository_id)
    info = qemu.image_info(path, _format(request, path, where))
    if info.format not in ("qcow2", "raw"):
        raise ProviderError(
            f"{request.source}: {path} is a {info.format} image; vmImage reads qcow2 and raw images",
            hint=f"convert it: qemu-img convert -O qcow2 {path} NEW.qcow2",
        )
    sink = request.sink
    chunk = chunk_size_for(info.cluster_size if info.format == "qcow2" else 0)
    count = chunk_count(info.virtual_size, chunk)
    tracked, reason = _previous(request, where, info, chunk)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, time.time_ns())
    new_bitmap: str | None = None
    old_bitmap: str | None = None
    if info.format == "qcow2":
        run, new_bitmap, old_bitmap = _qcow2(request, path, info, chunk, count, tracked)
        tracking = "bitmap"
    else:
        run, raw_reason = _raw_sync(request, path, info.virtual_size, chunk, count, tracked, identity)
        reason, tracking = reason or raw_reason, "identity"
    if tracked is None and isinstance(reason, str) and not reason.startswith("first backup"):
        log.warning("vmimage.read_all", extra={"source": request.source, "reason": reason})
    if request.kind == "full":
        reason = reason or "a full reads every chunk (and counts the changes tracking missed)"
    tree = image_tree(sink, st, info.virtual_size, chunk, run.ids)
    extra: dict[str, object] = {
        "path": str(path),
        "format": info.format,
        "virtual_size": info.virtual_size,
        "cluster_size": info.cluster_size,
        "chunk_size": chunk,
        "tracking": tracking,
        "chunks_total": count,
        "chunks_read": run.chunks_read,
        "chunks_new": run.chunks_new,
        "read_all_reason": reason,
        "silent_changes": run.silent,
        "consistency": "crash",
        "consistency_reason": offline or "the image was not in use (no domain)",
    }
    if new_bitmap:
        extra["bitmap"] = new_bitmap

    # the bitmap of a checkpoint the domain took (the last point was read while it ran): its
    # libvirt record goes with it
    checkpoint_of = tracked.domain if tracked is not None else None

    def finish(point_id: str | None) -> None:
        _finish(
            point_id,
            path,
            where,
            Tracked(point_id or "", new_bitmap, info.format, info.virtual_size, chunk, bytes(run.ids), identity),
            old_bitmap,
            checkpoint_of,
        )

    return outcome(tree, info.virtual_size, run, extra, finish)


def outcome(
    tree: BlobId, size: int, run: Run, extra: dict[str, object], finish: Callable[[str | None], None]
) -> SnapshotOutcome:
    """The point of one image: its tree, what was read and added, and what to do once saved."""
    return SnapshotOutcome(
        tree=tree,
        stats=SnapshotStats(
            files=1,
            bytes_total=size,
            bytes_read=run.bytes_read,
            bytes_added=run.bytes_added,
            chunks_new=run.chunks_new,
        ),
        errors=(),
        extra=extra,
        finish=finish,
    )


# -- what the last point left ----------------------------------------------------------------


def _format(request: SnapshotRequest, path: Path, where: Path) -> str | None:
    """The format to open the image as: the spec's, else the one found at the first backup, so a
    raw image whose guest wrote a qcow2 header is never taken for one; None: probe it (first)."""
    fmt = str(request.spec.get("format") or "auto")
    if fmt != "auto":
        return fmt
    tracked = load_tracked(where)
    if not isinstance(tracked, Tracked):
        return None
    probed = qemu.image_info(path).format
    if probed != tracked.format:
        raise ProviderError(
            f"{request.source}: {path} was a {tracked.format} image at the last backup and now reads as {probed}",
            hint=f"if the image was converted, set `format: {probed}`; a raw image's guest can write what looks"
            " like a qcow2 header: then set `format: raw`",
        )
    return str(tracked.format)


def _previous(
    request: SnapshotRequest, where: Path, info: qemu.ImageInfo, chunk: int
) -> tuple[Tracked | None, str | None]:
    """The tracked state when it can be followed, else None and why every chunk is read."""
    tracked, reason = previous(request, where, info, chunk)
    if tracked is not None and info.format == "qcow2":
        bitmap = info.bitmap(tracked.bitmap or "")
        if bitmap is None and tracked.domain is not None:
            return None, (
                f"the bitmap of the checkpoint {tracked.bitmap} is not in the image (the domain's qemu did"
                " not stop cleanly, or the image was replaced): changes since the last point cannot be known"
            )
        if bitmap is None:
            return None, (
                f"the dirty bitmap {tracked.bitmap} is gone from the image (removed, or the image"
                " replaced): changes since the last point cannot be known"
            )
        if not bitmap.consistent:
            return None, (
                f"the dirty bitmap {tracked.bitmap} is {' and '.join(bitmap.flags) or 'disabled'}"
                " (a writer crashed or stopped tracking): changes since the last point cannot be known"
            )
    return tracked, reason


def previous(
    request: SnapshotRequest, where: Path, info: qemu.ImageInfo, chunk: int
) -> tuple[Tracked | None, str | None]:
    """The tracked state when its point and chunks are still there and the image kept its shape
    (whatever tracks the changes since is the caller's to check), else None and why."""
    tracked = load_tracked(where)
    if tracked is None:
        return None, "first backup of this image into this repository"
    if isinstance(tracked, str):
        return None, tracked
    # The state's chunk map plus what its bitmap marks is the image now, whatever points came
    # after (one saved by a run that crashed before recording its own state): only its point
    # must still be there, with its chunks.
    if tracked.point_id not in {p.id for p in request.sink.list_points(request.source)}:
        return None, f"the point change tracking followed ({tracked.point_id}) is no longer in the repository"
    if (tracked.format, tracked.virtual_size, tracked.chunk_size) != (info.format, info.virtual_size, chunk):
        return None, (
            f"the image changed shape since the last point ({tracked.format}, {tracked.virtual_size} bytes"
            f" -> {info.format}, {info.virtual_size} bytes)"
        )
    for blob in {bytes(tracked.ids[i : i + ID_SIZE]) for i in range(0, len(tracked.ids), ID_SIZE)} - {ZERO_ID}:
        if not request.sink.has_blob(blob):  # type: ignore[arg-type]
            return None, "chunks of the last point are no longer in the repository"
    return tracked, None


# -- qcow2 -----------------------------------------------------------------------------------


def _qcow2(
    request: SnapshotRequest, path: Path, info: qemu.ImageInfo, chunk: int, count: int, tracked: Tracked | None
) -> tuple[Run, str, str | None]:
    tag = bitmap_tag(request.source, request.sink.repository_id)
    old = tracked.bitmap if tracked is not None else None
    # ours, from a sync that crashed or a point never saved; or the bitmap of a checkpoint the
    # domain took that is not followed (libvirt's record of it is dropped by the next domain sync)
    ours = (tag, checkpoint_tag(request.source, request.sink.repository_id))
    for leftover in info.bitmaps:
        if leftover.name.startswith(ours) and leftover.name != old:
            qemu.bitmap_remove(path, leftover.name)
    new = f"{tag}{time.time_ns():x}"
    qemu.bitmap_add(path, new)  # from here on every write is tracked by `new` (and `old`)
    try:
        run = _read_qcow2(request, path, info, chunk, count, tracked, old)
    except BaseException:
        quietly_remove(path, new)
        raise
    return run, new, old


def _read_qcow2(
    request: SnapshotRequest,
    path: Path,
    info: qemu.ImageInfo,
    chunk: int,
    count: int,
    tracked: Tracked | None,
    old: str | None,
) -> Run:
    with qemu.export(path, "qcow2", old if tracked is not None else None) as ex:
        context = f"qemu:dirty-bitmap:{old}" if tracked is not None else None
        return read_export(request, ex.socket, qemu.EXPORT, context, info.virtual_size, chunk, count, tracked)


def read_export(
    request: SnapshotRequest,
    sock: str,
    export: str,
    dirty_context: str | None,
    size: int,
    chunk: int,
    count: int,
    tracked: Tracked | None,
) -> Run:
    """Read an NBD export of the image: with `tracked`, only the chunks `dirty_context` marks
    (every chunk for a full), the rest are the tracked point's; zero extents are never read."""
    uri = f"nbd+unix:///{export}?socket={sock}"
    zero = all_zero(qemu.extent_map(uri), chunk, size)
    if tracked is not None and dirty_context is not None:
        dirty = touched(qemu.extent_map(uri, dirty_context), chunk, count)
        run = Run(bytearray(tracked.ids))
        base = True
    else:
        dirty, run, base = set(range(count)), Run(bytearray(count * ID_SIZE)), False
    wanted = set(range(count)) if request.kind == "full" else dirty
    for index in wanted & zero:
        _set(run, index, ZERO_ID, base and index not in dirty)
    with NbdClient(sock, export) as client:
        pieces = prefetch(client.read_ranges(read_ranges(wanted - zero, chunk, size)))
        _store(request.sink, run, pieces, chunk, lambda i: base and i not in dirty)
    return run


def quietly_remove(path: Path, bitmap: str) -> None:
    try:
        qemu.bitmap_remove(path, bitmap)
    except ProviderError as err:
        log.warning("vmimage.bitmap_left", extra={"path": str(path), "bitmap": bitmap, "error": err.message})


# -- raw ---------------------------------------------------------------------------------------


_SETTLED_NS = 2_000_000_000  # a change this close to the last read may share its timestamps: read again


def _unchanged(tracked: Tracked, identity: tuple[int, ...]) -> bool:
    """The raw image is the one the last point read, untouched since: same device, inode, size,
    mtime and ctime, and its last change well before that read began (a write in the same
    timestamp tick as the read could otherwise go unseen)."""
    before = tracked.identity
    if before is None or len(before) != 6 or tuple(before[:5]) != identity[:5]:
        return False
    return bool(before[5] - identity[4] > _SETTLED_NS)


def _raw_sync(
    request: SnapshotRequest,
    path: Path,
    size: int,
    chunk: int,
    count: int,
    tracked: Tracked | None,
    identity: tuple[int, ...],
) -> tuple[Run, str | None]:
    """Nothing read when the image is untouched since the tracked read, else every data extent."""
    if not path.is_file():  # a block device's times do not follow writes to it
        return _raw(request, path, size, chunk, count), (
            "a raw image on a block device has no dirty bitmap and"
            " no reliable times: every data extent was read (only"
            " new chunks are stored)"
        )
    if tracked is not None and request.kind == "sync" and _unchanged(tracked, identity):
        return Run(bytearray(tracked.ids)), None
    return _raw(request, path, size, chunk, count), (
        "a raw image has no dirty bitmap: it changed since the last"
        " point, so every data extent was read (only new chunks"
        " are stored)"
    )


def _raw(request: SnapshotRequest, path: Path, size: int, chunk: int, count: int) -> Run:
    run = Run(bytearray(count * ID_SIZE))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME if os.geteuid() == 0 else os.O_RDONLY)
    except OSError as err:
        raise ProviderError(f"{request.source}: cannot open {path}: {err.strerror}") from err
    try:
        data = _data_chunks(fd, size, chunk, count)

        def pieces() -> Iterator[tuple[int, bytes]]:
            for offset, length in read_ranges(data, chunk, size):
                buf = os.pread(fd, length, offset)
                if len(buf) < length:  # the file is shorter than it was: the rest reads as zeros
                    buf += bytes(length - len(buf))
                yield offset, buf

        _store(request.sink, run, prefetch(pieces()), chunk, lambda i: False)
    except OSError as err:
        raise ProviderError(f"{request.source}: reading {path} failed: {err.strerror}") from err
    finally:
        os.close(fd)
    return run


def _data_chunks(fd: int, size: int, chunk: int, count: int) -> set[int]:
    """Chunks that hold data by SEEK_DATA/SEEK_HOLE (all of them where the filesystem cannot say)."""
    out: set[int] = set()
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data past pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if start >= size:
                break
            out.update(range(start // chunk, min(count, -(-end // chunk))))
            pos = end
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return set(range(count))
    return out


# -- storing ---------------------------------------------------------------------------------


_DONE = object()


Piece = tuple[int, bytearray | bytes]  # (offset, data) read from the image


def prefetch(pieces: Iterator[Piece], depth: int = 8) -> Iterator[Piece]:
    """`pieces`, read ahead by a thread (the reads wait on I/O while this thread hashes and stores)."""
    box: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()

    def hand(item: object) -> bool:
        """Queue `item` unless the consumer has stopped (then no put may block: it joins us)."""
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in pieces:
                if not hand(item):
                    return
            hand(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            hand(err)

    worker = threading.Thread(target=pump, name="vmimage-read", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def _set(run: Run, index: int, blob: bytes, unmarked: bool) -> None:
    at = index * ID_SIZE
    if unmarked and run.ids[at : at + ID_SIZE] != blob:
        run.silent += 1
    run.ids[at : at + ID_SIZE] = blob


def _store(
    sink: SnapshotSink,
    run: Run,
    pieces: Iterable[tuple[int, bytes | bytearray]],
    chunk: int,
    unmarked: Callable[[int], bool],
) -> None:
    """Cut each read at chunk boundaries (reads start on one), store the chunks, note their ids."""
    for offset, data in pieces:
        run.bytes_read += len(data)
        view = memoryview(data)
        for at in range(0, len(data), chunk):
            piece = view[at : at + chunk]
            index = (offset + at) // chunk
            run.chunks_read += 1
            if is_zero(data[at : at + chunk] if len(data) > chunk else data):  # a zero chunk stays a hole
                _set(run, index, ZERO_ID, unmarked(index))
                continue
            blob, new = sink.store_chunk(piece)
            if new:
                run.chunks_new += 1
                run.bytes_added += len(piece)
            _set(run, index, blob, unmarked(index))


def image_tree(sink: SnapshotSink, st: os.stat_result, size: int, chunk: int, ids: bytearray) -> BlobId:
    chunks, holes = layout(ids, chunk, size)
    node = file_node(NODE_NAME, st, size=size, chunks=chunks, content_hash=b"")
    # Each chunk is checked against its id on restore; a whole-image hash would cost a full read.
    node = dataclasses.replace(node, holes=holes, content_hash=None)
    return sink.save_tree(Tree((node,)))


def _finish(
    point_id: str | None, path: Path, where: Path, tracked: Tracked, old: str | None, checkpoint_of: str | None
) -> None:
    if point_id is None:  # no point: the old bitmap (still recorded) keeps every change
        if tracked.bitmap:
            quietly_remove(path, tracked.bitmap)
        return
    if not save(where, tracked):
        return
    if old and checkpoint_of:  # libvirt forgets the checkpoint, then its bitmap goes
        try:
            libvirt.checkpoint_delete(checkpoint_of, old, metadata_only=True)
        except ProviderError as err:
            log.warning(
                "vmimage.checkpoint_left", extra={"domain": checkpoint_of, "checkpoint": old, "error": err.message}
            )
    if old:
        quietly_remove(path, old)


def save(where: Path, tracked: Tracked) -> bool:
    """Record the tracked state; False (logged) when it could not be written."""
    try:
        save_tracked(where, tracked)
    except OSError as err:  # the next sync finds the state behind the last point and reads everything
        log.warning("vmimage.state_unsaved", extra={"path": str(where), "error": err.strerror})
        return False
    return True
