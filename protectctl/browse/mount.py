"""`protectctl mount`: recovery points as a read-only FUSE filesystem (mfusepy over libfuse 3).

Layout, per source:

    MOUNTPOINT/GROUP/MEMBER/by-time/2026-12-03T07:15:30Z/...   each point, named by its time (UTC)
    MOUNTPOINT/GROUP/MEMBER/latest -> by-time/<newest>          a symlink to the newest point

Entries keep their stored owners (by name when the name exists here, as restore does) and
modes; mounted with `default_permissions`, the kernel checks them, so with `allow_other` an
ordinary user reads their own old files and nobody else's. The directories protectctl adds
(sources, by-time) are root's, mode 0555.

A read fetches only the chunks covering the range asked for (chunk sizes come from the
index), through a cache of decrypted chunks bounded in bytes (256 MiB by default), and starts
fetching the next chunk of a file read sequentially, so decryption overlaps the reader. Trees
are decoded once and shared by every point that holds them. Points are read again at most
every `_RESCAN_S` seconds, when a source directory is listed or `latest` is looked up, so new
points appear.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from protectctl.browse.ops import TYPE_BITS
from protectctl.browse.view import FileContent, PointTrees
from protectctl.engine.ids import BlobId
from protectctl.engine.names import name_text, text_name
from protectctl.engine.points import Point
from protectctl.engine.repository import Repository
from protectctl.engine.tree import Node, NodeType
from protectctl.errors import ProtectctlError
from protectctl.restore.fs import stored_gid, stored_uid

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 << 20
_RESCAN_S = 30.0
_SWITCH_INTERVAL_S = 0.0005
_CONTENTS_KEPT = 1024  # files whose chunk offsets are kept between opens
_DIR_MODE = stat.S_IFDIR | 0o555
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_FORMAT_US = "%Y-%m-%dT%H:%M:%S.%fZ"


class MountError(ProtectctlError):
    """The filesystem could not be mounted."""


class ChunkCache:
    """Decrypted chunks, least recently used evicted past `limit_bytes`; a chunk being fetched is
    fetched once however many readers want it."""

    def __init__(self, load: Callable[[BlobId], bytes], limit_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._load = load
        self._limit = limit_bytes
        self._blobs: OrderedDict[BlobId, bytes] = OrderedDict()
        self._size = 0
        self._mutex = threading.Lock()
        self._loading: dict[BlobId, threading.Event] = {}

    def get(self, blob_id: BlobId) -> bytes:
        while True:
            with self._mutex:
                data = self._blobs.get(blob_id)
                if data is not None:
                    self._blobs.move_to_end(blob_id)
                    return data
                waiting = self._loading.get(blob_id)
                if waiting is None:
                    done = self._loading[blob_id] = threading.Event()
                    break
            waiting.wait()
        try:
            data = self._load(blob_id)
            with self._mutex:
                self._blobs[blob_id] = data
                self._size += len(data)
                while self._size > self._limit and len(self._blobs) > 1:
                    _, old = self._blobs.popitem(last=False)
                    self._size -= len(old)
            return data
        finally:
            with self._mutex:
                del self._loading[blob_id]
            done.set()

    def has(self, blob_id: BlobId) -> bool:
        with self._mutex:
            return blob_id in self._blobs or blob_id in self._loading

    @property
    def size_bytes(self) -> int:
        return self._size


@dataclass(slots=True)
class _Open:
    """An open file: its content, and how far it was read (to tell a sequential reader)."""

    content: FileContent
    end: int = 0


@dataclass(slots=True)
class _Source:
    name: str  # group/member
    points: list[Point]
    by_time: dict[str, Point]
    scanned: float


def point_names(points: Sequence[Point]) -> dict[str, Point]:
    """by-time names, oldest first: the time to the second (UTC); points in the same second to the
    microsecond (names still sort by time), and in the same microsecond with their id too."""

    def counts(names: list[str]) -> dict[str, int]:
        seen: dict[str, int] = {}
        for name in names:
            seen[name] = seen.get(name, 0) + 1
        return seen

    seconds = [p.time.strftime(_TIME_FORMAT) for p in points]
    micros = [p.time.strftime(_TIME_FORMAT_US) for p in points]
    by_second, by_micro = counts(seconds), counts(micros)
    out: dict[str, Point] = {}
    for p, second, micro in zip(points, seconds, micros, strict=True):
        if by_second[second] == 1:
            out[second] = p
        else:
            out[micro if by_micro[micro] == 1 else f"{micro}-{p.id[:8]}"] = p
    return out


class PointsFilesystem:
    """The FUSE operations (mfusepy's Operations protocol): read-only, paths as surrogate-escaped
    text (mfusepy decodes them with utf-8/surrogateescape, engine/names.py's `name_text`)."""

    use_ns = True

    def __init__(self, repo: Repository, sources: Sequence[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.repo = repo
        self.trees = PointTrees(repo)
        # blobs are authenticated on decryption (their id is in the AEAD's associated data), so
        # the id is not hashed again on every chunk a reader pulls: ~1 ms per chunk saved
        self.cache = ChunkCache(getattr(repo, "load_blob_unchecked", repo.load_blob), cache_bytes)
        self._prefetch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefetch")
        self._mutex = threading.Lock()
        self._names = tuple(sources)
        self._sources: dict[str, _Source] = {}
        self._files: dict[int, _Open] = {}
        self._contents: OrderedDict[tuple[bytes, int, int], FileContent] = OrderedDict()
        self._next_fh = 1
        self._mounted_at = time.time_ns()
        self.mounted = False
        self._scan(force=True)
        # before the mount is up: the index (read on the first blob) and each newest root tree,
        # so the first look into the mount does not wait for them
        for source in self._sources.values():
            if source.points and source.points[-1].tree is not None:
                self.trees.tree(source.points[-1].tree)

    # -- points ---------------------------------------------------------------------------

    def _scan(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._mutex:
            fresh = not force and self._sources and all(now - s.scanned < _RESCAN_S for s in self._sources.values())
        if fresh:
            return
        scan = self.repo.scan_points()
        found: dict[str, list[Point]] = {name: [] for name in self._names}
        for p in scan.points:
            if p.source in found and p.tree is not None:
                found[p.source].append(p)
        with self._mutex:
            self._sources = {name: _Source(name, pts, point_names(pts), now) for name, pts in found.items()}

    def _source(self, group: str, member: str) -> _Source | None:
        with self._mutex:
            return self._sources.get(f"{group}/{member}")

    # -- resolving paths ------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[str, Any]:
        """What `path` is: ("dir", names) for a directory protectctl adds, ("link", target),
        ("node", Node) inside a point, or raises ENOENT."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            with self._mutex:
                return "dir", sorted({s.split("/")[0] for s in self._sources})
        group = parts[0]
        if len(parts) == 1:
            with self._mutex:
                members = sorted(s.split("/", 1)[1] for s in self._sources if s.split("/")[0] == group)
            if not members:
                raise _enoent()
            return "dir", members
        source = self._source(group, parts[1])
        if source is None:
            raise _enoent()
        if len(parts) == 2:
            return "dir", ["by-time", "latest"] if source.points else ["by-time"]
        if parts[2] == "latest" and len(parts) == 3:
            self._scan()  # `latest` follows new points even when nobody lists a directory
            source = self._source(group, parts[1]) or source
            if not source.points:
                raise _enoent()
            newest = next(reversed(source.by_time))
            return "link", f"by-time/{newest}"
        if parts[2] != "by-time":
            raise _enoent()
        if len(parts) == 3:
            return "dir", list(source.by_time)
        point = source.by_time.get(parts[3])
        if point is None or point.tree is None:
            raise _enoent()
        from protectctl.browse.ops import point_root

        node = self.trees.lookup(point_root(point), tuple(text_name(p) for p in parts[4:]))
        if node is None:
            raise _enoent()
        return "node", node

    # -- the operations -------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        kind, what = self._resolve(path)
        if kind == "dir":
            return {
                "st_mode": _DIR_MODE,
                "st_nlink": 2,
                "st_uid": 0,
                "st_gid": 0,
                "st_size": 0,
                "st_mtime": self._mounted_at,
                "st_ctime": self._mounted_at,
                "st_atime": self._mounted_at,
            }
        if kind == "link":
            return {
                "st_mode": stat.S_IFLNK | 0o777,
                "st_nlink": 1,
                "st_uid": 0,
                "st_gid": 0,
                "st_size": len(what),
                "st_mtime": self._mounted_at,
                "st_ctime": self._mounted_at,
                "st_atime": self._mounted_at,
            }
        return _stat(what)

    def readdir(self, path: str, fh: int) -> list[str]:
        parts = [p for p in path.split("/") if p]
        if len(parts) in (0, 1, 2, 3):
            self._scan()  # new points and sources appear as directories are listed
        kind, what = self._resolve(path)
        if kind == "dir":
            return [".", "..", *what]
        if kind != "node" or what.type is not NodeType.DIR:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return [".", "..", *(name_text(child.name) for child in self.trees.children(what))]

    def readlink(self, path: str) -> str:
        kind, what = self._resolve(path)
        if kind == "link":
            return str(what)
        if kind == "node" and what.type is NodeType.SYMLINK and what.link_target is not None:
            return name_text(what.link_target)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        kind, what = self._resolve(path)
        if kind != "node" or what.type is not NodeType.FILE:
            raise OSError(errno.EISDIR if kind == "dir" else errno.EINVAL, "not a regular file")
        key = (what.content_hash or b"".join(what.chunks[:4]), what.size, len(what.chunks))
        with self._mutex:
            content = self._contents.get(key)  # a file opened again: its chunk offsets are known
            if content is None:
                content = self._contents[key] = FileContent(self.repo, what)
                while len(self._contents) > _CONTENTS_KEPT:
                    self._contents.popitem(last=False)
            self._contents.move_to_end(key)
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = _Open(content)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            opened = self._files.get(fh)
        if opened is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            data = opened.content.read(offset, size, self.cache.get)
        except ProtectctlError as err:
            log.error("read %s at %d: %s", path, offset, err.message)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from err
        # read ahead only for a reader going forward: a random reader would pay for chunks it never
        # reads (the kernel's own readahead asks a little past each read, hence the slack)
        sequential = opened.end <= offset <= opened.end + (1 << 20) and offset > 0
        opened.end = max(opened.end, offset + len(data))
        if sequential:
            self._read_ahead(opened.content, offset + len(data))
        return data

    def _read_ahead(self, content: FileContent, end: int) -> None:
        """Start fetching the chunk after the one `end` falls in (a sequential reader's next)."""
        upcoming = content.chunk_after(end)
        if upcoming is not None and not self.cache.has(upcoming):
            self._prefetch.submit(self._warm, upcoming)

    def _warm(self, blob_id: BlobId) -> None:
        with contextlib.suppress(ProtectctlError):  # the read that needs it reports the error
            self.cache.get(blob_id)

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self._files.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0, "f_namemax": 255}

    def listxattr(self, path: str) -> list[str]:
        kind, what = self._resolve(path)
        return [name_text(k) for k, _ in what.xattrs] if kind == "node" else []

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        kind, what = self._resolve(path)
        if kind == "node":
            for key, value in what.xattrs:
                if key == text_name(name):
                    return bytes(value)
        raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))

    def init(self, path: str) -> None:
        self.mounted = True  # libfuse mounted us: what ends the loop from now on is an unmount or a signal

    def destroy(self, path: str) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)


def _enoent() -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def _stat(node: Node) -> dict[str, int]:
    blocks = (node.size - sum(length for _, length in node.holes) + 511) // 512
    return {
        "st_mode": TYPE_BITS[node.type] | stat.S_IMODE(node.mode),
        "st_nlink": max(node.nlink, 1),
        "st_uid": stored_uid(node.user, node.uid),
        "st_gid": stored_gid(node.group, node.gid),
        "st_size": len(node.link_target) if node.type is NodeType.SYMLINK and node.link_target else node.size,
        "st_blocks": blocks,
        "st_mtime": node.mtime_ns,
        "st_atime": node.atime_ns,
        "st_ctime": node.ctime_ns,
        "st_rdev": node.rdev,
    }


def clear_stale_mount(mountpoint: str) -> bool:
    """A mountpoint left by a killed mount ("Transport endpoint is not connected") is unmounted
    lazily so it can be used again; True when one was."""
    import subprocess

    try:
        # statfs always asks the filesystem (a stat of the root may be answered from the kernel's
        # attribute cache for a second after the daemon died, and a mount would then stack on top)
        os.statvfs(mountpoint)
        return False
    except OSError as err:
        if err.errno != errno.ENOTCONN:
            return False
    for tool in ("fusermount3", "fusermount"):
        try:
            done = subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, check=False, timeout=30)
        except FileNotFoundError:
            continue
        if done.returncode == 0:
            return True
    return False


def serve(
    repo: Repository,
    sources: Sequence[str],
    mountpoint: str,
    *,
    allow_other: bool,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount and serve in the foreground until unmounted or interrupted; raises MountError."""
    try:
        import mfusepy
    except ImportError as err:  # pragma: no cover - a dependency
        raise MountError("the FUSE binding (mfusepy) is not installed", hint="pip install mfusepy") from err
    stale = clear_stale_mount(mountpoint)
    if stale:
        log.info("cleared a stale mount at %s", mountpoint)
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory", hint="create it first (mkdir)")
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "/dev/fuse is missing: FUSE is not available here", hint="load the fuse module, or install fuse3"
        )
    operations = PointsFilesystem(repo, sources, cache_bytes=cache_bytes)
    # libfuse answers each request on its own thread; they share the GIL, whose default 5 ms
    # switch interval would make a request wait behind another's chunk decryption
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "default_permissions": True,
        "kernel_cache": True,
        "fsname": "protectctl",
        "subtype": "protectctl",
    }
    if allow_other:
        options["allow_other"] = True
    if ready is not None:
        ready()
    try:
        mfusepy.FUSE(operations, mountpoint, **options)
    except RuntimeError as err:
        if operations.mounted:
            # libfuse ends its loop with an error code when a signal (SIGINT, SIGTERM) stopped it;
            # it has unmounted by then: an interruption, not a failure
            raise KeyboardInterrupt from None
        raise MountError(
            f"mounting {mountpoint} failed (libfuse said {err})",
            hint="is it already mounted, or not empty? --allow-other needs root or user_allow_other in /etc/fuse.conf",
        ) from err
