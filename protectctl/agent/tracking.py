"""Block-level change tracking of big files, and reading big files from reflink clones.

`archive_captured` is `archive` (agent/archive.py) inside a capture (agent/snapshots.py): the
walk reads the snapshot when there is one, and big files (>= the member's
`changeTrackingMinSize`, 64 MiB by default) go through `BigFiles`:

- Each is reflink-cloned (FICLONE) into the run's work directory first and read from the
  clone: the file is stored as it was at one instant even while it is being written.
- With tracking (`changeTracking: auto`, on a filesystem that clones), the file is stored in
  fixed blocks (`changeTrackingBlockSize`, 16 KiB by default), one chunk each, with a BLOCKS
  hash (engine/tree.py). The clone of the last sync is kept as the file's *reference*; the next
  sync clones the file again and compares the two extent maps (FIEMAP, agent/extents.py):
  blocks whose extents are still shared are unchanged and keep their chunk from the journal
  entry, only the rest is read. The new clone becomes the reference only after the point is
  saved and the journal committed; a reference is used only when the manifest says it holds
  exactly the content the journal entry describes (the same BLOCKS hash), so a crash anywhere
  between the two never lets a change go unseen: the file is then read whole.
- A `full` reads every block and compares each block the extents called unchanged with the
  chunk it would have reused; a difference is a tracking mismatch, counted and named in the
  point (and the file is stored as read).

A file that cannot be tracked (no reflink here, a clone or FIEMAP refused, the reference out
of step) is read whole, and the point counts why (`tracking_fallbacks`). References live in
`.protectctl-reference-<tag>` at the root of the mount holding the source, with a manifest
(JSON: per file its path, content hash, size and block size); a reference whose file is gone
is deleted at the next commit, and all of them when tracking is turned off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import operator
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3

from protectctl import crashpoint
from protectctl.agent.archiver import Archiver, Content
from protectctl.agent.extents import Extent, blocks_of, changed_ranges, clone, extent_map
from protectctl.agent.journal import JournalEntry
from protectctl.agent.snapshots import (
    INTERNAL_EXCLUDES,
    REFERENCE_PREFIX,
    Capture,
    capture,
    private_dir,
    source_tag,
)
from protectctl.engine.ids import BlobId
from protectctl.engine.names import show_name
from protectctl.engine.repository import BlobKind
from protectctl.engine.tree import HashScheme, blocks_hash
from protectctl.fsutil import atomic_write
from protectctl.provider import Archived, ArchiveOptions, SnapshotRequest

DEFAULT_MIN_SIZE = 64 << 20
DEFAULT_BLOCK_SIZE = 16 << 10
_SECOND = operator.itemgetter(1)  # the chunk id of a (length, id) pair
_READ_SPAN = 4 << 20  # changed blocks next to each other are read with one call up to this much
_MANIFEST = "manifest.json"
_NAMED = 20  # mismatching files named in the point; all are counted


def archive_captured(request: SnapshotRequest, options: ArchiveOptions, *, journal: str) -> Archived:
    """`archive` through a snapshot and with big files tracked (see the module docstring)."""
    from protectctl.agent.archive import archive as run

    tracking_wanted = options.change_tracking == "auto"
    live_root = Path(options.root)
    cut = None
    if options.change_journal == "watch":  # before the snapshot: a change after it is replayed next time
        from protectctl.agent.changes import take_cut

        cut = take_cut(request.state_dir, request.source)
    with capture(
        live_root, request.source, options.snapshot, frozen=request.frozen, want_clones=tracking_wanted
    ) as cap:
        ref_dir = cap.mount.point / (REFERENCE_PREFIX + source_tag(request.source + "\0" + request.sink.repository_id))
        notes: list[str] = []
        if not tracking_wanted and private_dir(ref_dir):
            shutil.rmtree(ref_dir, ignore_errors=True)
            notes.append(f"change tracking is off: deleted its reference copies in {ref_dir}")
        tracking = tracking_wanted and cap.reflink
        if tracking and os.path.lexists(ref_dir) and not private_dir(ref_dir):
            # Someone else's (or a symlink): never written into nor trusted.
            notes.append(f"{ref_dir} is not a private directory of this agent: change tracking is off")
            tracking = False
        big = None
        if tracking or cap.mode == "reflink":
            big = BigFiles(
                cap,
                live_root,
                ref_dir,
                tracking=tracking,
                verify=options.verify_all,
                min_size=options.tracking_min_size or DEFAULT_MIN_SIZE,
                block_size=options.tracking_block_size or DEFAULT_BLOCK_SIZE,
            )
        inner = replace(
            options,
            root=cap.root,
            exclude=(*options.exclude, *INTERNAL_EXCLUDES),
            snapshot="none",
            change_tracking="off",
        )
        try:
            live: list[str] = []
            result = run(
                request,
                inner,
                journal=journal,
                snapshot=cap.view,
                started_ns=cap.started_ns,
                big_files=big,
                live_subvolumes=live,
                cut=cut,
                live_root=live_root,
            )
            if big is not None:
                big.stash()
        except BaseException:
            if big is not None:
                big.abort()
            raise
    facts = cap.facts()
    if live:
        facts["snapshot_live_subvolumes"] = live[:20]
        facts["snapshot_note"] = f"{facts['snapshot_note']}; {len(live)} nested subvolume(s) read live"
    if big is not None and tracking:
        facts.update(big.facts())
    else:
        facts["tracking"] = "off"
        if not tracking_wanted:
            facts["tracking_note"] = "turned off (changeTracking: off)"
        elif cap.reflink:
            facts["tracking_note"] = "the reference directory is not private to this agent: big files are read whole"
        else:
            facts["tracking_note"] = f"{cap.mount.fstype}: no reflink clones, big files are read whole"
    if notes:
        facts["tracking_cleanup"] = notes
    inner_finish = result.finish

    def finish(point_id: str | None) -> None:
        try:
            inner_finish(point_id)
        except BaseException:
            if big is not None:
                big.abort()
            raise
        if big is not None:
            if point_id is None:
                big.abort()
            else:
                big.commit()

    return replace(result, finish=finish, capture={**result.capture, **facts})


@dataclass(slots=True)
class TrackingStats:
    files_tracked: int = 0  # big files stored in blocks, compared with their reference
    files_whole: int = 0  # big files read whole (first time, or a fallback)
    files_cloned: int = 0  # big files read from a clone without tracking
    blocks_read: int = 0
    blocks_reused: int = 0
    bytes_changed: int = 0  # bytes in ranges the extent maps call changed
    seconds: float = 0.0  # spent cloning and comparing extent maps
    fallbacks: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    mismatched: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Pending:
    key: str
    rel: bytes
    content_hash: bytes
    size: int


class BigFiles:
    """The archiver's `BigFileReader` for one run."""

    def __init__(
        self,
        cap: Capture,
        live_root: Path,
        ref_dir: Path,
        *,
        tracking: bool,
        verify: bool,
        min_size: int,
        block_size: int,
    ) -> None:
        self.cap = cap
        self.live_root = live_root
        self.ref_dir = ref_dir
        self.tracking = tracking
        self.verify = verify
        self.min_size = min_size
        self.block_size = block_size
        self.stats = TrackingStats()
        self._pending: list[_Pending] = []
        self._stashed = False
        self._manifest: dict[str, dict[str, object]] = {}
        if tracking:
            self._manifest = _load_manifest(ref_dir / _MANIFEST)
            for stale in _glob(ref_dir, ".new"):  # a killed run's clones, never committed
                with contextlib.suppress(OSError):
                    stale.unlink()
        self._loaded = {key: dict(entry) for key, entry in self._manifest.items()}  # as read

    # -- the archiver's side --------------------------------------------------------------

    def read(
        self,
        archiver: Archiver,
        fd: int,
        st: os.stat_result,
        rel: bytes,
        previous: JournalEntry | None,
        *,
        present: bool = False,
    ) -> Content | None:
        work = self.cap.work_dir
        if work is None or not self.cap.reflink:
            return None
        key = blake3.blake3(rel).hexdigest()[:32]
        path = work / key
        started = time.monotonic()
        cfd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                clone(fd, cfd)
            except OSError as err:
                self._fallback(f"reflink clone refused: {err.strerror}")
                path.unlink()
                return None
            self.stats.seconds += time.monotonic() - started
            if not self.tracking:
                self.stats.files_cloned += 1
                content = archiver._read_content(cfd, st)
                path.unlink()
                return content
            content = self._blocks(archiver, cfd, key, rel, previous, present=present)
            self._pending.append(_Pending(key, rel, content.content_hash, content.size))
            return content
        finally:
            os.close(cfd)

    def _blocks(
        self, archiver: Archiver, cfd: int, key: str, rel: bytes, previous: JournalEntry | None, *, present: bool
    ) -> Content:
        started = time.monotonic()
        block = self.block_size
        size = os.fstat(cfd).st_size
        try:
            current: list[Extent] | None = extent_map(cfd)
        except OSError as err:
            current = None
            self._fallback(f"FIEMAP refused: {err.strerror}")
        reused = self._reusable(archiver, key, previous, present=present) if current is not None else None
        changed: set[int] | None = None
        if reused is not None and current is not None:
            try:
                reference = extent_map_of(self.ref_dir / key)
            except OSError as err:
                self._fallback(f"reference unreadable: {err.strerror}")
                reused = None
            else:
                ranges = changed_ranges(current, reference, size)
                self.stats.bytes_changed += sum(length for _, length in ranges)
                changed = set(blocks_of(ranges, block))
        self.stats.seconds += time.monotonic() - started
        if reused is None or changed is None:
            self.stats.files_whole += 1
            reused, changed = [], None
        else:
            self.stats.files_tracked += 1
        hole_blocks = _hole_blocks(current, size, block) if current is not None else set()
        if changed is not None and not self.verify:
            return self._changed_only(archiver, cfd, size, reused, changed, hole_blocks)
        chunks: list[BlobId] = []
        pieces: list[tuple[int, bytes]] = []
        holes: list[tuple[int, int]] = []
        buf = bytearray(_READ_SPAN)
        count = -(-size // block)
        index = 0
        while index < count:
            start = index * block
            length = min(block, size - start)
            if index in hole_blocks:
                if holes and holes[-1][0] + holes[-1][1] == start:
                    holes[-1] = (holes[-1][0], holes[-1][1] + length)
                else:
                    holes.append((start, length))
                index += 1
                continue
            old = reused[index] if index < len(reused) else None
            keep = changed is not None and index not in changed and old is not None and old[0] == length
            if keep and not self.verify:
                assert old is not None
                chunks.append(BlobId(old[1]))
                pieces.append((length, old[1]))
                self.stats.blocks_reused += 1
                index += 1
                continue
            # Read this block and the next ones that must be read too, in one call.
            end = index + 1
            while (
                end < count
                and end - index < _READ_SPAN // block
                and end not in hole_blocks
                and (self.verify or changed is None or end in changed or end >= len(reused) or reused[end] is None)
            ):
                end += 1
            span = min(end * block, size) - start
            view = memoryview(buf)[:span]
            got = _pread_full(cfd, view, start)
            if got < span:  # the clone cannot shrink: only a damaged filesystem gets here
                raise OSError(5, "short read from a reflink clone")
            archiver.result.bytes_read += span
            for i in range(index, end):
                piece = view[(i - index) * block : min((i - index + 1) * block, span)]
                blob, _ = archiver.writer.add(BlobKind.DATA, piece)
                chunks.append(blob)
                pieces.append((len(piece), bytes(blob)))
                self.stats.blocks_read += 1
                before = reused[i] if i < len(reused) else None
                if (
                    self.verify
                    and changed is not None
                    and i not in changed
                    and before is not None
                    and before[0] == len(piece)
                    and before[1] != bytes(blob)
                ):
                    self._mismatch(rel)
            index = end
        digest = blocks_hash(archiver.repo.content_hasher(), size, holes, pieces)
        return Content(size, tuple(chunks), tuple(holes), digest, HashScheme.BLOCKS)

    def _changed_only(
        self,
        archiver: Archiver,
        cfd: int,
        size: int,
        reused: Sequence[tuple[int, bytes] | None],
        changed: set[int],
        hole_blocks: set[int],
    ) -> Content:
        """The content of a tracked file when only `changed` blocks (and those the previous
        content cannot supply: it had a hole there, it was shorter, its last block was shorter)
        are read. Unchanged runs are taken from `reused` a run at a time: the work follows the
        changed blocks, not the 10^5 blocks of a big file."""
        block = self.block_size
        count = -(-size // block)
        last_len = size - (count - 1) * block
        must = set(changed)
        must.update(range(min(len(reused), count), count))  # the file grew
        if None in reused:  # a hole then (a scan at C speed first: most files have none)
            must.update([i for i, old in enumerate(reused[:count]) if old is None])
        for i in {len(reused) - 1, count - 1}:  # the only blocks whose length may differ
            old = reused[i] if 0 <= i < min(len(reused), count) else None
            if old is not None and old[0] != (block if i < count - 1 else last_len):
                must.add(i)
        must.difference_update(hole_blocks)
        spans = _spans(sorted(must), _READ_SPAN // block)
        _prefetch(cfd, spans, block, size)
        chunks: list[BlobId] = []
        pieces: list[tuple[int, bytes]] = []
        holes: list[tuple[int, int]] = []
        buf = bytearray(_READ_SPAN)
        stats = self.stats
        pos = 0  # blocks before this are done

        def keep(upto: int) -> None:
            """Blocks pos..upto (none of them read, none a hole) keep their previous chunks."""
            nonlocal pos
            if upto > pos:
                run = reused[pos:upto]
                pieces.extend(run)  # type: ignore[arg-type]  # no hole among them: checked above
                chunks.extend(map(_SECOND, run))  # type: ignore[arg-type]
                stats.blocks_reused += upto - pos
                pos = upto

        done = 0  # spans read so far
        for index in sorted(hole_blocks):
            # Holes, in order, with the reads and kept runs before each (a span holds no hole).
            while done < len(spans) and spans[done][0] < index:
                first, end = spans[done]
                done += 1
                keep(first)
                self._read_span(archiver, cfd, buf, first, end, size, chunks, pieces)
                pos = end
            keep(index)
            start = index * block
            length = min(block, size - start)
            if holes and holes[-1][0] + holes[-1][1] == start:
                holes[-1] = (holes[-1][0], holes[-1][1] + length)
            else:
                holes.append((start, length))
            pos = index + 1
        for first, end in spans[done:]:
            keep(first)
            self._read_span(archiver, cfd, buf, first, end, size, chunks, pieces)
            pos = end
        keep(count)
        digest = blocks_hash(archiver.repo.content_hasher(), size, holes, pieces)
        return Content(size, tuple(chunks), tuple(holes), digest, HashScheme.BLOCKS)

    def _read_span(
        self,
        archiver: Archiver,
        cfd: int,
        buf: bytearray,
        first: int,
        end: int,
        size: int,
        chunks: list[BlobId],
        pieces: list[tuple[int, bytes]],
    ) -> None:
        """Read blocks first..end with one call and store each as a chunk."""
        block = self.block_size
        start = first * block
        span = min(end * block, size) - start
        view = memoryview(buf)[:span]
        if _pread_full(cfd, view, start) < span:  # the clone cannot shrink: only a damaged filesystem
            raise OSError(5, "short read from a reflink clone")
        archiver.result.bytes_read += span
        add = archiver.writer.add
        for offset in range(0, span, block):
            piece = view[offset : offset + block]
            blob, _ = add(BlobKind.DATA, piece)
            chunks.append(blob)
            pieces.append((len(piece), bytes(blob)))
        self.stats.blocks_read += end - first

    def _reusable(
        self, archiver: Archiver, key: str, previous: JournalEntry | None, *, present: bool = False
    ) -> list[tuple[int, bytes] | None] | None:
        """Per block of the previous point's content: (length, chunk id), None for a hole; None
        when the reference cannot vouch for that content (the file is then read whole).
        `present`: the archiver found every chunk of `previous` in the repository in this run."""
        entry = self._manifest.get(key)
        if previous is None or entry is None:
            self._fallback("no reference copy yet (first tracked sync of the file)")
            return None
        if previous.hash_scheme is not HashScheme.BLOCKS or entry.get("hash") != previous.content_hash.hex():
            self._fallback("the reference copy is out of step with the journal")
            return None
        if entry.get("block") != self.block_size:
            self._fallback("the block size changed")
            return None
        if not (present or archiver.repo.has_blobs(previous.chunks)):
            self._fallback("chunks of the last point are gone from the repository")
            return None
        size = entry.get("size")
        if not isinstance(size, int):
            self._fallback("the reference manifest is damaged")
            return None
        blocks = _previous_blocks(size, previous, self.block_size)
        if blocks is None:
            self._fallback("the journal entry does not match its block layout")
        return blocks

    def _fallback(self, reason: str) -> None:
        self.stats.fallbacks[reason] = self.stats.fallbacks.get(reason, 0) + 1

    def _mismatch(self, rel: bytes) -> None:
        self.stats.mismatches += 1
        if len(self.stats.mismatched) < _NAMED and show_name(rel) not in self.stats.mismatched:
            self.stats.mismatched.append(show_name(rel))

    # -- after the walk ---------------------------------------------------------------------

    def stash(self) -> None:
        """Move this run's clones out of the work directory (deleted with the capture) beside the
        references, as `.new` until `commit`."""
        if not self._pending:
            return
        work = self.cap.work_dir
        assert work is not None
        self.ref_dir.mkdir(mode=0o700, exist_ok=True)
        if not private_dir(self.ref_dir):
            raise PermissionError(errno.EPERM, f"{self.ref_dir} is not a private directory of this agent")
        for pending in self._pending:
            os.replace(work / pending.key, self.ref_dir / (pending.key + ".new"))
        self._stashed = True
        crashpoint.reached("tracking.stashed")  # the point is not saved yet

    def commit(self) -> None:
        """The point is saved and the journal committed: the clones become the references."""
        if not self.tracking:
            return
        crashpoint.reached("tracking.commit")  # the point is saved and the journal committed
        for pending in self._pending:
            os.replace(self.ref_dir / (pending.key + ".new"), self.ref_dir / pending.key)
            self._manifest[pending.key] = {
                "rel": pending.rel.hex(),
                "hash": pending.content_hash.hex(),
                "size": pending.size,
                "block": self.block_size,
            }
        self._forget_gone({p.key for p in self._pending})
        unchanged = self._manifest == self._loaded and (self.ref_dir / _MANIFEST).exists()
        if not unchanged and (self._pending or self.ref_dir.exists()):  # a sync that changed nothing writes nothing
            self.ref_dir.mkdir(mode=0o700, exist_ok=True)
            _save_manifest(self.ref_dir / _MANIFEST, self._manifest)
        self._pending = []

    def abort(self) -> None:
        for pending in self._pending:
            for path in (
                self.ref_dir / (pending.key + ".new"),
                *(() if self.cap.work_dir is None else (self.cap.work_dir / pending.key,)),
            ):
                with contextlib.suppress(OSError):
                    path.unlink()
        self._pending = []

    def _forget_gone(self, kept: set[str]) -> None:
        """References whose file is gone (or no longer big) cost space for nothing: delete them."""
        for key, entry in list(self._manifest.items()):
            if key in kept:
                continue
            try:
                st = os.lstat(os.path.join(os.fsencode(self.live_root), bytes.fromhex(str(entry.get("rel", "")))))
                gone = not (st.st_mode & 0o170000 == 0o100000 and st.st_size >= self.min_size)
            except (OSError, ValueError):
                gone = True
            if gone:
                del self._manifest[key]
                with contextlib.suppress(OSError):
                    (self.ref_dir / key).unlink()

    def facts(self) -> dict[str, object]:
        s = self.stats
        out: dict[str, object] = {
            "tracking": "blocks",
            "tracking_note": f"files of {self.min_size >> 20} MiB or more: extent maps compared with "
            f"a reflink reference, {self.block_size >> 10} KiB blocks",
            "tracking_block_size": self.block_size,
            "tracked_files": s.files_tracked,
            "tracked_whole": s.files_whole,
            "blocks_read": s.blocks_read,
            "blocks_reused": s.blocks_reused,
            "bytes_changed": s.bytes_changed,
            "tracking_seconds": round(s.seconds, 4),
        }
        if s.fallbacks:
            out["tracking_fallbacks"] = dict(s.fallbacks)
        if self.verify:
            out["tracking_mismatches"] = s.mismatches
            if s.mismatched:
                out["tracking_mismatched"] = list(s.mismatched)
        return out


def extent_map_of(path: Path) -> list[Extent]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return extent_map(fd)
    finally:
        os.close(fd)


def _previous_blocks(size: int, previous: JournalEntry, block: int) -> list[tuple[int, bytes] | None] | None:
    """(length, chunk id) per block of the previous content (None: a hole), or None when its
    chunks and holes do not fit that layout."""
    count = -(-size // block)
    if not previous.holes:  # the common case, without a loop per block in Python
        if len(previous.chunks) != count:
            return None
        lengths = [block] * count
        lengths[-1] = size - (count - 1) * block
        return list(zip(lengths, previous.chunks, strict=True))
    out: list[tuple[int, bytes] | None] = []
    chunks = iter(previous.chunks)
    holes = previous.holes
    h = 0
    for index in range(-(-size // block)):
        start = index * block
        length = min(block, size - start)
        while h < len(holes) and holes[h][0] + holes[h][1] <= start:
            h += 1
        if h < len(holes) and holes[h][0] <= start:
            if holes[h][0] + holes[h][1] < start + length:
                return None  # a hole ending inside a block: not a block layout
            out.append(None)
            continue
        chunk = next(chunks, None)
        if chunk is None:
            return None
        out.append((length, chunk))
    if next(chunks, None) is not None:
        return None
    return out


def _spans(blocks: Sequence[int], most: int) -> list[tuple[int, int]]:
    """Sorted block indexes as (first, end) runs of consecutive blocks, at most `most` long."""
    out: list[tuple[int, int]] = []
    for index in blocks:
        if out and out[-1][1] == index and index - out[-1][0] < most:
            out[-1] = (out[-1][0], index + 1)
        else:
            out.append((index, index + 1))
    return out


def _prefetch(fd: int, spans: Sequence[tuple[int, int]], block: int, size: int) -> None:
    """Ask the kernel to start reading every changed span now: scattered reads then overlap
    instead of waiting one by one (a clone shares no page cache with its file)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    with contextlib.suppress(OSError):
        for first, end in spans:
            start = first * block
            if start < size:
                advise(fd, start, min(end * block, size) - start, os.POSIX_FADV_WILLNEED)


def _hole_blocks(extents: Sequence[Extent], size: int, block: int) -> set[int]:
    """Blocks no extent touches (holes: read as zeros, stored as holes), from the gaps between
    extents (sorted, as FIEMAP gives them): no work per data block."""
    holes: set[int] = set()
    pos = 0  # everything before this offset is covered by an extent or already counted
    for extent in (*extents, None):
        gap_end = size if extent is None else min(extent.logical, size)
        if gap_end > pos:
            first = -(-pos // block)  # the first block starting at or after the gap's start
            last = gap_end // block if gap_end < size else -(-size // block)  # blocks ending inside
            holes.update(range(first, last))
        if extent is None or extent.logical >= size:
            break
        pos = max(pos, extent.end)
    return holes


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _glob(directory: Path, suffix: str) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.endswith(suffix):
                yield Path(entry.path)


def _load_manifest(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {}
    return {str(k): v for k, v in data["files"].items() if isinstance(v, dict)}


def _save_manifest(path: Path, files: dict[str, dict[str, object]]) -> None:
    atomic_write(path, json.dumps({"format": 1, "files": files}, sort_keys=True).encode())
