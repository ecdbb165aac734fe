"""`plan --refresh` source path warnings: a host that cannot be asked is a warning, never a crash;
what apply's prepare would change, asked of an SSH host's agent as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from protectctl.agent.sources import (
    prepare_outcome_from_json,
    prepare_outcome_json,
    prepare_request_from_json,
    prepare_request_json,
)
from protectctl.errors import ProtectctlError
from protectctl.plan.address import Address
from protectctl.plan.resources import Resource
from protectctl.provider import PrepareOutcome, PrepareRequest
from protectctl.provision.host import HostConnection
from protectctl.provision.sources import (
    NO_AGENT,
    OLD_AGENT,
    NoPreview,
    _Preview,
    prepare_drift,
    preview_on_host,
    source_warnings,
)


def _source(host: str, path: Path) -> Resource:
    return Resource(
        Address("source", f"g/{host}"),
        {"provider": "filesystem", "source": f"g/{host}", "spec": {"path": str(path)}},
        host=host,
    )


def test_missing_paths_and_unusable_connection_settings_are_warnings(tmp_path: Path) -> None:
    resources = [
        Resource(Address("host", "here"), {"address": "local"}),
        Resource(Address("host", "far"), {"address": "192.0.2.1", "gateway": "nowhere"}),
        _source("here", tmp_path / "missing"),
        _source("far", tmp_path),
    ]
    warnings = source_warnings(resources)
    assert any("missing does not exist" in w and "host here" in w for w in warnings), warnings
    assert any(w.startswith("host far: its source paths could not be checked") and "gateway" in w for w in warnings), (
        warnings
    )


# --- what apply's prepare would change, on SSH hosts by their agent (`agent prepare-preview`) ----


class _FakeAgent:
    """A HostConnection whose agent answers `agent prepare-preview` as told."""

    def __init__(self, status: int, out: bytes = b"", err: bytes = b"") -> None:
        self.answer = (status, out, err)
        self.sent: list[tuple[tuple[str, ...], bytes]] = []

    def exec_bytes(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        self.sent.append((tuple(argv), stdin))
        return self.answer


def _preview(host: str = "far") -> _Preview:
    spec = {"data_dir": "/var/lib/postgresql/15/main", "allow_restart": False}
    return _Preview(
        "source.g/db", "g/db", "postgresql", PrepareRequest("g/db", spec, Path("/srv/h/var/lib/protectctl"))
    )


def test_a_prepare_request_and_its_outcome_round_trip_as_json() -> None:
    wanted = _preview()
    sent = json.loads(json.dumps(prepare_request_json(wanted.provider, wanted.request)))
    assert prepare_request_from_json(sent) == ("postgresql", wanted.request)
    outcome = PrepareOutcome(("apply will set archive_mode off -> on",), ("a restart is needed",))
    assert prepare_outcome_from_json(json.loads(json.dumps(prepare_outcome_json(outcome)))) == outcome
    assert prepare_outcome_from_json(["not", "one"]) is None
    with pytest.raises(ProtectctlError, match="not a prepare request"):
        prepare_request_from_json({"provider": "postgresql", "source": "g/db"})


def test_the_agent_on_the_host_answers_with_the_request_on_stdin_never_in_argv() -> None:
    outcome = PrepareOutcome(("apply will set archive_command 'x' -> spool WAL into /s (at once)",))
    conn = _FakeAgent(0, json.dumps(prepare_outcome_json(outcome)).encode())
    assert preview_on_host(cast(HostConnection, conn), "/srv/h", _preview()) == outcome
    ((argv, stdin),) = conn.sent
    assert argv[0] == "/srv/h/opt/protectctl/bin/protectctl" and argv[-2:] == ("agent", "prepare-preview")
    assert "g/db" not in " ".join(argv) and json.loads(stdin)["source"] == "g/db"
    # no agent there yet (first apply), or one from before the command: "checked at apply"
    missing = _FakeAgent(127, err=b"sh: 1: not found")
    assert preview_on_host(cast(HostConnection, missing), "/", _preview()) == NoPreview(NO_AGENT)
    sudo = _FakeAgent(1, err=b"sudo: /opt/protectctl/bin/protectctl: command not found\n")  # become: sudo
    assert preview_on_host(cast(HostConnection, sudo), "/", _preview()) == NoPreview(NO_AGENT)
    old = _FakeAgent(2, err=b"Usage: protectctl agent\nError: No such command 'prepare-preview'.")
    assert preview_on_host(cast(HostConnection, old), "/", _preview()) == NoPreview(OLD_AGENT)
    failed = _FakeAgent(1, err=b"Error: cannot reach PostgreSQL of g/db at /run port 5432: refused\n")
    assert preview_on_host(cast(HostConnection, failed), "/", _preview()) == (
        "cannot reach PostgreSQL of g/db at /run port 5432: refused"
    )


def test_an_unreachable_ssh_host_is_one_line_saying_apply_will_check() -> None:
    resources = [
        Resource(Address("host", "far"), {"address": "192.0.2.1", "gateway": "nowhere"}),
        Resource(
            Address("source", "g/db"),
            {"provider": "postgresql", "source": "g/db", "host": "far", "spec": dict(_preview().request.spec)},
            host="far",
        ),
    ]
    lines, drifted = prepare_drift(resources)
    assert drifted == {}
    ((line,),) = [lines]
    assert line.startswith("host far: what apply would change could not be read (") and "gateway" in line, line
    assert line.endswith("it will be checked at apply")


def test_postgresql_preview_a_setting_waiting_for_a_restart_is_no_drift() -> None:
    from protectctl.providers.postgresql.prepare import preview_outcome

    spool = Path("/var/lib/protectctl-spool/g%2fdb")
    fresh = {"wal_level": "replica", "archive_mode": "off", "archive_command": "(disabled)"}
    first = preview_outcome(fresh, set(), want="W", spool=spool, spool_ready=False, allow_restart=False)
    assert first.changes == (
        f"apply will create the WAL spool {spool}",
        "apply will set archive_mode off -> on (ALTER SYSTEM, at the restart)",
        f"apply will set archive_command '(disabled)' -> spool WAL into {spool} (at once, ALTER SYSTEM and reload)",
    )
    assert "next restart of the cluster (archive_mode off -> on)" in first.warnings[0]
    # after an apply without allowRestart: archive_mode is set and waits for the restart
    waiting = {**fresh, "archive_command": "W"}
    after = preview_outcome(waiting, {"archive_mode"}, want="W", spool=spool, spool_ready=True, allow_restart=False)
    assert after.changes == () and "allowRestart is false" in after.warnings[0]
    restarts = preview_outcome(waiting, {"archive_mode"}, want="W", spool=spool, spool_ready=True, allow_restart=True)
    assert restarts.changes == ("apply will restart PostgreSQL to apply wal_level/archive_mode (allowRestart)",)
    done = {**waiting, "archive_mode": "on"}
    assert preview_outcome(done, set(), want="W", spool=spool, spool_ready=True, allow_restart=False) == (
        PrepareOutcome()
    )
