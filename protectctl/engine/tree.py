"""The stored directory tree: `Node`, `Tree`, and their deterministic encoding.

Owned by the engine (not the archiver) so gc and check can walk every point's trees.
Encoding: canonical JSON (sorted keys, no spaces, ASCII only, fields equal to their
default omitted, bytes as base64, blob ids as hex). Canonical means the same Tree always
encodes to the same bytes, so an unchanged directory dedups to the same tree blob. Names
are `str` as `os.fsdecode` gives them; undecodable bytes survive as surrogate escapes,
which ASCII-only JSON keeps. `decode_tree` validates everything and raises CorruptionError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from protectctl.engine.ids import BLOB_ID_SIZE, BlobId
from protectctl.errors import CorruptionError

TREE_FORMAT_VERSION = 1

T = TypeVar("T")


class NodeType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    SOCKET = "socket"


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    type: NodeType
    mode: int
    uid: int
    gid: int
    user: str | None
    group: str | None
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    size: int
    chunks: tuple[BlobId, ...] = ()  # FILE content, in order
    # Sparse files: (offset, length) ranges of zeros not stored; chunks cover the rest in order.
    holes: tuple[tuple[int, int], ...] = ()
    subtree: BlobId | None = None  # DIR
    link_target: str | None = None  # SYMLINK
    rdev: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1  # hard links: same (dev, inode) within a point
    xattrs: tuple[tuple[str, bytes], ...] = ()
    content_hash: bytes | None = None  # keyed hash of the whole content, for restore verification


@dataclass(frozen=True, slots=True)
class Tree:
    nodes: tuple[Node, ...]  # sorted by name, names unique


_INT_FIELDS = (
    "mode",
    "uid",
    "gid",
    "mtime_ns",
    "atime_ns",
    "ctime_ns",
    "size",
    "rdev",
    "inode",
    "dev",
    "nlink",
)
_DEFAULTS: Mapping[str, object] = {"rdev": 0, "inode": 0, "dev": 0, "nlink": 1}


def encode_tree(tree: Tree) -> bytes:
    """Canonical bytes of `tree`; nodes are written sorted by name. Raises ValueError on duplicates."""
    nodes = sorted(tree.nodes, key=lambda n: n.name)
    for before, after in zip(nodes, nodes[1:], strict=False):
        if before.name == after.name:
            raise ValueError(f"duplicate name {before.name!r} in a tree")
    return assemble_tree([encode_node(n) for n in nodes])


def encode_node(node: Node) -> str:
    """The canonical JSON of one node, as it appears inside `encode_tree`'s output."""
    return json.dumps(_encode_node(node), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# With sorted keys, "nodes" comes before "v": the document is this prefix, the nodes, this suffix.
_TREE_PREFIX = '{"nodes":['
_TREE_SUFFIX = f'],"v":{TREE_FORMAT_VERSION}}}'


def assemble_tree(encoded_nodes: Sequence[str]) -> bytes:
    """`encode_tree` from nodes already encoded by `encode_node`, which the caller gives sorted by
    name and unique (the archiver reuses the encoding of unchanged entries)."""
    return (_TREE_PREFIX + ",".join(encoded_nodes) + _TREE_SUFFIX).encode("ascii")


def _encode_node(node: Node) -> dict[str, object]:
    out: dict[str, object] = {"name": node.name, "type": node.type.value}
    for field in _INT_FIELDS:
        value = getattr(node, field)
        if _DEFAULTS.get(field) != value:
            out[field] = value
    optional: dict[str, object | None] = {
        "user": node.user,
        "group": node.group,
        "chunks": [c.hex() for c in node.chunks] or None,
        "holes": [list(h) for h in node.holes] or None,
        "subtree": node.subtree.hex() if node.subtree is not None else None,
        "link_target": node.link_target,
        "xattrs": [[k, base64.b64encode(v).decode("ascii")] for k, v in node.xattrs] or None,
        "content_hash": node.content_hash.hex() if node.content_hash is not None else None,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def decode_tree(data: bytes) -> Tree:
    """Parse and validate a stored tree; raises CorruptionError on anything unexpected."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptionError(f"tree is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("v") != TREE_FORMAT_VERSION:
        raise CorruptionError("tree has an unknown format version")
    raw_nodes = document.get("nodes")
    if not isinstance(raw_nodes, list):
        raise CorruptionError("tree has no node list")
    nodes = tuple(_decode_node(raw) for raw in raw_nodes)
    for before, after in zip(nodes, nodes[1:], strict=False):
        if not before.name < after.name:
            raise CorruptionError(f"tree nodes are not sorted and unique at {after.name!r}")
    return Tree(nodes=nodes)


def _decode_node(raw: object) -> Node:
    if not isinstance(raw, dict):
        raise CorruptionError("tree node is not an object")
    try:
        name = _text(raw, "name")
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise CorruptionError(f"tree node has an unsafe name {name!r}")
        ints = {f: _int(raw, f, _DEFAULTS.get(f)) for f in _INT_FIELDS}
        return Node(
            name=name,
            type=NodeType(_text(raw, "type")),
            user=_opt(raw, "user", _as_text),
            group=_opt(raw, "group", _as_text),
            chunks=tuple(_as_id(c) for c in _list(raw, "chunks")),
            holes=tuple(_as_hole(h) for h in _list(raw, "holes")),
            subtree=_opt(raw, "subtree", _as_id),
            link_target=_opt(raw, "link_target", _as_text),
            xattrs=tuple(_as_xattr(x) for x in _list(raw, "xattrs")),
            content_hash=_opt(raw, "content_hash", _as_hex),
            **ints,
        )
    except (ValueError, TypeError, KeyError) as err:
        raise CorruptionError(f"tree node is malformed: {err}") from err


def _text(raw: Mapping[str, object], key: str) -> str:
    return _as_text(raw[key])


def _as_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _int(raw: Mapping[str, object], key: str, default: object) -> int:
    value = raw.get(key, default)
    # bool is an int subclass; a stored true/false is junk, not 1/0.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    return value


def _list(raw: Mapping[str, object], key: str) -> list[object]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return value


def _opt(raw: Mapping[str, object], key: str, parse: Callable[[object], T]) -> T | None:
    value = raw.get(key)
    return None if value is None else parse(value)


def _as_hex(value: object) -> bytes:
    return bytes.fromhex(_as_text(value))


def _as_id(value: object) -> BlobId:
    raw = _as_hex(value)
    if len(raw) != BLOB_ID_SIZE:
        raise ValueError("blob id has the wrong length")
    return BlobId(raw)


def _as_hole(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError("hole must be [offset, length]")
    return (value[0], value[1])


def _as_xattr(value: object) -> tuple[str, bytes]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("xattr must be [name, base64 value]")
    return (_as_text(value[0]), base64.b64decode(_as_text(value[1]), validate=True))
