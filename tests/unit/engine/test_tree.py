"""The tree encoding: deterministic round trips, and junk always refused cleanly."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.engine.ids import BlobId
from protectctl.engine.tree import Node, NodeType, Tree, decode_tree, encode_tree
from protectctl.errors import CorruptionError

ids = st.binary(min_size=32, max_size=32).map(BlobId)
names = st.text(min_size=1, max_size=20).filter(
    lambda n: "/" not in n and "\x00" not in n and n not in (".", "..")
)
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
    link_target=st.none() | st.text(max_size=30),
    rdev=ints,
    inode=ints,
    dev=ints,
    nlink=ints,
    xattrs=st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=3).map(tuple),
    content_hash=st.none() | st.binary(min_size=32, max_size=32),
)


def unique_sorted(items: list[Node]) -> Tree:
    by_name = {n.name: n for n in items}
    return Tree(tuple(by_name[k] for k in sorted(by_name)))


@settings(max_examples=150)
@given(tree=st.lists(nodes, max_size=6).map(unique_sorted))
def test_round_trip_is_exact_and_deterministic(tree: Tree) -> None:
    data = encode_tree(tree)
    assert decode_tree(data) == tree
    assert encode_tree(decode_tree(data)) == data


def test_undecodable_file_names_survive() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    tree = Tree((Node(name, NodeType.FILE, 0o644, 0, 0, None, None, 0, 0, 0, 0),))
    assert decode_tree(encode_tree(tree)).nodes[0].name == name


def test_encoding_sorts_and_refuses_duplicates() -> None:
    a = Node("a", NodeType.FIFO, 0, 0, 0, None, None, 0, 0, 0, 0)
    b = Node("b", NodeType.FIFO, 0, 0, 0, None, None, 0, 0, 0, 0)
    assert encode_tree(Tree((b, a))) == encode_tree(Tree((a, b)))
    with pytest.raises(ValueError):
        encode_tree(Tree((a, a)))


@settings(max_examples=300)
@given(junk=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_junk_raises_corruption_error_only(junk: bytes) -> None:
    with contextlib.suppress(CorruptionError):
        decode_tree(junk)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"v":1,"nodes":[{"name":"../x","type":"file","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"weird","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"file","mode":true,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0}]}',
        b'{"v":1,"nodes":[{"name":"x","type":"file","mode":0,"uid":0,"gid":0,'
        b'"mtime_ns":0,"atime_ns":0,"ctime_ns":0,"size":0,"chunks":["abcd"]}]}',
        b'{"v":2,"nodes":[]}',
    ],
)
def test_invalid_trees_are_refused(doc: bytes) -> None:
    with pytest.raises(CorruptionError):
        decode_tree(doc)
