"""Capture a filesystem entry's metadata as an engine `Node` (content aside).

Reads only inode metadata (lstat, xattrs, owner names); file content is the reader's job.
Owner names are looked up once per id: a tree of a million files has a handful of owners.
Extended attributes are best effort: a filesystem without them (ENOTSUP) or a value that
vanished between list and get (ENODATA) yields fewer xattrs, never an error.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import HashScheme, Node, NodeType

_IGNORED_XATTR_ERRNOS = {errno.ENOTSUP, errno.ENODATA, errno.EPERM, errno.EACCES, errno.E2BIG}


def node_type(mode: int) -> NodeType | None:
    """The node type of an lstat mode; None for types we do not know."""
    if stat.S_ISREG(mode):
        return NodeType.FILE
    if stat.S_ISDIR(mode):
        return NodeType.DIR
    if stat.S_ISLNK(mode):
        return NodeType.SYMLINK
    if stat.S_ISFIFO(mode):
        return NodeType.FIFO
    if stat.S_ISCHR(mode):
        return NodeType.CHARDEV
    if stat.S_ISBLK(mode):
        return NodeType.BLOCKDEV
    if stat.S_ISSOCK(mode):
        return NodeType.SOCKET
    return None


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def read_xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The entry's extended attributes (raw names), sorted by name, without following a symlink."""
    try:
        # listxattr gives text decoded by os.fsdecode whatever `path` is; os.fsencode is its
        # exact inverse, so the raw name comes back even when it is not UTF-8.
        names = [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)]
    except OSError as err:
        if err.errno in _IGNORED_XATTR_ERRNOS:
            return ()
        raise
    out: list[tuple[bytes, bytes]] = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as err:
            if err.errno not in _IGNORED_XATTR_ERRNOS:
                raise
    return tuple(out)


def base_node(
    name: bytes,
    st: os.stat_result,
    kind: NodeType,
    xattrs: tuple[tuple[bytes, bytes], ...],
    *,
    size: int | None = None,
    chunks: tuple[BlobId, ...] = (),
    holes: tuple[tuple[int, int], ...] = (),
    content_hash: bytes | None = None,
    subtree: BlobId | None = None,
    link_target: bytes | None = None,
    hash_scheme: HashScheme = HashScheme.CONTENT,
) -> Node:
    """A node from lstat facts plus what the caller knows of its content."""
    if size is None:
        # A directory's st_size is filesystem trivia; 0 keeps unchanged trees identical.
        size = st.st_size if kind in (NodeType.FILE, NodeType.SYMLINK) else 0
    return Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        size=size,
        chunks=chunks,
        holes=holes,
        subtree=subtree,
        link_target=link_target,
        rdev=st.st_rdev if kind in (NodeType.CHARDEV, NodeType.BLOCKDEV) else 0,
        inode=st.st_ino,
        dev=st.st_dev,
        nlink=st.st_nlink if kind is NodeType.FILE else 1,
        xattrs=xattrs,
        content_hash=content_hash,
        hash_scheme=hash_scheme,
    )
