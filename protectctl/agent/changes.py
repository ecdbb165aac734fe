"""A sync's use of the change journal (agent/watch.py): walk only what changed, or say why not.

Before it reads anything a sync takes the watcher's *cut* (the log's length once every event
queued so far is written). It then walks only the directories the log names between the
cut the last point consumed and this one — plus their ancestors (their subtree ids change),
whole subtrees where a directory appeared (mkdir, a rename: the journal knows nothing at
the new path), and directories holding files with several hard links (a write through
another link is reported on the other directory) — and reuses the last point's tree of
every other directory unwalked (archiver.UnchangedTrees). So a sync costs O(changes).

Proof that nothing was missed, checked in this order, the first failure making a full
walk the point names (`walk: full`, `walk_note`): a watcher answers; the last point
recorded a cut of the same generation (the watcher ran without a restart since; a log
rotation is followed through log.prev, see agent/watch.py), the same
boot, the same root, the same options and the same mounts below the root (a mount raises
no event); the last point still exists (a prune may have removed the trees reused); the
log's records in the range are whole and hold no overflow (the kernel dropped events) nor
a lost event (one the watcher could not place). The cut is recorded in the next journal's
meta, committed with it only after the point is saved, so a crash between the two replays
the range. A full walk records the cut too: the next sync can use the journal again.

Not seen by fanotify, and so by no journal walk: writes through a shared writable mmap
(no modify event), a file's atime, changes made while the filesystem was mounted elsewhere
(another boot: the boot id catches it) — a periodic `full` reads everything again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.agent import fanotify
from protectctl.agent.journal import Journal, JournalWriter
from protectctl.agent.watch import DIR, GONE, LOST, OVERFLOW, TREE, Cut, mounts_below, read_header, read_records
from protectctl.agent.watch import request_cut as _request_cut
from protectctl.agent.watch import watch_dir as _watch_dir
from protectctl.engine.ids import BlobId
from protectctl.engine.repository import Repository

JOURNAL_MODES = ("watch", "off")
_META = "watch"  # journal meta keys: watch_generation, watch_boot, watch_offset, watch_root, ...


def take_cut(state_dir: Path, source: str) -> Cut | str:
    """The watcher's cut before a sync reads anything, or why there is none."""
    why = fanotify.unsupported()
    if why is not None:
        return why
    return _request_cut(state_dir, source)


def journal_problems(state_dir: Path, source: str) -> list[str]:
    """What keeps a source's change journal from working (status): no fanotify, no watcher."""
    why = fanotify.unsupported()
    if why is not None:
        return [f"change journal: this host cannot watch ({why}); every sync walks the whole tree"]
    answer = _request_cut(state_dir, source, 2.0, ping=True)
    if isinstance(answer, str):
        return [f"change journal: {answer}; every sync walks the whole tree until it runs"]
    return []


def options_digest(root: Path, include: Iterable[str], exclude: Iterable[str], one_file_system: bool) -> str:
    """What the last point's trees were built with: another digest, another tree."""
    raw = json.dumps([os.path.realpath(root), list(include), list(exclude), one_file_system])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Decision:
    """How this sync walks: `changes` None is a full walk for `reason`."""

    cut: Cut | None
    reason: str | None
    changes: Changes | None = None

    def facts(self, walked: int | None = None) -> dict[str, object]:
        out: dict[str, object] = {"journal": "on"}
        if self.changes is None:
            out["walk"] = "full"
            out["walk_note"] = self.reason or "full walk"
        else:
            out["walk"] = "journal"
            changed = len(self.changes.changed - self.changes.linked)
            note = f"{changed} changed director{'y' if changed == 1 else 'ies'}"
            if self.changes.linked:
                note += f", {len(self.changes.linked)} with hard-linked files walked"
            if self.changes.subtrees:
                note += f", {len(self.changes.subtrees)} new or moved subtree(s) walked whole"
            out["walk_note"] = note
            if walked is not None:
                out["walk_dirs"] = walked
        return out


@dataclass(slots=True)
class Changes:
    changed: set[bytes]  # directories the log names (and hard-link holders)
    subtrees: set[bytes]  # directories to walk whole
    gone: set[bytes]  # directories that left: their journal rows are forgotten
    linked: set[bytes] = field(default_factory=set)  # directories holding hard-linked files: always walked
    dirty: set[bytes] = field(default_factory=set)  # changed, subtrees and every ancestor


def decide(
    journal: Journal,
    cut: Cut | str,
    *,
    state_dir: Path,
    source: str,
    live_root: Path,
    digest: str,
    points: Sequence[str],
) -> Decision:
    """Journal walk or full walk, and why (see the module docstring for the order)."""
    if isinstance(cut, str):
        return Decision(None, cut)
    meta = journal.meta
    root = os.fsencode(os.path.realpath(live_root))
    if os.fsdecode(root) != cut.root:
        return Decision(cut, f"the watcher watches {cut.root}, not {os.fsdecode(root)}")
    mounts = tuple(os.fsdecode(m) for m in mounts_below(root))
    if mounts != cut.mounts:
        return Decision(cut, "the mounts below the source changed since the watcher started (restart it)")
    if not meta or f"{_META}_generation" not in meta:
        return Decision(cut, "no earlier point recorded a cut of the watcher")
    if meta.get(f"{_META}_boot") != cut.boot_id:
        return Decision(cut, "the host rebooted since the last point")
    rotated = meta.get(f"{_META}_generation") != cut.generation
    if rotated and not (cut.rotated_from and meta.get(f"{_META}_generation") == cut.rotated_from):
        if meta.get(f"{_META}_generation") in _older_generations(state_dir, source):
            return Decision(cut, "the watcher's log was rotated more than once since the last point")
        return Decision(cut, "the watcher restarted since the last point")
    if meta.get(f"{_META}_options") != digest:
        return Decision(cut, "the source's path or patterns changed since the last point")
    if journal.point_id not in points:
        return Decision(cut, "the last point the journal describes is gone (pruned)")
    try:
        start = int(meta[f"{_META}_offset"])
    except (KeyError, ValueError):
        return Decision(cut, "the last point's cut is unreadable")
    directory = _watch_dir(state_dir, source)
    if rotated:  # the old log's tail since the last cut, then the new log from its start
        if start > cut.rotated_at:
            return Decision(cut, "the watcher's log is shorter than the last cut")
        # nothing to read there when the last point consumed it to its end (the usual case)
        older = [] if start == cut.rotated_at else _read_range(directory, cut.rotated_from, start, cut.rotated_at)
        newer = _read_range(directory, cut.generation, 0, cut.offset)
        records = older if isinstance(older, str) else newer if isinstance(newer, str) else older + newer
    elif start > cut.offset:
        return Decision(cut, "the watcher's log is shorter than the last cut")
    else:
        records = _read_range(directory, cut.generation, start, cut.offset)
    if isinstance(records, str):
        return Decision(cut, records)
    changes = Changes(set(), set(), set())
    for kind, rel in records:
        if kind == OVERFLOW:
            return Decision(cut, "the watcher's queue overflowed: events were lost")
        if kind == LOST:
            return Decision(cut, "the watcher could not place an event (the root moved, or a handle failed)")
        if kind == DIR:
            changes.changed.add(rel)
        elif kind == TREE:
            changes.subtrees.add(rel)
        elif kind == GONE:
            changes.gone.add(rel)
    try:
        linked = [bytes.fromhex(h) for h in json.loads(meta.get(f"{_META}_linked", "[]"))]
    except (ValueError, TypeError):
        return Decision(cut, "the last point's list of hard-linked directories is unreadable")
    changes.linked.update(linked)
    changes.changed.update(linked)
    for rel in (*changes.changed, *changes.subtrees):
        changes.dirty.add(rel)
        while rel:
            rel = rel.rpartition(b"/")[0]
            changes.dirty.add(rel)
    return Decision(cut, None, changes)


def _read_range(directory: Path, generation: str, start: int, end: int) -> list[tuple[int, bytes]] | str:
    """The records of `generation`'s log in [start, end): from `log`, or from `log.prev`
    once a rotation replaced it (the watcher links the old log there before replacing it)."""
    for name in ("log", "log.prev"):
        try:
            with open(directory / name, "rb") as log:
                header = read_header(log.read(65536))
                if header is None or header.generation != generation:
                    continue
                begin = max(start, header.size)
                log.seek(begin)
                data = log.read(end - begin)
        except FileNotFoundError:
            continue
        except OSError as err:
            return f"the watcher's log cannot be read: {err.strerror}"
        if len(data) != end - begin:
            return "the watcher's log is shorter than its cut"
        records = read_records(data, 0, len(data))
        if records is None:
            return "the watcher's log is damaged"
        return records
    return "the watcher's log is not the generation it answered for"


def _older_generations(state_dir: Path, source: str) -> set[str]:
    """The generations a rotation left behind (the one in log.prev, and the one it follows)."""
    try:
        with open(_watch_dir(state_dir, source) / "log.prev", "rb") as log:
            header = read_header(log.read(65536))
    except OSError:
        return set()
    return set() if header is None else {header.generation, header.rotated_from} - {""}


class JournalWalk:
    """The archiver's UnchangedTrees for one journal walk; the next journal is the last one
    changed in place (one transaction), of which the directories walked are written again."""

    def __init__(self, changes: Changes, journal: Journal, out: JournalWriter, repo: Repository) -> None:
        self.changes = changes
        self.journal = journal
        self.out = out
        self.repo = repo
        self.walked: set[bytes] = {b""}
        for rel in changes.gone:
            out.forget_below(rel)
        out.clear_directory(b"")

    def _whole(self, rel: bytes) -> bool:
        subtrees = self.changes.subtrees
        if not subtrees:
            return False
        at = rel
        while at:
            if at in subtrees:
                return True
            at = at.rpartition(b"/")[0]
        return False

    def tree(self, rel: bytes) -> tuple[BlobId, int, int, int] | None:
        if rel not in self.changes.dirty and not self._whole(rel):
            stored = self.journal.directory_tree(rel)
            totals = self.journal.subtotal(rel)
            if stored is not None and totals is not None and self.repo.has_blobs([stored[1]]):
                return (BlobId(stored[1]), *totals)
        self.walked.add(rel)
        self.out.clear_directory(rel)
        return None

    def linked(self, previous: Mapping[str, str], found: set[bytes]) -> list[bytes]:
        """Directories with hard-linked files: found in the walk, and the last point's ones not walked."""
        try:
            before = {bytes.fromhex(h) for h in json.loads(previous.get(f"{_META}_linked", "[]"))}
        except (ValueError, TypeError):
            before = set()
        return sorted({*(d for d in before if d not in self.walked), *found})


def cut_meta(cut: Cut, digest: str, linked: Iterable[bytes]) -> dict[str, str]:
    """What the next journal records of the cut this sync consumed."""
    return {
        f"{_META}_generation": cut.generation,
        f"{_META}_boot": cut.boot_id,
        f"{_META}_offset": str(cut.offset),
        f"{_META}_root": cut.root,
        f"{_META}_options": digest,
        f"{_META}_linked": json.dumps([d.hex() for d in linked]),
    }
