"""The local state backend on real files: atomic write, backup, lock naming its holder."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl.errors import StateError, StateLockedError
from protectctl.state.local import LocalStateBackend
from protectctl.state.model import ResourceState, State

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def record(**inputs: object) -> ResourceState:
    return ResourceState(kind="group", inputs=dict(inputs), inputs_hash="h", updated_at=NOW)


def test_missing_state_is_empty_with_a_new_lineage(tmp_path: Path) -> None:
    backend = LocalStateBackend(tmp_path / "state.json")
    a, b = backend.read(), backend.read()
    assert a.serial == 0 and a.resources == {}
    assert a.lineage != b.lineage  # nothing written yet: each read is a fresh state


def test_write_read_backup_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    backend = LocalStateBackend(path)
    state = State()
    state.resources["group.docs"] = record(sla="tier1")
    state.serial = 1
    backend.write(state)
    assert backend.read() == state
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not backend.backup_path.exists()
    first = path.read_bytes()
    state.serial = 2
    state.resources["group.more"] = record(sla="gold")
    backend.write(state)
    assert backend.backup_path.read_bytes() == first
    assert stat.S_IMODE(backend.backup_path.stat().st_mode) == 0o600
    assert backend.read().serial == 2
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "state.json",
        "state.json.backup",
    ]  # no temp files


def test_damaged_state_names_the_backup(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"lineage": 1')
    with pytest.raises(StateError, match="damaged") as info:
        LocalStateBackend(path).read()
    assert "state.json.backup" in (info.value.hint or "")


def test_unreadable_state_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match="reading state"):
        LocalStateBackend(tmp_path / "state.json").read()


@settings(max_examples=40, deadline=None)
@given(
    resources=st.dictionaries(
        st.from_regex(r"(group|source|schedule)\.[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True),
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(st.none(), st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3)),
            max_size=4,
        ),
        max_size=5,
    ),
    serial=st.integers(0, 10**9),
)
def test_state_round_trip(
    tmp_path_factory: pytest.TempPathFactory, resources: dict[str, dict[str, object]], serial: int
) -> None:
    backend = LocalStateBackend(tmp_path_factory.mktemp("rt") / "state.json")
    state = State(serial=serial, resources={a: record(**i) for a, i in resources.items()})
    backend.write(state)
    assert backend.read() == state
    json.loads(backend.path.read_text())


def test_lock_names_its_holder(tmp_path: Path) -> None:
    backend = LocalStateBackend(tmp_path / "state.json")
    other = LocalStateBackend(tmp_path / "state.json")
    with backend.lock("apply", 0):
        with pytest.raises(StateLockedError) as info, other.lock("plan", 0):
            pass
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "(apply, since" in message
        assert "--lock-timeout" in (info.value.hint or "")
    with other.lock("plan", 0):  # released
        pass


def test_lock_timeout_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter polls while the lock is held and takes it once released: proven by events (the
    waiter has polled, the holder let go), not by how long either took."""
    import protectctl.state.local as local

    polled = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        polled.set()
        real_sleep(seconds)

    monkeypatch.setattr(local.time, "sleep", sleep)
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with LocalStateBackend(tmp_path / "state.json").lock("plan", 60):
            acquired.set()

    with LocalStateBackend(tmp_path / "state.json").lock("apply", 0):
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        assert polled.wait(60), "the waiter never polled"
        assert not acquired.is_set()
    waiter.join(60)
    assert acquired.is_set()


def test_unlock(tmp_path: Path) -> None:
    backend = LocalStateBackend(tmp_path / "state.json")
    assert backend.unlock() == "no lock"
    # a stale lock: a holder recorded, no process holding the flock
    backend.lock_path.write_text(json.dumps({"pid": 99999, "host": "h", "command": "apply", "time": "t"}))
    assert "pid 99999 on h" in backend.unlock()
    assert not backend.lock_path.exists()
    with backend.lock("apply", 0):
        with pytest.raises(StateLockedError, match="held by a live process"):
            LocalStateBackend(tmp_path / "state.json").unlock()
        assert "apply" in LocalStateBackend(tmp_path / "state.json").unlock(force=True)


@pytest.mark.parametrize(
    "text",
    [
        "{}",  # once read as an empty state: plan offered to create everything, apply rewrote it
        '{"resources": {}}',
        '{"format_version": 1, "serial": 3, "resources": {}}',  # no lineage
        '{"format_version": 1, "lineage": "x", "resources": {}}',  # no serial
        '{"format_version": 1, "lineage": "", "serial": 0, "resources": {}}',
        '{"format_version": 1, "lineage": "x", "serial": -1, "resources": {}}',
        "",
        "null",
        "[]",
    ],
)
def test_a_state_without_lineage_or_serial_is_damaged_not_empty(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match="damaged") as info:
        LocalStateBackend(path).read()
    assert "state.json.backup" in (info.value.hint or "")
    assert path.read_text() == text  # left as it was, for the user to look at


def test_a_state_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"format_version": 2, "lineage": "x", "serial": 1, "resources": {}}')
    with pytest.raises(StateError, match="format 2"):
        LocalStateBackend(path).read()
