"""`LocalStorage`: the storage Protocol on a local directory.

Layout: `config/<name>`, `keys/<name>`, `index/<name>`, `points/<name>`, `locks/<name>`, and
`data/<first two hex chars>/<name>` (sharding keeps directories small: 100k packs make
256 directories of ~400 entries). Every put goes through `fsutil.atomic_write`, so a
crash leaves the old object or the new one, and temporary files start with "." and are
never listed. OS errors become `RepositoryError`s whose text says what happened.

Reads of packs (`data/`) go through a small cache of open file descriptors and `pread`:
a restore reads thousands of blobs from a few dozen packs, and opening the pack again for
each blob cost as much as reading it. Packs are immutable (named by their content hash),
so a cached descriptor can never show other bytes than the name promises; `delete` drops
the descriptor so this process sees its own deletes at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from protectctl.engine.storage.base import ObjectInfo, ObjectKind, ObjectMissingError
from protectctl.errors import RepositoryError
from protectctl.fsutil import atomic_write, fsync_dir

# Names are chosen by the engine (hex ids, "config"); refusing anything else keeps a bad
# name from escaping the repository directory.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# Open pack descriptors kept per storage object (least recently used closed first).
_OPEN_PACKS = 32


class _OpenFile:
    """An open descriptor, closed when the last user lets go (eviction never races a read)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError, TypeError):
            os.close(self.fd)


class LocalStorage:
    """Objects as files under one directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._packs: OrderedDict[str, _OpenFile] = OrderedDict()
        self._packs_lock = threading.Lock()

    def describe(self) -> str:
        return f"local:{self.path}"

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        target = self._file(kind, name)
        self._forget_pack(kind, name)
        try:
            atomic_write(target, data, mode=0o600)
        except OSError as err:
            raise self._os_error("writing", target, err) from err

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        target = self._file(kind, name)
        if kind is ObjectKind.DATA:
            return self._get_pack(target, name, offset, length)
        try:
            with open(target, "rb") as handle:
                handle.seek(offset)
                return handle.read() if length is None else _read_exactly(handle, length, target)
        except FileNotFoundError as err:
            raise ObjectMissingError(f"{self.describe()}: {kind}/{name} does not exist") from err
        except OSError as err:
            raise self._os_error("reading", target, err) from err

    def get_into(self, kind: ObjectKind, name: str, offset: int, out: memoryview) -> None:
        """Read exactly len(out) bytes of a pack from `offset` into `out` (no allocation)."""
        if kind is not ObjectKind.DATA or offset < 0:
            raise ValueError("get_into reads packs, from a non-negative offset")
        with self._packs_lock:  # an open pack: no path built per blob (restores read many small ones)
            handle = self._packs.get(name)
            if handle is not None:
                self._packs.move_to_end(name)
        try:
            if handle is None:
                handle = self._pack_handle(self._file(kind, name), name)
            got = os.preadv(handle.fd, [out], offset)
        except FileNotFoundError as err:
            raise ObjectMissingError(f"{self.describe()}: {ObjectKind.DATA}/{name} does not exist") from err
        except OSError as err:
            raise self._os_error("reading", self._file(kind, name), err) from err
        if got != len(out):
            raise RepositoryError(f"reading {self._file(kind, name)}: wanted {len(out)} bytes, the object is shorter")

    def _pack_handle(self, target: Path, name: str) -> _OpenFile:
        with self._packs_lock:
            handle = self._packs.get(name)
            if handle is not None:
                self._packs.move_to_end(name)
                return handle
        handle = _OpenFile(os.open(target, os.O_RDONLY | os.O_CLOEXEC))
        with self._packs_lock:
            self._packs[name] = handle
            while len(self._packs) > _OPEN_PACKS:
                self._packs.popitem(last=False)
        return handle

    def _get_pack(self, target: Path, name: str, offset: int, length: int | None) -> bytes:
        try:
            handle = self._pack_handle(target, name)
            if length is None:
                length = max(os.fstat(handle.fd).st_size - offset, 0)
            data = os.pread(handle.fd, length, offset)
        except FileNotFoundError as err:
            raise ObjectMissingError(f"{self.describe()}: {ObjectKind.DATA}/{name} does not exist") from err
        except OSError as err:
            raise self._os_error("reading", target, err) from err
        if len(data) != length:
            raise RepositoryError(f"reading {target}: wanted {length} bytes, the object is shorter")
        return data

    def _forget_pack(self, kind: ObjectKind, name: str) -> None:
        if kind is ObjectKind.DATA:
            with self._packs_lock:
                self._packs.pop(name, None)

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        base = self.path / kind.value
        dirs = _shard_dirs(base) if kind is ObjectKind.DATA else [base]
        for directory in dirs:
            yield from self._list_dir(kind, directory)

    def delete(self, kind: ObjectKind, name: str) -> None:
        target = self._file(kind, name)
        self._forget_pack(kind, name)
        try:
            target.unlink()
        except FileNotFoundError as err:
            raise ObjectMissingError(f"{self.describe()}: {kind}/{name} does not exist") from err
        except OSError as err:
            raise self._os_error("deleting", target, err) from err
        # A delete that is not durable could resurrect a lock or a condemned pack after a
        # power cut; gc's safety argument assumes deletes stick.
        try:
            fsync_dir(target.parent)
        except OSError as err:
            raise self._os_error("syncing", target.parent, err) from err

    def exists(self, kind: ObjectKind, name: str) -> bool:
        return self._file(kind, name).is_file()

    def _file(self, kind: ObjectKind, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid object name {name!r}")
        if kind is ObjectKind.DATA:
            return self.path / kind.value / name[:2] / name
        return self.path / kind.value / name

    def _list_dir(self, kind: ObjectKind, directory: Path) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        except OSError as err:
            raise self._os_error("listing", directory, err) from err
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # deleted between scandir and stat by a concurrent gc
            yield ObjectInfo(kind=kind, name=entry.name, size=size)

    def _os_error(self, verb: str, target: Path, err: OSError) -> RepositoryError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return RepositoryError(
                f"{verb} {target}: the disk holding the repository is full",
                hint="free space or move the repository; objects already written stay valid",
            )
        if err.errno in (errno.EACCES, errno.EPERM):
            return RepositoryError(f"{verb} {target}: permission denied")
        return RepositoryError(f"{verb} {target}: {err.strerror or err}")


def _read_exactly(handle: BinaryIO, length: int, target: Path) -> bytes:
    data = handle.read(length)
    if len(data) != length:
        raise RepositoryError(f"reading {target}: wanted {length} bytes, the object is shorter")
    return data


def _shard_dirs(base: Path) -> list[Path]:
    try:
        return sorted(p for p in base.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
