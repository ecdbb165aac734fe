"""A restore in progress, and what `--delete` removes: both confined to the target.

The marker (`.protectctl-restore` in the target) is written before a restore writes anything
and removed when it finishes without error. A target holding it for the same tree and
subpaths holds only what that restore wrote, so the restore may continue there (`--resume`,
or a plain rerun) instead of refusing a non-empty target: files already restored with their
stored size and mtime (set last, after the content was verified) are skipped.

`extras` lists what a target directory holds that the point does not: what `--delete`
removes, and what `--dry-run --delete` shows. Every directory is opened through directory
fds without following symlinks (restore.safety), so nothing outside the target is read or
removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import Node, NodeType
from protectctl.errors import RestoreError
from protectctl.fsutil import atomic_write
from protectctl.restore.safety import open_dir, remove_entry
from protectctl.restore.selection import TreeReader

MARKER = ".protectctl-restore"
_MARKER_BYTES = MARKER.encode()


@dataclass(frozen=True, slots=True)
class Marker:
    tree: str  # the hex id of the point's tree
    subpaths: tuple[str, ...]
    started: str

    def same_restore(self, tree: BlobId, subpaths: Sequence[str]) -> bool:
        return self.tree == tree.hex() and self.subpaths == tuple(subpaths)


def read_marker(target: Path) -> Marker | None:
    """The unfinished restore recorded in `target`, or None (no marker, or one unreadable)."""
    try:
        with open(target / MARKER, "rb") as f:  # noqa: PTH123 - a small JSON read
            doc = json.loads(f.read(65536))
        return Marker(str(doc["tree"]), tuple(str(s) for s in doc["subpaths"]), str(doc["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(target: Path, tree: BlobId, subpaths: Sequence[str]) -> None:
    doc = {"tree": tree.hex(), "subpaths": list(subpaths), "started": datetime.now(UTC).isoformat()}
    try:
        atomic_write(target / MARKER, json.dumps(doc).encode(), mode=0o600)
    except OSError as err:
        raise RestoreError(f"cannot write to the restore target {target}: {err.strerror}") from err


def clear_marker(target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (target / MARKER).unlink()


def already_restored(dir_fd: int, name: bytes, node: Node) -> bool:
    """`name` is a regular file with the node's size and mtime: a resumed restore finished it."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == node.size and st.st_mtime_ns == node.mtime_ns


# -- --delete ------------------------------------------------------------------------------


def extras(
    reader: TreeReader, root_fd: int, scopes: Sequence[tuple[tuple[bytes, ...], BlobId | None]], *, remove: bool
) -> list[tuple[bytes, ...]]:
    """Entries below each scope (a target directory, as parts, and the tree it must match) that the
    tree does not hold, topmost only (a directory's content goes with it); removed when `remove`."""
    found: list[tuple[bytes, ...]] = []
    for parts, tree in scopes:
        fd = _open_parts(root_fd, parts)
        if fd is None:
            continue
        try:
            found += _extras_in(reader, fd, parts, tree, remove=remove, top=not parts)
        finally:
            os.close(fd)
    return found


def _extras_in(
    reader: TreeReader, fd: int, parts: tuple[bytes, ...], tree: BlobId | None, *, remove: bool, top: bool
) -> list[tuple[bytes, ...]]:
    nodes = {n.name: n for n in (reader.load_tree(tree).nodes if tree is not None else ())}
    found: list[tuple[bytes, ...]] = []
    for name in sorted(_entries(fd)):
        if top and name == _MARKER_BYTES:
            continue
        node = nodes.get(name)
        if node is None:
            found.append(parts + (name,))
            if remove:
                remove_entry(fd, name)
        elif node.type is NodeType.DIR:
            try:
                child = open_dir(fd, name)
            except OSError:
                continue  # not a directory here: the restore replaces it
            try:
                found += _extras_in(reader, child, parts + (name,), node.subtree, remove=remove, top=False)
            finally:
                os.close(child)
    return found


def _entries(fd: int) -> Iterator[bytes]:
    # listdir on a bytes path gives names as bytes, exactly (engine/names.py: no locale involved)
    yield from os.listdir(f"/proc/self/fd/{fd}".encode())


def _open_parts(root_fd: int, parts: tuple[bytes, ...]) -> int | None:
    fd = os.dup(root_fd)
    for part in parts:
        try:
            child = open_dir(fd, part)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd
