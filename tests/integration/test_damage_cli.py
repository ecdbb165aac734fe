"""Damage through the real CLI (a subprocess on a copy of examples/quickstart): one damaged
object is reported and worked around, `repair` commands fix it, exit codes say so, and no
traceback reaches stderr (conftest.run_cli asserts that on every call)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_example, run_cli


def _repo(policy: Path) -> Path:
    return policy / ".protectctl" / "repo"


def _synced(quickstart: Path, count: int = 3) -> list[str]:
    """Apply, then `count` syncs with a change each; the point ids, oldest first."""
    run_cli(quickstart, "apply", "--auto-approve")
    for i in range(count):
        (quickstart / "data" / f"note-{i}.txt").write_text(f"version {i}\n" * 50)
        run_cli(quickstart, "run", "sync", "docs")
    points = json.loads(run_cli(quickstart, "points", "list", "--json").stdout)["points"]
    return [p["id"] for p in points]


def _flip(path: Path, offset: int = 30) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _oldest(directory: Path) -> Path:
    return min(directory.iterdir(), key=lambda f: f.stat().st_mtime_ns)


@pytest.fixture(scope="module")
def synced_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    """The quickstart applied and synced three times, once per module (the tests damage copies)."""
    base = tmp_path_factory.mktemp("damage")
    policy = copy_example("quickstart", base / "quickstart")
    ids = _synced(policy)
    template = tmp_path_factory.mktemp("damage-template")
    subprocess.run(["cp", "-a", str(policy), str(template / "quickstart")], check=True)
    return policy, ids, template / "quickstart"


@pytest.fixture
def synced(synced_template: tuple[Path, list[str], Path]) -> tuple[Path, list[str]]:
    """A fresh copy of the synced quickstart, each test its own. The copy goes back to the very
    path it was made at (the state and agent config hold absolute paths), in a directory that
    holds nothing else: what an earlier test left there is removed first. `cp -a` keeps modes,
    owners and nanosecond mtimes (the index test damages the oldest index object)."""
    policy, ids, template = synced_template
    for leftover in policy.parent.iterdir():
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    subprocess.run(["cp", "-a", str(template), str(policy)], check=True)
    return policy, ids


def test_a_damaged_oldest_manifest_blocks_nothing_and_can_be_forgotten(synced: tuple[Path, list[str]]) -> None:
    policy, ids = synced
    (_repo(policy) / "points" / ids[0]).write_bytes(b"")  # a 0-byte manifest
    listed = run_cli(policy, "points", "list", "--json")
    doc = json.loads(listed.stdout)
    assert [p["id"] for p in doc["points"]] == ids[1:]
    assert any(f"points/{ids[0]}" in problem for problem in doc["problems"])
    assert f"points/{ids[0]}" in run_cli(policy, "points", "list").stderr
    for when in ("latest", doc["points"][0]["time"]):
        target = policy.parent / f"restored-{len(when)}"
        run_cli(policy, "restore", "docs/home", "--to-time", when, "--target", str(target))
        assert (target / "note-0.txt").exists()
    sync = run_cli(policy, "run", "sync", "docs", "--json", expect=1)  # the point is made, the damage said
    (result,) = json.loads(sync.stdout)["results"]
    assert result["point_id"] and any(ids[0] in w for w in result["warnings"])
    status = run_cli(policy, "status", "--json", expect=1)
    (row,) = json.loads(status.stdout)["sources"]
    assert any(ids[0] in p for p in row["problems"])
    prune = json.loads(run_cli(policy, "prune", "--json", expect=1).stdout)
    assert any("nothing deleted" in p for p in prune["results"][0]["problems"])
    check = run_cli(policy, "check", "primary", "--json", expect=1)
    assert ids[0] in json.loads(check.stdout)["affected_points"]
    run_cli(policy, "repair", "points", expect=1)  # lists, forgets nothing
    assert (_repo(policy) / "points" / ids[0]).exists()
    forgot = run_cli(policy, "repair", "points", "--forget-damaged")
    assert ids[0] in forgot.stdout
    assert not (_repo(policy) / "points" / ids[0]).exists()
    run_cli(policy, "prune")
    run_cli(policy, "check", "primary", "--read-data")


def test_a_damaged_index_object_is_read_around_and_repaired(synced: tuple[Path, list[str]]) -> None:
    policy, ids = synced
    bad = _oldest(_repo(policy) / "index")
    _flip(bad)
    check = json.loads(run_cli(policy, "check", "primary", "--json", expect=1).stdout)
    assert set(check["affected_points"]) == set(ids)  # each needs the first sync's files
    prune = json.loads(run_cli(policy, "prune", "--json", expect=1).stdout)
    assert prune["results"][0]["packs_deleted"] == 0
    restored = policy.parent / "restored"
    run_cli(policy, "restore", "docs/home", "--to-time", "latest", "--target", str(restored))
    assert (restored / "note-2.txt").read_text() == "version 2\n" * 50
    run_cli(policy, "repair", "index")
    assert not bad.exists()
    run_cli(policy, "check", "primary", "--read-data")
    run_cli(policy, "prune")
    run_cli(policy, "run", "sync", "docs")


def test_with_the_index_gone_restore_and_sync_rebuild_it(synced: tuple[Path, list[str]]) -> None:
    policy, _ids = synced
    for index in (_repo(policy) / "index").iterdir():
        index.unlink()
    restored = policy.parent / "restored"
    out = run_cli(policy, "restore", "docs/home", "--to-time", "latest", "--target", str(restored)).stdout
    assert "re-indexed" in out
    assert any((_repo(policy) / "index").iterdir())
    run_cli(policy, "check", "primary", "--read-data")
    run_cli(policy, "run", "sync", "docs")


def test_status_with_a_wrong_passphrase_says_so_not_no_point_yet(synced: tuple[Path, list[str]]) -> None:
    policy, _ids = synced
    (policy / ".protectctl" / "passphrase").write_text("not the passphrase\n")
    status = run_cli(policy, "status", "--json", expect=1)
    (row,) = json.loads(status.stdout)["sources"]
    assert any("passphrase does not open" in p for p in row["problems"])
    assert not any("no complete" in p for p in row["problems"])


def test_a_killed_apply_leaves_no_state_temp_file_behind(quickstart: Path) -> None:
    run_cli(quickstart, "apply", "--auto-approve")
    state_dir = quickstart / ".protectctl"
    (state_file,) = state_dir.rglob("state.json")
    orphan = state_file.parent / f".{state_file.name}.k1ll3d.tmp"  # what a SIGKILL mid-write leaves
    orphan.write_text("{")
    (state_file.parent / f".{state_file.name}.backup.k1ll3d.tmp").write_text("{")
    run_cli(quickstart, "apply", "--auto-approve")
    assert sorted(p.name for p in state_file.parent.glob(f".{state_file.name}.*.tmp")) == []
