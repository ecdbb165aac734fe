"""How a sync decides between a journal walk and a full walk (agent/changes.py), and says why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protectctl.agent import fanotify
from protectctl.agent.changes import cut_meta, decide, journal_problems, options_digest, take_cut
from protectctl.agent.journal import Journal, JournalWriter
from protectctl.agent.watch import _LEN, _MAGIC, DIR, GONE, OVERFLOW, TREE, Cut, encode_record, mounts_below, watch_dir

SOURCE = "g/m"


def _setup(tmp_path: Path, records: list[tuple[int, bytes]], **meta_changes: str) -> tuple[Journal, Cut, str, Path]:
    root = tmp_path / "src"
    root.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    real = os.path.realpath(root)
    mounts = tuple(os.fsdecode(m) for m in mounts_below(os.fsencode(real)))
    header = {"generation": "g1", "boot_id": "b1", "started_ns": 1, "root": real, "mounts": list(mounts)}
    raw = json.dumps(header).encode()
    head = _MAGIC + _LEN.pack(len(raw)) + raw
    first = [encode_record(DIR, b"old")]  # before the last cut: already consumed
    body = b"".join(encode_record(kind, rel) for kind, rel in records)
    log = watch_dir(state, SOURCE) / "log"
    log.parent.mkdir(parents=True)
    log.write_bytes(head + b"".join(first) + body)
    last_cut = Cut("g1", "b1", 1, real, mounts, len(head) + len(first[0]))
    digest = options_digest(root, [], [], False)
    path = tmp_path / "journal.db"
    writer = JournalWriter(path, repo_id="r")
    writer.commit({"point_id": "p1", **cut_meta(last_cut, digest, [b"hard"]), **meta_changes})
    cut = Cut("g1", "b1", 1, real, mounts, len(head) + len(first[0]) + len(body))
    return Journal(path, repo_id="r"), cut, digest, root


def _decide(tmp_path: Path, records: list[tuple[int, bytes]], points: tuple[str, ...] = ("p1",), **meta: str):  # type: ignore[no-untyped-def]
    journal, cut, digest, root = _setup(tmp_path, records, **meta)
    return decide(
        journal, cut, state_dir=tmp_path / "state", source=SOURCE, live_root=root, digest=digest, points=points
    )


def test_the_range_since_the_last_cut_is_walked_with_ancestors_and_hard_link_holders(tmp_path: Path) -> None:
    decision = _decide(tmp_path, [(DIR, b"a/b/c"), (TREE, b"x/new"), (GONE, b"x/old")])
    assert decision.reason is None and decision.changes is not None
    changes = decision.changes
    assert changes.changed == {b"a/b/c", b"hard"} and changes.subtrees == {b"x/new"} and changes.gone == {b"x/old"}
    assert changes.dirty == {b"", b"a", b"a/b", b"a/b/c", b"x", b"x/new", b"hard"}  # not b"old": consumed before
    assert decision.facts()["walk_note"] == (
        "1 changed directory, 1 with hard-linked files walked, 1 new or moved subtree(s) walked whole"
    )


@pytest.mark.parametrize(
    ("meta", "records", "points", "reason"),
    [
        ({"watch_boot": "b0"}, [], ("p1",), "the host rebooted since the last point"),
        ({"watch_generation": "g0"}, [], ("p1",), "the watcher restarted since the last point"),
        ({"watch_options": "other"}, [], ("p1",), "the source's path or patterns changed since the last point"),
        ({}, [], (), "the last point the journal describes is gone (pruned)"),
        ({}, [(DIR, b"a"), (OVERFLOW, b"")], ("p1",), "the watcher's queue overflowed: events were lost"),
        ({"watch_offset": "999999"}, [], ("p1",), "the watcher's log is shorter than the last cut"),
    ],
)
def test_every_doubt_is_a_full_walk_that_says_why(
    tmp_path: Path, meta: dict[str, str], records: list[tuple[int, bytes]], points: tuple[str, ...], reason: str
) -> None:
    decision = _decide(tmp_path, records, points, **meta)
    assert (decision.changes, decision.reason) == (None, reason)
    assert decision.facts() == {"journal": "on", "walk": "full", "walk_note": reason}


def _log(path: Path, header: dict[str, object], records: list[tuple[int, bytes]]) -> int:
    raw = json.dumps(header).encode()
    data = _MAGIC + _LEN.pack(len(raw)) + raw + b"".join(encode_record(kind, rel) for kind, rel in records)
    path.write_bytes(data)
    return len(data)


def _rotate(tmp_path: Path, old_tail: list[tuple[int, bytes]], new: list[tuple[int, bytes]], *, keep_prev: bool = True):  # type: ignore[no-untyped-def]
    """The last point's cut is in g1; g1's log went on (old_tail) until a cut passed the size
    limit and the watcher started g2 (log), keeping g1 as log.prev."""
    journal, cut, digest, root = _setup(tmp_path, old_tail)
    directory = watch_dir(tmp_path / "state", SOURCE)
    os.link(directory / "log", directory / "log.prev")
    fields = {"generation": "g2", "boot_id": "b1", "started_ns": 2, "root": cut.root, "mounts": list(cut.mounts)}
    fields |= {"rotated_from": "g1", "rotated_at": cut.offset}
    (directory / "log").unlink()
    if not keep_prev:
        (directory / "log.prev").unlink()
    end = _log(directory / "log", fields, new)
    rotated = Cut("g2", "b1", 2, cut.root, cut.mounts, end, rotated_from="g1", rotated_at=cut.offset)
    return decide(
        journal, rotated, state_dir=tmp_path / "state", source=SOURCE, live_root=root, digest=digest, points=["p1"]
    )


def test_a_rotated_log_is_followed_through_its_predecessor(tmp_path: Path) -> None:
    decision = _rotate(tmp_path, [(DIR, b"before/rotation")], [(DIR, b"after"), (GONE, b"x/old")])
    assert decision.reason is None and decision.changes is not None
    assert decision.changes.changed == {b"before/rotation", b"after", b"hard"}  # not b"old": consumed before
    assert decision.changes.gone == {b"x/old"}


def test_a_rotated_log_with_an_overflow_on_either_side_is_a_full_walk(tmp_path: Path) -> None:
    decision = _rotate(tmp_path, [(OVERFLOW, b"")], [(DIR, b"after")])
    assert decision.reason == "the watcher's queue overflowed: events were lost"


def test_a_rotation_without_its_predecessor_or_twice_is_a_full_walk(tmp_path: Path) -> None:
    journal, cut, digest, root = _setup(tmp_path, [])
    directory = watch_dir(tmp_path / "state", SOURCE)
    # g1 -> g2 (log.prev) -> g3 (log): the last point's g1 is two rotations back
    _log(
        directory / "log.prev",
        {
            "generation": "g2",
            "boot_id": "b1",
            "started_ns": 2,
            "root": cut.root,
            "mounts": list(cut.mounts),
            "rotated_from": "g1",
            "rotated_at": cut.offset,
        },
        [],
    )
    twice = Cut("g3", "b1", 3, cut.root, cut.mounts, cut.offset, rotated_from="g2", rotated_at=100)
    decision = decide(
        journal,
        twice,
        state_dir=tmp_path / "state",
        source=SOURCE,
        live_root=root,
        digest=digest,
        points=["p1"],
    )
    assert decision.reason == "the watcher's log was rotated more than once since the last point"


def test_a_rotated_log_whose_predecessor_is_gone_is_a_full_walk(tmp_path: Path) -> None:
    decision = _rotate(tmp_path / "a", [(DIR, b"a")], [], keep_prev=False)  # its tail is needed
    assert decision.reason == "the watcher's log is not the generation it answered for"
    decision = _rotate(tmp_path / "b", [], [(DIR, b"b")], keep_prev=False)  # consumed to its end
    assert decision.reason is None and decision.changes is not None and b"b" in decision.changes.changed


def test_a_damaged_log_is_never_guessed_at(tmp_path: Path) -> None:
    journal, cut, digest, root = _setup(tmp_path, [(DIR, b"a")])
    log = watch_dir(tmp_path / "state", SOURCE) / "log"
    data = bytearray(log.read_bytes())
    data[-5] ^= 0xFF  # the last record's path
    log.write_bytes(bytes(data))
    decision = decide(
        journal, cut, state_dir=tmp_path / "state", source=SOURCE, live_root=root, digest=digest, points=["p1"]
    )
    assert decision.reason == "the watcher's log is damaged"


def test_no_watcher_and_no_earlier_cut(tmp_path: Path) -> None:
    journal, cut, digest, root = _setup(tmp_path, [])
    kwargs = {"state_dir": tmp_path / "state", "source": SOURCE, "live_root": root, "digest": digest, "points": ["p1"]}
    assert decide(journal, "the watcher is not running", **kwargs).reason == "the watcher is not running"  # type: ignore[arg-type]
    empty = Journal(tmp_path / "none.db", repo_id="r")
    assert decide(empty, cut, **kwargs).reason == "no earlier point recorded a cut of the watcher"  # type: ignore[arg-type]


def test_a_host_without_fanotify_walks_everything_and_status_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "the kernel has no fanotify directory reports (FAN_REPORT_DFID_NAME, Linux >= 5.9)"
    monkeypatch.setattr(fanotify, "unsupported", lambda: why)
    assert take_cut(tmp_path, SOURCE) == why
    assert journal_problems(tmp_path, SOURCE) == [
        f"change journal: this host cannot watch ({why}); every sync walks the whole tree"
    ]
