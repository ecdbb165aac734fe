"""fanotify with filesystem marks and directory file handles, through libc (ctypes).

Why ctypes and our own parsing (struct) rather than a binding: we need the raw records of
`FAN_REPORT_DFID_NAME` (a directory's file handle, its filesystem id and an entry name), the
queue-overflow event, and a non-blocking fd we drain on demand inside our own poll loop.
The Python bindings on PyPI do not give that: `pyfanotify` (0.3.0) parses FID records inside
its C extension but hands back resolved paths from its own worker process (no fsid, no
handle, no control over when the queue is drained), and the others cover only the classic
fd-per-event mode, which cannot mark a whole filesystem for directory-entry events. Three
libc calls and a 24-byte header are less to trust than a compiled dependency.

Needs Linux >= 5.9 (FAN_REPORT_DFID_NAME with FAN_MARK_FILESYSTEM) and CAP_SYS_ADMIN (root);
`unsupported()` says why a host cannot, in one sentence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

# fanotify_init flags
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
# fanotify_mark flags
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
# events
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
# What changes a directory's tree: its entries (create, delete, rename), their content and
# their metadata (attributes, xattrs). FAN_ONDIR: the same for entries that are directories.
WATCH_MASK = FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE | FAN_ONDIR

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_METADATA_VERSION = 3
_INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len
_FSID = struct.Struct("=ii")
_HANDLE_HEADER = struct.Struct("=Ii")  # handle_bytes, handle_type
_INFO_DFID_NAME = 2
_INFO_DFID = 3
# The usual record, read with one unpack: metadata, one info header, fsid, handle header.
_COMMON = struct.Struct("=IBBHQii" + "BBH" + "ii" + "Ii")
_READ_SIZE = 256 << 10


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a setattr call per field per event
class Event:
    """One event: `mask` (FAN_* bits); for entry events the directory's filesystem id and file
    handle (type, bytes) and the entry's name (b"." when the event is on the directory itself);
    an overflow has no handle."""

    mask: int
    fsid: tuple[int, int] | None = None
    handle_type: int = 0
    handle: bytes = b""
    name: bytes = b""

    @property
    def overflow(self) -> bool:
        return bool(self.mask & FAN_Q_OVERFLOW)


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.open_by_handle_at.restype = ctypes.c_int
    return libc


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def init() -> int:
    """A non-blocking notification group reporting directory handles and names."""
    fd: int = _libc().fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
    if fd < 0:
        _raise("fanotify_init")
    return fd


def mark_filesystem(fd: int, path: str | bytes) -> None:
    """Watch every directory of the filesystem holding `path`."""
    raw = os.fsencode(path)
    if _libc().fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, WATCH_MASK, -100, raw) < 0:  # AT_FDCWD
        _raise(f"fanotify_mark {os.fsdecode(raw)}")


def open_by_handle(mount_fd: int, handle_type: int, handle: bytes) -> int:
    """An O_PATH fd of the directory a handle names (OSError ESTALE when it is gone)."""
    raw = _HANDLE_HEADER.pack(len(handle), handle_type) + handle
    buf = ctypes.create_string_buffer(raw, len(raw))
    fd: int = _libc().open_by_handle_at(mount_fd, ctypes.addressof(buf), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if fd < 0:
        _raise("open_by_handle_at")
    return fd


def read_events(fd: int) -> list[Event]:
    """Every event queued now (an empty list when none: the fd is non-blocking)."""
    try:
        data = os.read(fd, _READ_SIZE)
    except BlockingIOError:
        return []
    return list(parse(data))


def parse(data: bytes) -> Iterator[Event]:
    """The events in one read's buffer (records the kernel wrote whole)."""
    offset = 0
    size = len(data)
    while offset + _COMMON.size <= size:  # the fast path: one DFID_NAME record after the metadata
        event_len, vers, _, metadata_len, mask, ev_fd, _, info_type, _, info_len, f0, f1, hb, ht = _COMMON.unpack_from(
            data, offset
        )
        if vers != _METADATA_VERSION or metadata_len != _METADATA.size or ev_fd >= 0 or info_type != _INFO_DFID_NAME:
            break
        if info_len != event_len - metadata_len:
            break
        at = offset + _COMMON.size
        end = offset + event_len
        name = data[at + hb : end].split(b"\0", 1)[0] or b"."
        yield Event(mask, (f0, f1), ht, data[at : at + hb], name)
        offset = end
    while offset + _METADATA.size <= len(data):
        event_len, vers, _, metadata_len, mask, ev_fd, _ = _METADATA.unpack_from(data, offset)
        if vers != _METADATA_VERSION or event_len < _METADATA.size:
            raise OSError(errno.EPROTO, f"fanotify: unexpected event record (version {vers})")
        if ev_fd >= 0:  # never asked for (FID mode has none), but never leaked either
            os.close(ev_fd)
        info = offset + metadata_len
        end = offset + event_len
        found = None
        while info + _INFO_HEADER.size <= end:
            info_type, _, info_len = _INFO_HEADER.unpack_from(data, info)
            if info_len < _INFO_HEADER.size:
                break
            if info_type in (_INFO_DFID_NAME, _INFO_DFID) and found is None:
                fsid = _FSID.unpack_from(data, info + _INFO_HEADER.size)
                at = info + _INFO_HEADER.size + _FSID.size
                handle_bytes, handle_type = _HANDLE_HEADER.unpack_from(data, at)
                at += _HANDLE_HEADER.size
                handle = data[at : at + handle_bytes]
                name = b"."
                if info_type == _INFO_DFID_NAME:
                    tail = data[at + handle_bytes : info + info_len]
                    name = tail.split(b"\0", 1)[0] or b"."
                found = Event(mask, fsid, handle_type, bytes(handle), name)
            info += info_len
        yield found if found is not None else Event(mask)
        offset = end


def unsupported() -> str | None:
    """Why this host cannot watch (no fanotify, an old kernel, not root), or None."""
    try:
        fd = init()
    except OSError as err:
        if err.errno == errno.EPERM:
            return "fanotify needs root (CAP_SYS_ADMIN): the change journal is off"
        if err.errno in (errno.EINVAL, errno.ENOSYS):
            return "the kernel has no fanotify directory reports (FAN_REPORT_DFID_NAME, Linux >= 5.9)"
        return f"fanotify cannot start: {err.strerror}"
    except AttributeError:  # a libc without the symbols
        return "the C library has no fanotify"
    os.close(fd)
    return None


def fsid_of(path: str | bytes) -> tuple[int, int]:
    """The filesystem id events carry for `path` (statfs f_fsid, as two ints)."""
    raw = os.statvfs(path).f_fsid
    low, high = raw & 0xFFFFFFFF, (raw >> 32) & 0xFFFFFFFF
    pack = struct.pack("=II", low, high)
    return _FSID.unpack(pack)
