"""The conformance suite every state backend passes (local file, s3 object, postgres table).

Subclass `StateSuite` and override `spec` to describe a fresh, empty backend as JSON, so that
a child process can open the same one (`build`). A dead holder is a real process that took the
lock and was SIGKILLed; a live holder is a real process still running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from protectctl.errors import StalePlanError, StateError, StateLockedError
from protectctl.plan.diff import plan_is_applicable
from protectctl.plan.model import Plan
from protectctl.state.backend import StateBackend
from protectctl.state.model import ResourceState, State

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def build(spec: dict[str, Any]) -> StateBackend:
    """A backend from its JSON description (tests only)."""
    kind = spec["kind"]
    if kind == "local":
        from protectctl.state.local import LocalStateBackend

        return LocalStateBackend(Path(spec["path"]))
    if kind == "s3":
        from protectctl.engine.storage.s3 import S3Credentials, S3Location, make_client
        from protectctl.state.s3 import S3StateBackend

        location = S3Location(spec["bucket"], "", spec["endpoint"])
        client = make_client(
            location, S3Credentials(spec["key_id"], spec["secret"]), max_attempts=2, connect_timeout_s=2
        )
        return S3StateBackend(
            client,
            spec["bucket"],
            spec["key"],
            where=f"{spec['bucket']}/{spec['key']}",
            lease_s=float(spec.get("lease_s", 120)),
        )
    if kind == "postgres":
        from protectctl.state.postgres import PostgresStateBackend

        return PostgresStateBackend(spec["dsn"], schema=spec.get("schema", "protectctl"), name=spec["name"])
    raise ValueError(kind)


_HOLDER = """
import json, os, signal, sys
sys.path.insert(0, {repo!r})
from tests.unit.state_suite import build
backend = build(json.loads(sys.argv[1]))
lock = backend.lock(sys.argv[2], 10)
lock.__enter__()
print("held", flush=True)
if sys.argv[3] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
lock.__exit__(None, None, None)
"""


@contextmanager
def holder(spec: dict[str, Any], command: str, *, die: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A real process holding the lock (alive until the block ends, or SIGKILLed at once with `die`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.format(repo=str(REPO)), json.dumps(spec), command, "die" if die else "live"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        if die:
            assert proc.wait(timeout=30) == -signal.SIGKILL
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def record(**inputs: object) -> ResourceState:
    return ResourceState(kind="group", inputs=dict(inputs), inputs_hash="h", updated_at=NOW)


class StateSuite:
    @pytest.fixture
    def spec(self) -> dict[str, Any]:
        raise NotImplementedError("override `spec` to describe a fresh, empty backend")

    @pytest.fixture
    def unreachable(self) -> StateBackend:
        raise NotImplementedError("override `unreachable` with a backend whose server is not there")

    def test_empty_until_written_then_round_trips(self, spec: dict[str, Any]) -> None:
        backend = build(spec)
        first, second = backend.read(), backend.read()
        assert first.serial == 0 and first.resources == {} and first.lineage != second.lineage
        assert not backend.exists()
        state = State(serial=3, resources={"group.docs": record(sla="tier1", note="é ✓")})
        backend.write(state)
        assert backend.exists()
        assert build(spec).read() == state  # another client sees the same state, lineage included

    def test_a_plan_of_an_older_serial_or_another_lineage_is_refused(self, spec: dict[str, Any]) -> None:
        backend = build(spec)
        state = State(serial=1)
        backend.write(state)
        plan = Plan.model_construct(lineage=state.lineage, serial=1)
        plan_is_applicable(plan, build(spec).read())
        state.serial = 2
        build(spec).write(state)  # another runner applied meanwhile
        with pytest.raises(StalePlanError, match="state changed"):
            plan_is_applicable(plan, backend.read())
        with pytest.raises(StalePlanError, match="another state"):
            plan_is_applicable(Plan.model_construct(lineage="other", serial=2), backend.read())

    def test_a_live_holder_is_named_and_never_broken(self, spec: dict[str, Any]) -> None:
        with holder(spec, "apply") as proc:
            with pytest.raises(StateLockedError) as info, build(spec).lock("plan", 0.5):
                pass
            assert f"pid {proc.pid}" in str(info.value) and "(apply, since" in str(info.value)
            with pytest.raises(StateLockedError, match="live process"):
                build(spec).unlock()
            # still held: the refused unlock did not break it
            with pytest.raises(StateLockedError), build(spec).lock("plan", 0):
                pass
        with build(spec).lock("plan", 10):  # released when its holder finished
            pass

    def test_a_dead_holders_lock_is_taken_over(self, spec: dict[str, Any]) -> None:
        with holder(spec, "apply", die=True):
            pass
        with build(spec).lock("apply", 10):
            pass

    def test_two_runners_at_once_one_holds_the_other_is_refused(self, spec: dict[str, Any]) -> None:
        won: list[str] = []
        refused: list[str] = []
        start = threading.Barrier(4)
        release = threading.Event()

        failed: list[BaseException] = []

        def runner(name: str) -> None:
            backend = build(spec)
            start.wait()
            try:
                with backend.lock(f"apply {name}", 0):
                    won.append(name)
                    release.wait(60)
            except StateLockedError as err:
                refused.append(str(err))
            except BaseException as err:  # anything else fails the test instead of hanging it
                failed.append(err)

        threads = [threading.Thread(target=runner, args=(str(i),)) for i in range(4)]
        for t in threads:
            t.start()
        for _ in range(1200):  # the winner holds until the other three were refused (60 s at most)
            if len(won) + len(refused) + len(failed) >= 4 or len(refused) + len(failed) >= 3:
                break
            threading.Event().wait(0.05)
        release.set()
        for t in threads:
            t.join()
        assert not failed, failed
        assert len(won) == 1 and len(refused) == 3
        assert all("apply" in r and f"pid {os.getpid()}" in r for r in refused)

    def test_an_unreachable_backend_is_a_clear_error(self, unreachable: StateBackend) -> None:
        with pytest.raises(StateError) as info:
            unreachable.read()
        assert "Traceback" not in str(info.value)
