"""Keep a restore inside its target.

Every restore operation is relative to a directory file descriptor opened by the restore
itself, with a single path component that `check_name` accepted, and directories are opened
with O_NOFOLLOW. So a stored name such as ``../x``, ``/etc/passwd`` or ``a/b`` is refused,
and a symlink (stored in the tree, or left in a target being overwritten) is never followed
to write through it: the restore can only ever write below the target directory.
Names are bytes throughout (engine/names.py), so a name that is not UTF-8 is restored exactly.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence

from protectctl.engine.names import show_name, show_text, text_name
from protectctl.errors import RestoreError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: bytes) -> bytes:
    """`name` if it is one safe path component; raises RestoreError otherwise."""
    if not name or name in (b".", b"..") or b"/" in name or b"\x00" in name:
        raise RestoreError(f"refusing to restore an entry named '{show_name(name)}': it could escape the target")
    return name


def split_subpath(subpath: str) -> tuple[bytes, ...]:
    """Components of a user-given path inside the point ("docs/a.txt"); raises RestoreError.

    The text is the name's bytes as the shell gave them (argv undecodable bytes arrive as
    surrogate escapes); selection also accepts a name typed the way a listing shows it.
    """
    try:
        raw = text_name(subpath.strip())
    except ValueError as err:
        raise RestoreError(f"path '{show_text(subpath)}': {err}", hint="give a path inside the source") from err
    parts = tuple(p for p in raw.strip(b"/").split(b"/") if p not in (b"", b"."))
    if any(p == b".." for p in parts):
        raise RestoreError(f"path '{show_name(raw)}' leaves the recovery point", hint="give a path inside the source")
    return parts


def open_dir(parent_fd: int, name: bytes) -> int:
    """Open an existing directory `name` below `parent_fd` without following a symlink."""
    return os.open(check_name(name), _DIR_FLAGS, dir_fd=parent_fd)


def open_dir_path(root_fd: int, parts: Sequence[bytes]) -> int:
    """Open root/parts[0]/.../parts[-1] one component at a time, never following a symlink."""
    fd = os.dup(root_fd)
    for part in parts:
        try:
            child = open_dir(fd, part)
        finally:
            os.close(fd)
        fd = child
    return fd


def make_dir(parent_fd: int, name: bytes, *, replace: bool) -> int:
    """Create (or, when it is a real directory, reuse) `name`; returns its fd.

    Something else in the way (a file, a symlink) is removed when `replace`, else refused.
    """
    check_name(name)
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        try:
            return open_dir(parent_fd, name)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR) or not replace:
                raise RestoreError(f"'{show_name(name)}' exists in the target and is not a directory") from err
        remove_entry(parent_fd, name)
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    return open_dir(parent_fd, name)


def remove_entry(parent_fd: int, name: bytes) -> None:
    """Remove whatever `name` is (a directory recursively, a symlink itself, not its target)."""
    check_name(name)
    try:
        os.unlink(name, dir_fd=parent_fd)
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return
