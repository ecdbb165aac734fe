"""The stored directory tree: `Node`, `Tree`, and their deterministic encoding.

Owned by the engine (not the archiver) so gc and check can walk every point's trees.
Encoding: canonical JSON (sorted keys, no spaces, ASCII only, fields equal to their
default omitted, bytes as base64, blob ids as hex). Canonical means the same Tree always
encodes to the same bytes, so an unchanged directory dedups to the same tree blob.

Names, symlink targets and xattr names are `bytes` (see engine/names.py). In JSON one is a
string when it is valid UTF-8, else ``{"b64": "..."}`` of its raw bytes. A tree is written
as format 1 when it needs nothing newer (every name UTF-8, no extents hash), so such trees
are byte for byte what earlier releases wrote and they still read them; otherwise format 2,
which earlier releases refuse rather than misread; format 3 when a node has a BLOCKS hash
(block-level change tracking), which format-2 readers refuse. Format 1 trees written before names were
bytes hold undecodable bytes as surrogate escapes, which decode to the same bytes.
`decode_tree` validates the structure and raises CorruptionError; a node whose stored name
(or link target, or xattr name) cannot be bytes is kept with `damage` saying why, so a
restore refuses that entry alone. Whether a name is safe to create is the restore's call.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from protectctl.engine.ids import BLOB_ID_SIZE, BlobId
from protectctl.engine.names import show_name
from protectctl.errors import CorruptionError

TREE_FORMAT_VERSION = 3  # the newest this module reads and writes; see the module docstring
_READABLE_VERSIONS = (1, 2, 3)


class NodeType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    SOCKET = "socket"


class HashScheme(StrEnum):
    """What a FILE node's `content_hash` is a keyed BLAKE3 of."""

    # The logical content, holes as zeros (format 1): checking it costs the file's whole size.
    CONTENT = "content"
    # The size, the hole map and the keyed hash of the data bytes (`extents_hash`): holes
    # cost nothing to check, so a 1 PiB sparse file verifies as fast as its data.
    EXTENTS = "extents"
    # The size, the hole map and each stored chunk's length and id (`blocks_hash`), for a file
    # kept in fixed blocks by block-level change tracking: a sync that reads only changed blocks
    # still knows the whole file's hash, since a chunk id is the keyed hash of its bytes. A
    # restore checks every chunk against its id and this hash against the chunks it wrote.
    BLOCKS = "blocks"


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


_EXTENTS_TAG = b"protectctl/extents-hash/1\0"


def extents_hash(hasher: Hasher, size: int, holes: Sequence[tuple[int, int]], data_digest: bytes) -> bytes:
    """The EXTENTS content hash, with a fresh keyed `hasher`: fixed-width fields, so unambiguous."""
    hasher.update(_EXTENTS_TAG + struct.pack("<QQ", size, len(holes)))
    hasher.update(b"".join(struct.pack("<QQ", start, length) for start, length in holes))
    hasher.update(data_digest)
    return hasher.digest()


_BLOCKS_TAG = b"protectctl/blocks-hash/1\0"
_U64 = struct.Struct("<Q")


def blocks_hash(
    hasher: Hasher, size: int, holes: Sequence[tuple[int, int]], pieces: Sequence[tuple[int, bytes]]
) -> bytes:
    """The BLOCKS content hash, with a fresh keyed `hasher`: size, holes, then (length, id) of
    every chunk in order (fixed-width fields, so unambiguous)."""
    hasher.update(_BLOCKS_TAG + struct.pack("<QQQ", size, len(holes), len(pieces)))
    hasher.update(b"".join(struct.pack("<QQ", start, length) for start, length in holes))
    # (length, id) interleaved without a Python step per piece: a 4 GiB file has 262,144 of them
    lengths = map(_U64.pack, [length for length, _ in pieces])
    ids = [chunk for _, chunk in pieces]  # bytes or any bytes-like: join takes them as they are
    hasher.update(b"".join(itertools.chain.from_iterable(zip(lengths, ids, strict=True))))
    return hasher.digest()


@dataclass(frozen=True, slots=True)
class Node:
    name: bytes
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
    link_target: bytes | None = None  # SYMLINK
    rdev: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1  # hard links: same (dev, inode) within a point
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # (name, value), sorted by name
    content_hash: bytes | None = None  # keyed hash of the whole content, for restore verification
    hash_scheme: HashScheme = HashScheme.CONTENT
    # Set only by decode_tree: why this stored entry cannot be restored as it is (its name,
    # link target or an xattr name is text that stands for no bytes). Never encoded.
    damage: str | None = None


@dataclass(frozen=True, slots=True)
class Tree:
    nodes: tuple[Node, ...]  # sorted by name (bytes), names unique


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
# An encoded node needs format 2 exactly when it holds one of these. Inside a JSON string
# every '"' is escaped, so these spellings can only be structure, never text in a value.
_FORMAT_2_MARKS = ('{"b64":', '"hash_scheme":')
_FORMAT_3_MARK = '"hash_scheme":"blocks"'


def encode_tree(tree: Tree) -> bytes:
    """Canonical bytes of `tree`; nodes are written sorted by name. Raises ValueError on duplicates
    or on a damaged node (one decoded from a tree it could not be read faithfully from)."""
    nodes = sorted(tree.nodes, key=lambda n: n.name)
    for before, after in zip(nodes, nodes[1:], strict=False):
        if before.name == after.name:
            raise ValueError(f"duplicate name '{show_name(before.name)}' in a tree")
    return assemble_tree([encode_node(n) for n in nodes])


def encode_node(node: Node) -> str:
    """The canonical JSON of one node, as it appears inside `encode_tree`'s output."""
    if node.damage is not None:
        raise ValueError(f"node '{show_name(node.name)}' cannot be encoded: {node.damage}")
    return _NODE_JSON(_encode_node(node))


# One encoder for every node: json.dumps with options builds a new JSONEncoder per call.
_NODE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


def assemble_tree(encoded_nodes: Sequence[str]) -> bytes:
    """`encode_tree` from nodes already encoded by `encode_node`, which the caller gives sorted by
    name and unique (the archiver reuses the encoding of unchanged entries)."""
    version = 2 if any(mark in text for text in encoded_nodes for mark in _FORMAT_2_MARKS) else 1
    if version == 2 and any(_FORMAT_3_MARK in text for text in encoded_nodes):
        version = 3
    # With sorted keys, "nodes" comes before "v": the document is a prefix, the nodes, a suffix.
    return ('{"nodes":[' + ",".join(encoded_nodes) + f'],"v":{version}}}').encode("ascii")


def _bytes_json(raw: bytes) -> object:
    """A name as JSON: text when it is UTF-8 (as format 1 wrote it), else its bytes in base64."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def _encode_node(node: Node) -> dict[str, object]:
    # Field by field rather than a loop over _INT_FIELDS (this runs once per file of a backup);
    # key order does not matter, the encoder sorts keys. An int field is written unless it has
    # its default (_DEFAULTS), an optional one unless it is None or empty.
    out: dict[str, object] = {
        "name": _bytes_json(node.name),
        "type": node.type.value,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "mtime_ns": node.mtime_ns,
        "atime_ns": node.atime_ns,
        "ctime_ns": node.ctime_ns,
        "size": node.size,
    }
    if node.rdev != 0:
        out["rdev"] = node.rdev
    if node.inode != 0:
        out["inode"] = node.inode
    if node.dev != 0:
        out["dev"] = node.dev
    if node.nlink != 1:
        out["nlink"] = node.nlink
    if node.user is not None:
        out["user"] = node.user
    if node.group is not None:
        out["group"] = node.group
    if node.chunks:
        out["chunks"] = [c.hex() for c in node.chunks]
    if node.holes:
        out["holes"] = [list(h) for h in node.holes]
    if node.subtree is not None:
        out["subtree"] = node.subtree.hex()
    if node.link_target is not None:
        out["link_target"] = _bytes_json(node.link_target)
    if node.xattrs:
        out["xattrs"] = [[_bytes_json(k), base64.b64encode(v).decode("ascii")] for k, v in node.xattrs]
    if node.content_hash is not None:
        out["content_hash"] = node.content_hash.hex()
    if node.hash_scheme is not HashScheme.CONTENT:
        out["hash_scheme"] = node.hash_scheme.value
    return out


def _document(data: bytes) -> tuple[int, list[Any]]:
    """A stored tree's format version and raw node list (CorruptionError if it has neither)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptionError(f"tree is not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("v") not in _READABLE_VERSIONS:
        raise CorruptionError("tree has an unknown format version")
    raw_nodes = document.get("nodes")
    if not isinstance(raw_nodes, list):
        raise CorruptionError("tree has no node list")
    return document["v"], raw_nodes


def decode_tree(data: bytes) -> Tree:
    """Parse and validate a stored tree; raises CorruptionError on anything unexpected."""
    version, raw_nodes = _document(data)
    decoded = [_decode_node(raw, version) for raw in raw_nodes]
    # Format 1 sorted names as text (undecodable bytes as surrogates), format 2 as bytes.
    for (before, _), (after, node) in zip(decoded, decoded[1:], strict=False):
        if not before < after:  # type: ignore[operator]  # both str (format 1) or both bytes
            raise CorruptionError(f"tree nodes are not sorted and unique at '{show_name(node.name)}'")
    nodes = tuple(node for _, node in decoded)
    if version != 1:
        return Tree(nodes)  # sorted by the bytes of their names: just checked
    return Tree(tuple(sorted(nodes, key=lambda n: n.name)))  # text order is not bytes order


@dataclass(frozen=True, slots=True)
class TreeRefs:
    """What a stored tree references: what gc's mark needs of it."""

    subtrees: list[BlobId]
    chunks: list[BlobId]
    nodes: int


def tree_refs(data: bytes) -> TreeRefs:
    """The subtrees and chunks a stored tree references, without building its nodes (~4x less
    CPU than `decode_tree` on a directory of small files; gc reads every tree of every point).
    The document's structure and these two fields are checked as `decode_tree` checks them
    (CorruptionError); the other fields are not read, so a tree damaged only there is walked
    through, its references kept: gc errs on the side of keeping data."""
    _, raw_nodes = _document(data)
    subtrees: list[BlobId] = []
    chunks: list[BlobId] = []
    try:
        for raw in raw_nodes:
            if type(raw) is not dict:
                raise CorruptionError("tree node is not an object")
            listed = raw.get("chunks", _ABSENT)
            if listed is not _ABSENT:
                if type(listed) is not list:
                    raise TypeError("chunks must be a list")
                chunks += [_as_id(c) for c in listed]
            if (value := raw.get("subtree")) is not None:
                subtrees.append(_as_id(value))
    except (ValueError, TypeError) as err:
        raise CorruptionError(f"tree node is malformed: {err}") from err
    return TreeRefs(subtrees, chunks, len(raw_nodes))


_NODE_TYPES: Mapping[str, NodeType] = {t.value: t for t in NodeType}
_HASH_SCHEMES: Mapping[str, HashScheme] = {s.value: s for s in HashScheme}
_INT_DEFAULTS = tuple((f, _DEFAULTS.get(f)) for f in _INT_FIELDS)
_ABSENT: list[object] = []  # `raw.get(key, _ABSENT) is _ABSENT`: the key is not there (null is junk)


def _decode_node(raw: object, version: int) -> tuple[str | bytes, Node]:
    """The node and the key it was sorted by when written: format 1, its name as text.

    Runs once per entry of every tree check, gc and restore read (a million per point of a
    million-file source): the common spellings take a fast path, everything else the general
    one, so what is accepted and every error are those of the field helpers below. Input is
    `json.loads` output, whose ints and strs are exactly int and str.
    """
    if not isinstance(raw, dict):
        raise CorruptionError("tree node is not an object")
    try:
        damage: list[str] = []
        get = raw.get
        name = _as_bytes(raw["name"], "name", damage)
        key: str | bytes = _text(raw, "name") if version == 1 else name
        ints: dict[str, int] = {}
        for f, default in _INT_DEFAULTS:
            value = get(f, default)
            if type(value) is not int:  # bool, float, text or absent: junk (what earlier releases refused too)
                raise TypeError(f"{f} must be an integer")
            ints[f] = value
        type_text = _text(raw, "type")
        node_type = _NODE_TYPES.get(type_text) or NodeType(type_text)
        user, group = get("user"), get("group")
        user = None if user is None else _as_text(user)
        group = None if group is None else _as_text(group)
        chunks_raw = get("chunks", _ABSENT)
        if chunks_raw is _ABSENT:
            chunks: tuple[BlobId, ...] = ()
        elif type(chunks_raw) is list:
            chunks = tuple([_as_id(c) for c in chunks_raw])
        else:
            raise TypeError("chunks must be a list")
        # in this order, so that damage is listed (and the first error raised) as always
        holes = () if get("holes", _ABSENT) is _ABSENT else tuple(_as_hole(h) for h in _list(raw, "holes"))
        subtree = None if (value := get("subtree")) is None else _as_id(value)
        link_target = None if (value := get("link_target")) is None else _as_bytes(value, "link target", damage)
        xattrs = () if get("xattrs", _ABSENT) is _ABSENT else tuple(_as_xattr(x, damage) for x in _list(raw, "xattrs"))
        content_hash = None if (value := get("content_hash")) is None else _as_hex(value)
        scheme = get("hash_scheme", "content")
        node = Node(
            name=name,
            type=node_type,
            user=user,
            group=group,
            chunks=chunks,
            holes=holes,
            subtree=subtree,
            link_target=link_target,
            xattrs=xattrs,
            content_hash=content_hash,
            hash_scheme=(type(scheme) is str and _HASH_SCHEMES.get(scheme)) or HashScheme(scheme),
            damage="; ".join(damage) or None,
            **ints,
        )
    except (ValueError, TypeError, KeyError, binascii.Error) as err:
        raise CorruptionError(f"tree node is malformed: {err}") from err
    return key, node


def _as_bytes(value: object, what: str, damage: list[str]) -> bytes:
    """A name as stored: text (UTF-8; format 1 also surrogate escapes) or {"b64": ...}."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(_as_text(value["b64"]), validate=True)
    text = _as_text(value)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Text no file name could have become (a crafted or damaged tree): keep the node, so
        # gc still sees its blobs and a restore refuses just this entry.
        damage.append(f"its {what} is not a valid file name (a lone surrogate)")
        return text.encode("utf-8", "surrogatepass")


def _text(raw: Mapping[str, object], key: str) -> str:
    return _as_text(raw[key])


def _as_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _list(raw: Mapping[str, object], key: str) -> list[object]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return value


def _as_hex(value: object) -> bytes:
    return bytes.fromhex(_as_text(value))


def _as_id(value: object) -> BlobId:
    raw = bytes.fromhex(value) if type(value) is str else _as_hex(value)
    if len(raw) != BLOB_ID_SIZE:
        raise ValueError("blob id has the wrong length")
    return BlobId(raw)


def _as_hole(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError("hole must be [offset, length]")
    return (value[0], value[1])


def _as_xattr(value: object, damage: list[str]) -> tuple[bytes, bytes]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("xattr must be [name, base64 value]")
    return (_as_bytes(value[0], "xattr name", damage), base64.b64decode(_as_text(value[1]), validate=True))
