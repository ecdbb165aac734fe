"""The tree encoding: deterministic round trips, and junk always refused cleanly."""

from __future__ import annotations

import contextlib
import json

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import (
    HashScheme,
    Node,
    NodeType,
    Tree,
    decode_tree,
    encode_tree,
    extents_hash,
    tree_refs,
)
from protectctl.errors import CorruptionError

ids = st.binary(min_size=32, max_size=32).map(BlobId)
# Any bytes: whether a name is safe to create is the restore's call, not the format's.
names = st.binary(min_size=1, max_size=20) | st.text(min_size=1, max_size=20).map(str.encode)
ints = st.integers(min_value=0, max_value=2**63)

nodes = st.builds(
    Node,
    name=names,
    type=st.sampled_from(NodeType),
    mode=ints,
    uid=ints,
    gid=ints,
    user=st.none() | st.text(max_size=10),
    group=st.none() | st.text(max_size=10),
    mtime_ns=st.integers(-(2**62), 2**62),
    atime_ns=ints,
    ctime_ns=ints,
    size=ints,
    chunks=st.lists(ids, max_size=4).map(tuple),
    holes=st.lists(st.tuples(ints, ints), max_size=3).map(tuple),
    subtree=st.none() | ids,
    link_target=st.none() | st.binary(max_size=30),
    rdev=ints,
    inode=ints,
    dev=ints,
    nlink=ints,
    xattrs=st.lists(st.tuples(names, st.binary(max_size=20)), max_size=3).map(tuple),
    content_hash=st.none() | st.binary(min_size=32, max_size=32),
    hash_scheme=st.sampled_from(HashScheme),
)


def unique_sorted(items: list[Node]) -> Tree:
    by_name = {n.name: n for n in items}
    return Tree(tuple(by_name[k] for k in sorted(by_name)))


@settings(max_examples=150, derandomize=True)
@given(tree=st.lists(nodes, max_size=6).map(unique_sorted))
def test_round_trip_is_exact_and_deterministic(tree: Tree) -> None:
    data = encode_tree(tree)
    assert decode_tree(data) == tree
    assert encode_tree(decode_tree(data)) == data
    refs = tree_refs(data)  # gc's reading: the same references, in node order
    assert refs.chunks == [c for n in tree.nodes for c in n.chunks]
    assert refs.subtrees == [n.subtree for n in tree.nodes if n.subtree is not None]
    assert refs.nodes == len(tree.nodes)


def _fifo(name: bytes) -> Node:
    return Node(name, NodeType.FIFO, 0, 0, 0, None, None, 0, 0, 0, 0)


def _v1_doc(*names: str) -> bytes:
    head = '{"atime_ns":0,"ctime_ns":0,"gid":0,"mode":0,"mtime_ns":0,"name":'
    nodes = ",".join(head + json.dumps(n) + ',"size":0,"type":"fifo","uid":0}' for n in names)
    return ('{"nodes":[' + nodes + '],"v":1}').encode()


def test_utf8_trees_are_written_exactly_as_format_1_was() -> None:
    # Byte for byte what earlier releases wrote: unchanged directories still dedup, and
    # those releases still read the trees.
    tree = Tree((_fifo("caf\u00e9 \u2603".encode()), _fifo(b"a")))
    assert encode_tree(tree) == _v1_doc("a", "caf\u00e9 \u2603")


def test_names_that_are_not_utf8_are_stored_as_bytes_in_format_2() -> None:
    link = Node(
        b"l\xff",
        NodeType.SYMLINK,
        0,
        0,
        0,
        None,
        None,
        0,
        0,
        0,
        0,
        link_target=b"t\xfe/\x80",
        xattrs=((b"user.\xfa", b"v\xff"),),
    )
    tree = Tree((_fifo(b"caf\xe9"), _fifo(b"caf\xc3\xa9"), link))
    data = encode_tree(tree)
    assert data.endswith(b',"v":2}') and b'{"b64":"Y2Fm6Q=="}' in data
    assert b"\\ud" not in data  # no lone surrogates: valid JSON for any reader
    decoded = decode_tree(data)
    assert decoded == Tree(tuple(sorted(tree.nodes, key=lambda n: n.name)))
    assert [n.name for n in decoded.nodes] == [b"caf\xc3\xa9", b"caf\xe9", b"l\xff"]  # byte order


def test_format_1_surrogate_escapes_read_as_the_bytes_they_stood_for() -> None:
    # Earlier releases stored os.fsdecode names; those points restore the same bytes.
    decoded = decode_tree(_v1_doc("caf\udce9", "z"))
    assert [n.name for n in decoded.nodes] == [b"caf\xe9", b"z"]
    assert all(n.damage is None for n in decoded.nodes)


def test_a_name_no_bytes_can_spell_damages_that_node_only() -> None:
    decoded = decode_tree(_v1_doc("a", "\ud800", "\udfff x"))
    damaged = [n for n in decoded.nodes if n.damage is not None]
    assert len(decoded.nodes) == 3 and len(damaged) == 2
    assert decoded.nodes[0].name == b"a" and decoded.nodes[0].damage is None
    with pytest.raises(ValueError):
        encode_tree(decoded)  # never written back as if it were sound


def test_unsafe_names_are_decoded_for_restore_to_refuse_one_by_one() -> None:
    decoded = decode_tree(_v1_doc("..", "a/b", "x\u0000y"))
    assert sorted(n.name for n in decoded.nodes) == [b"..", b"a/b", b"x\x00y"]


def test_encoding_sorts_and_refuses_duplicates() -> None:
    a, b = _fifo(b"a"), _fifo(b"b")
    assert encode_tree(Tree((b, a))) == encode_tree(Tree((a, b)))
    with pytest.raises(ValueError):
        encode_tree(Tree((a, a)))


def test_extents_hash_covers_size_holes_and_data() -> None:
    def h(size: int, holes: tuple[tuple[int, int], ...], data: bytes) -> bytes:
        return extents_hash(blake3.blake3(key=b"k" * 32), size, holes, data)

    base = h(1 << 50, ((0, 1 << 50),), b"d" * 32)
    assert base == h(1 << 50, ((0, 1 << 50),), b"d" * 32)
    assert (
        len(
            {
                base,
                h(1 << 49, ((0, 1 << 49),), b"d" * 32),
                h(1 << 50, ((1, (1 << 50) - 1),), b"d" * 32),
                h(1 << 50, ((0, 1 << 50),), b"e" * 32),
            }
        )
        == 4
    )


@settings(max_examples=300, derandomize=True)
@given(junk=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_junk_raises_corruption_error_only(junk: bytes) -> None:
    with contextlib.suppress(CorruptionError):
        decode_tree(junk)
    with contextlib.suppress(CorruptionError):
        tree_refs(junk)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"v":1,"nodes":[{"name":"x","chunks":["abcd"]}]}',
        b'{"v":1,"nodes":[{"name":"x","chunks":"' + b"ab" * 32 + b'"}]}',
        b'{"v":1,"nodes":[{"name":"x","subtree":"zz"}]}',
        b'{"v":1,"nodes":[{"name":"x","subtree":7}]}',
        b'{"v":1,"nodes":[7]}',
        b'{"v":1,"nodes":{}}',
        b'{"v":4,"nodes":[]}',
    ],
)
def test_gc_reading_refuses_what_decoding_refuses_in_the_references(doc: bytes) -> None:
    with pytest.raises(CorruptionError):
        tree_refs(doc)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"v":1,"nodes":[{"name":{"b64":"!!"},"type":"file","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":2,"nodes":[{"name":"b","type":"fifo","mode":0,"uid":0,"gid":0,"mtime_ns":0,"atime_ns":0,'
        b'"ctime_ns":0,"size":0},{"name":{"b64":"YQ=="},"type":"fifo","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"file","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0,"hash_scheme":"odd"}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"weird","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"file","mode":true,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"file","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0,"chunks":["abcd"]}]}',
        b'{"v":4,"nodes":[]}',
    ],
)
def test_invalid_trees_are_refused(doc: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode_tree(doc)
