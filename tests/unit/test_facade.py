"""The api facade's results as data: plan and validate warnings keep their place in the policy
(file, line, column) all the way to `--json`, and restore targets parse as before the split."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protectctl import api
from protectctl.agent.sources import SourceTarget
from protectctl.cli.views import validate_json
from protectctl.errors import RestoreError
from protectctl.plan.model import Plan
from protectctl.restore.service import parse_target
from protectctl.state.model import State
from tests.conftest import QUICKSTART, write_policy

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SSH_HOST = (
    "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: s1}\nspec:\n  address: 10.0.0.9\n"
    '  hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxqKSTM4mqUClowJzXBY6H4+n4Gru4x2Bi2DH/nsJ1C"\n'
)


@pytest.fixture
def warned_policy(tmp_path: Path) -> Path:
    """The quickstart with its member on an SSH host: a warning about the local storage, at its place."""
    quickstart = (QUICKSTART / "protect.yaml").read_text()
    return write_policy(tmp_path / "policy", [SSH_HOST, quickstart.replace("host: local", "host: s1")])


def test_plan_warnings_keep_their_place_in_json_beside_the_lines(warned_policy: Path) -> None:
    plan = api.make_plan(warned_policy, State(), now=NOW)
    assert len(plan.diagnostics) == len(plan.warnings)
    assert [d.message for d in plan.diagnostics] == plan.warnings
    (located,) = [d for d in plan.diagnostics if "SSH host 's1'" in d.summary]
    assert located.file is not None and located.file.endswith("protect.yaml")
    assert located.line is not None and located.line > 1 and located.column is not None
    assert located.message.startswith(f"{located.file}:{located.line}:{located.column}: warning: ")

    document = json.loads(plan.model_dump_json())
    assert document["warnings"] == plan.warnings  # unchanged for readers of format 1.0
    assert any(d["line"] == located.line and d["file"] == located.file for d in document["diagnostics"])
    assert Plan.model_validate_json(plan.model_dump_json()) == plan

    del document["diagnostics"]  # a plan file written before the field existed still reads
    assert Plan.model_validate(document).diagnostics == []


def test_validate_json_gives_each_warning_its_place(warned_policy: Path) -> None:
    document = validate_json(api.validate(warned_policy))
    assert document["warnings"] and isinstance(document["warnings"], list)
    diagnostics = document["diagnostics"]
    assert isinstance(diagnostics, list) and len(diagnostics) == len(document["warnings"])
    assert all(d["severity"] == "warning" and d["line"] and d["column"] and d["file"] for d in diagnostics)


def _target(host: str = "web", *, remote: bool = False) -> SourceTarget:
    return SourceTarget({"source": "docs/home"}, Path("/state"), host, remote=remote)


@pytest.mark.parametrize(
    ("target", "job", "expected"),
    [
        (None, _target(), (None, None)),
        (None, _target(remote=True), ("web", None)),  # an SSH host's source restores there
        ("/srv/out", _target(), (None, Path("/srv/out"))),
        ("local:/srv/out", _target(remote=True), (None, Path("/srv/out"))),
        ("db1:/srv/out", _target(), ("db1", Path("/srv/out"))),
        ("web:/srv/out", _target(), (None, Path("/srv/out"))),  # its own host, this machine
        ("web:/srv/out", _target(remote=True), ("web", Path("/srv/out"))),
        ("./a:b/c", _target(), (None, Path("./a:b/c").absolute())),  # a slash before the colon: a path
    ],
)
def test_restore_targets(target: str | None, job: SourceTarget, expected: tuple[str | None, Path | None]) -> None:
    assert parse_target(target, job) == expected


def test_a_relative_path_on_another_host_is_refused() -> None:
    with pytest.raises(RestoreError, match="must be absolute"):
        parse_target("db1:srv/out", _target())
