"""`assemble_tree` over `encode_node` fragments is byte for byte the canonical whole-document JSON."""

from __future__ import annotations

import json

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import (
    HashScheme,
    Node,
    NodeType,
    Tree,
    _encode_node,
    assemble_tree,
    decode_tree,
    encode_node,
    encode_tree,
)


def _node(name: bytes, kind: NodeType, **extra: object) -> Node:
    base: dict[str, object] = dict(
        name=name,
        type=kind,
        mode=0o644,
        uid=1000,
        gid=0,
        user="é\u2603",
        group=None,
        mtime_ns=1,
        atime_ns=2,
        ctime_ns=3,
        size=0,
    )
    base.update(extra)
    return Node(**base)  # type: ignore[arg-type]


def test_fragments_assemble_to_the_canonical_document() -> None:
    nodes = [
        _node(
            b"b\xff",
            NodeType.FILE,
            size=9,
            chunks=(BlobId(b"\x01" * 32),),
            holes=((0, 4),),
            xattrs=((b"user.x\xfe", b"\x00\xff"),),
            content_hash=b"h" * 32,
            nlink=2,
            inode=7,
            dev=9,
            hash_scheme=HashScheme.EXTENTS,
        ),
        _node(b"a dir", NodeType.DIR, subtree=BlobId(b"\x02" * 32)),
        _node(b"link", NodeType.SYMLINK, link_target=b'../"quoted"\n\x80'),
        _node(b"dev", NodeType.CHARDEV, rdev=259),
    ]
    ordered = sorted(nodes, key=lambda n: n.name)
    reference = json.dumps(
        {"v": 2, "nodes": [_encode_node(n) for n in ordered]},  # the newest format these nodes need
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    assembled = assemble_tree([encode_node(n) for n in ordered])
    assert assembled == reference == encode_tree(Tree(tuple(nodes)))
    assert decode_tree(assembled) == Tree(tuple(ordered))
    assert assemble_tree([]) == encode_tree(Tree(()))
    # Without anything format 2 adds, fragments assemble to a format 1 document.
    plain = [encode_node(n) for n in ordered if n.name in (b"a dir", b"dev")]
    assert assemble_tree(plain).endswith(b',"v":1}') and decode_tree(assemble_tree(plain)).nodes
