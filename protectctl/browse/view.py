"""A point's tree as browsing reads it: trees decoded once, entries found by path, file
content read by byte range fetching only the chunks that cover it.

Reads through a small `BrowseReader` (the repository, or anything with its reading methods),
never writes. Trees are cached by id, bounded by count: the points of one source share most
of their trees (an unchanged directory is the same blob), so walking many points costs the
trees that differ, not points x trees.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Protocol

from protectctl.engine.ids import BlobId
from protectctl.engine.names import name_text, unescape_name
from protectctl.engine.tree import Node, NodeType, Tree
from protectctl.errors import CorruptionError

# Decoded trees kept (a tree is ~0.5 KB of memory per entry; most directories are small).
_TREES_CACHED = 8192


class BrowseReader(Protocol):
    """What browsing reads a repository through."""

    def load_tree(self, blob_id: BlobId) -> Tree: ...

    def load_blob(self, blob_id: BlobId) -> bytes: ...

    def blob_size(self, blob_id: BlobId) -> int: ...


# What `find` reads of an entry: its name as exact text (engine/names.py `name_text`), its type,
# and its subtree's id in hex (None but for a directory).
Brief = tuple[str, str, bytes | None]

# A node's keys are written sorted (name < subtree < type), so after a node's "name" the first
# "subtree" and "type" are its own. Inside a JSON string every '"' is escaped, so these spellings
# can only be structure, never text in a value (engine/tree.py says the same).
_NAME, _SUBTREE, _TYPE = b'"name":"', b'"subtree":"', b'"type":"'
_TREE_END = re.compile(rb'\],"v":[12]\}$')


class PointTrees:
    """Trees of one repository, decoded on first use and kept (LRU, bounded by count)."""

    def __init__(self, reader: BrowseReader, *, cached: int = _TREES_CACHED) -> None:
        self.reader = reader
        self._cached = cached
        self._trees: OrderedDict[BlobId, Tree] = OrderedDict()
        self._index: dict[BlobId, dict[bytes, Node]] = {}
        self._mutex = threading.Lock()

    def tree(self, blob_id: BlobId) -> Tree:
        with self._mutex:
            tree = self._trees.get(blob_id)
            if tree is not None:
                self._trees.move_to_end(blob_id)
                return tree
        tree = self.reader.load_tree(blob_id)
        with self._mutex:
            self._trees[blob_id] = tree
            while len(self._trees) > self._cached:
                old, _ = self._trees.popitem(last=False)
                self._index.pop(old, None)
        return tree

    def children(self, node: Node) -> tuple[Node, ...]:
        if node.type is not NodeType.DIR or node.subtree is None:
            return ()
        return self.tree(node.subtree).nodes

    def child(self, tree_id: BlobId, name: bytes) -> Node | None:
        """The entry `name` of a directory, else the one `name` spells with ``\\xNN`` escapes."""
        tree = self.tree(tree_id)
        with self._mutex:
            by_name = self._index.get(tree_id)
        if by_name is None:
            by_name = {n.name: n for n in tree.nodes}
            with self._mutex:
                if tree_id in self._trees:
                    self._index[tree_id] = by_name
        return by_name.get(name) or by_name.get(unescape_name(name))

    def lookup(self, root: Node, parts: tuple[bytes, ...]) -> Node | None:
        """The node at `parts` below `root` (a DIR node), or None."""
        node = root
        for name in parts:
            if node.type is not NodeType.DIR or node.subtree is None:
                return None
            found = self.child(node.subtree, name)
            if found is None:
                return None
            node = found
        return node

    def walk(self, node: Node, prefix: tuple[bytes, ...] = ()) -> Iterator[tuple[tuple[bytes, ...], Node]]:
        """Every entry below `node`, depth first, parents before children."""
        stack = [(prefix, child) for child in reversed(self.children(node))]
        while stack:
            parts, child = stack.pop()
            path = parts + (child.name,)
            yield path, child
            if child.type is NodeType.DIR:
                stack.extend((path, grandchild) for grandchild in reversed(self.children(child)))

    def briefs(self, tree_id: BlobId) -> list[Brief]:
        """A tree's entries, name, type and subtree only: what a search over many points reads,
        cut out of the canonical JSON without decoding whole nodes (tests/bench/bench_browse.py).
        A tree with an escaped or base64 name, or of an unknown shape, takes the full decoder."""
        raw = self.reader.load_blob(tree_id)
        if raw.startswith(b'{"nodes":[') and _TREE_END.search(raw, len(raw) - 16) and b'"name":{' not in raw:
            out: list[Brief] = []
            for piece in raw.split(_NAME)[1:]:
                end = piece.find(b'"')
                kind_at = piece.find(_TYPE, end) + len(_TYPE)
                if end < 0 or b"\\" in piece[:end] or kind_at < len(_TYPE):
                    break
                sub_at = piece.find(_SUBTREE, end, kind_at)
                out.append(
                    (
                        piece[:end].decode("ascii"),
                        piece[kind_at : piece.find(b'"', kind_at)].decode("ascii"),
                        piece[sub_at + len(_SUBTREE) : sub_at + len(_SUBTREE) + 64] if sub_at >= 0 else None,
                    )
                )
            else:
                return out
        return [
            (name_text(n.name), n.type.value, n.subtree.hex().encode() if n.subtree is not None else None)
            for n in self.tree(tree_id).nodes
        ]


def root_node(tree: BlobId, meta: Mapping[str, object] | None) -> Node:
    """A DIR node standing for a point's root (its metadata from the point, when recorded)."""

    def number(key: str, default: int) -> int:
        value = (meta or {}).get(key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    return Node(
        b"",
        NodeType.DIR,
        number("mode", 0o755),
        number("uid", 0),
        number("gid", 0),
        None,
        None,
        number("mtime_ns", 0),
        number("atime_ns", 0),
        number("mtime_ns", 0),
        0,
        subtree=tree,
    )


class FileContent:
    """Random access to one stored file: which chunks cover a byte range, and their bytes.

    Chunk sizes come from the index (`blob_size`), so a read at an offset fetches only the
    chunks it needs. Holes read as zeros.
    """

    def __init__(self, reader: BrowseReader, node: Node) -> None:
        self.node = node
        self._reader = reader
        # data extents: (file offset, length) of the bytes the chunks hold, in order
        extents: list[tuple[int, int]] = []
        pos = 0
        for start, length in sorted(node.holes):
            if start > pos:
                extents.append((pos, start - pos))
            pos = start + length
        if pos < node.size:
            extents.append((pos, node.size - pos))
        self._extents = extents
        self._chunk_starts: list[int] | None = None  # data offsets (holes excluded) of the chunks known
        self._next_start = 0  # where the chunk after the last known one starts
        self._mutex = threading.Lock()

    def _starts(self, data_offset: int | None = None) -> list[int]:
        """Data offsets of the chunks, known at least up to the chunk holding `data_offset` (all of
        them when None): sizes are asked of the index as a reader gets there, so opening a 1 GiB
        file and reading its first bytes looks up one chunk, not ~1,400."""
        with self._mutex:  # the mount reads one file from several threads (the kernel's readahead)
            starts = self._chunk_starts
            if starts is None:
                starts = self._chunk_starts = []
                self._next_start = 0
            chunks = self.node.chunks
            while len(starts) < len(chunks) and (data_offset is None or self._next_start <= data_offset):
                size = self._reader.blob_size(chunks[len(starts)])
                starts.append(self._next_start)
                self._next_start += size
            return starts

    def _data_offset(self, offset: int) -> int | None:
        """The offset among the data bytes (holes excluded) of file offset `offset`; None in a hole."""
        before = 0
        for start, length in self._extents:
            if offset < start:
                return None
            if offset < start + length:
                return before + offset - start
            before += length
        return None

    def chunk_after(self, offset: int) -> BlobId | None:
        """The chunk after the one holding file offset `offset` (what a sequential reader wants next)."""
        data_offset = self._data_offset(offset)
        if data_offset is None:
            return None
        index = bisect.bisect_right(self._starts(data_offset), data_offset)
        return self.node.chunks[index] if index < len(self.node.chunks) else None

    def read(self, offset: int, size: int, load: LoadBlob | None = None) -> bytes:
        """Up to `size` bytes from `offset` (fewer at the end of the file)."""
        end = min(self.node.size, offset + size)
        if offset >= end:
            return b""
        load = load or self._reader.load_blob
        if len(self._extents) == 1 and self._extents[0] == (0, self.node.size):
            return self._data(offset, end - offset, load)  # no holes: file offsets are data offsets
        out = bytearray()
        data_before = 0  # data bytes in extents before the current one
        for start, length in self._extents:
            if start + length <= offset:
                data_before += length
                continue
            if start >= end:
                break
            lo, hi = max(offset, start), min(end, start + length)
            if lo > offset + len(out):
                out += bytes(lo - offset - len(out))  # a hole before this extent
            out += self._data(data_before + lo - start, hi - lo, load)
            data_before += length
        if len(out) < end - offset:
            out += bytes(end - offset - len(out))  # a hole at the end
        return bytes(out)

    def _data(self, data_offset: int, size: int, load: LoadBlob) -> bytes:
        """`size` bytes of the concatenated chunks from `data_offset`."""
        starts = self._starts(data_offset + size)
        index = bisect.bisect_right(starts, data_offset) - 1
        out = bytearray()
        while size > 0 and 0 <= index < len(starts):
            blob = load(self.node.chunks[index])
            skip = data_offset - starts[index]
            if not out and skip + size <= len(blob):  # within one chunk, the common case: one copy
                return blob[skip : skip + size]
            piece = blob[skip : skip + size]
            if not piece:
                break
            out += piece
            size -= len(piece)
            data_offset += len(piece)
            index += 1
        if size > 0:
            raise CorruptionError(
                f"stored content of '{self.node.name.decode(errors='replace')}' is shorter than its size"
            )
        return bytes(out)

    def chunks_in_order(self, load: LoadBlob | None = None) -> Iterator[bytes]:
        """The whole content in pieces, holes as zeros: what `cat` writes, one chunk in memory."""
        load = load or self._reader.load_blob
        blobs = iter(self.node.chunks)
        pending = b""
        pos = 0
        for start, length in self._extents:
            while pos < start:  # a hole
                step = min(start - pos, 1 << 20)
                yield bytes(step)
                pos += step
            need = length
            while need:
                if not pending:
                    blob_id = next(blobs, None)
                    if blob_id is None:
                        raise CorruptionError("stored content is shorter than the file")
                    pending = load(blob_id)
                    continue
                take = min(need, len(pending))
                yield pending[:take]
                pending, need, pos = pending[take:], need - take, pos + take
        while pos < self.node.size:
            step = min(self.node.size - pos, 1 << 20)
            yield bytes(step)
            pos += step


class LoadBlob(Protocol):
    def __call__(self, blob_id: BlobId, /) -> bytes: ...
