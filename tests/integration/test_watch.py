"""The change journal's watcher (agent/watch.py): real fanotify, as root."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protectctl.agent import fanotify
from protectctl.agent.watch import DIR, GONE, TREE, Cut, Watcher, read_header, read_records, request_cut, watch_dir

_WHY = fanotify.unsupported()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"no fanotify here: {_WHY}")


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    root = tmp_path / "src"
    root.mkdir()
    w = Watcher("g/m", root, tmp_path / "state")
    w.start()
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(5)


def _records(w: Watcher, start: int, cut: Cut) -> list[tuple[int, bytes]]:
    data = (watch_dir(w.state_dir, w.source) / "log").read_bytes()
    header = read_header(data)
    assert header is not None and header.generation == cut.generation
    found = read_records(data, max(start, header.size), cut.offset)
    assert found is not None
    return found


def test_cut_holds_every_change_made_before_it(watcher: Watcher) -> None:
    root = watcher.root
    first = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(first, Cut)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x")
    (root / "top").write_bytes(b"y")
    os.rename(root / "a" / "b", root / "a" / "c")
    os.chmod(root / "a", 0o700)
    cut = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(cut, Cut) and cut.generation == first.generation
    records = set(_records(watcher, first.offset, cut))
    assert {(DIR, b""), (TREE, b"a"), (DIR, b"a"), (GONE, b"a/b"), (TREE, b"a/c")} <= records
    # the file's directory, by the name it had when the watcher placed the event
    assert (DIR, b"a/b") in records or (DIR, b"a/c") in records
    # nothing outside the root, nothing twice within one cut
    assert len(records) == len(_records(watcher, first.offset, cut))
    again = request_cut(watcher.state_dir, watcher.source)
    assert isinstance(again, Cut) and again.offset == cut.offset  # no change: nothing recorded


def test_no_watcher_is_a_reason(tmp_path: Path) -> None:
    assert request_cut(tmp_path, "g/none") == "the watcher is not running"
