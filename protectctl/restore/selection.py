"""What a restore will bring back: the selected nodes of a point, and their totals.

Reads tree blobs only (never file content), so a dry run costs the size of the trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from protectctl.agent.sparse import Hasher
from protectctl.engine.ids import BlobId
from protectctl.engine.names import show_text, unescape_name
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import RestoreError
from protectctl.restore.safety import split_subpath


class TreeReader(Protocol):
    """The repository as a restore sees it."""

    def load_tree(self, blob_id: BlobId) -> Tree: ...

    def load_blob(self, blob_id: BlobId) -> bytes: ...


class PointReader(TreeReader, Protocol):
    """What a restore reads a point from: the repository, or a copy read back from tape."""

    def content_hasher(self) -> Hasher: ...


@dataclass(frozen=True, slots=True)
class Selected:
    """One selected entry: where it lives in the point, the directories above it, itself."""

    parents: tuple[Node, ...]  # the directory nodes from the root down to its parent
    node: Node

    @property
    def parts(self) -> tuple[bytes, ...]:
        return tuple(p.name for p in self.parents) + (self.node.name,)


@dataclass(slots=True)
class Totals:
    files: int = 0
    dirs: int = 0
    bytes_total: int = 0
    bytes_needed: int = 0


def select(reader: TreeReader, root: BlobId, subpaths: Sequence[str]) -> list[Selected]:
    """The nodes to restore: the root's children, or each subpath; raises RestoreError."""
    if not subpaths:
        return [Selected((), node) for node in reader.load_tree(root).nodes]
    chosen: list[Selected] = []
    for subpath in subpaths:
        parts = split_subpath(subpath)
        if not parts:
            return [Selected((), node) for node in reader.load_tree(root).nodes]
        chosen.append(_find(reader, root, parts, subpath))
    return _drop_nested(chosen)


def _find(reader: TreeReader, root: BlobId, parts: tuple[bytes, ...], subpath: str) -> Selected:
    parents: list[Node] = []
    tree_id: BlobId | None = root
    for depth, name in enumerate(parts):
        if tree_id is None:
            break
        node = _child(reader.load_tree(tree_id), name)
        if node is None:
            break
        if depth == len(parts) - 1:
            return Selected(tuple(parents), node)
        parents.append(node)
        tree_id = node.subtree if node.type is NodeType.DIR else None
    raise RestoreError(f"'{show_text(subpath)}' is not in this recovery point", hint="`points list` shows the points")


def _child(tree: Tree, name: bytes) -> Node | None:
    """The node named `name`, or else the one named what `name` spells with ``\\xNN`` escapes
    (as listings and messages show undecodable bytes): the exact name always wins."""
    by_name = {n.name: n for n in tree.nodes}
    return by_name.get(name) or by_name.get(unescape_name(name))


def _drop_nested(chosen: list[Selected]) -> list[Selected]:
    """A subpath inside another selected one is already covered by it."""
    keep: list[Selected] = []
    for item in sorted(chosen, key=lambda s: len(s.parts)):
        if not any(item.parts[: len(k.parts)] == k.parts for k in keep):
            keep.append(item)
    return keep


def count(reader: TreeReader, selection: Sequence[Selected]) -> Totals:
    """Files, directories and bytes below the selection (a hard link's bytes once)."""
    totals = Totals()
    seen_links: set[tuple[int, int]] = set()
    stack = [s.node for s in selection]
    while stack:
        node = stack.pop()
        if node.type is NodeType.DIR:
            totals.dirs += 1
            if node.subtree is not None:
                stack.extend(reader.load_tree(node.subtree).nodes)
        elif node.type is NodeType.FILE:
            totals.files += 1
            totals.bytes_total += node.size
            key = (node.dev, node.inode)
            if node.nlink > 1 and key in seen_links:
                continue
            seen_links.add(key)
            totals.bytes_needed += node.size - sum(length for _, length in node.holes)
    return totals
