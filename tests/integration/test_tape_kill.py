"""SIGKILL a real `protectctl run tape` at every phase of a copy; the next run completes and
`restore --from tape` restores every copy byte for byte.

Each phase is observed, not timed: the killed run is started with PROTECTCTL_CRASH_POINT
naming a crash point (protectctl.crashpoint), announces it has reached it in a file and
waits there; the test then SIGKILLs it. Points are bigger than a cartridge, so every run
relabels a scratch cartridge, appends to a filling one and spans, and every phase is reached.

By default (CI) only a telling subset of the phases runs (DEFAULT_CASES: a cold run killed after
relabelling, a span killed at a closed volume, and three kills in a row at header, index and data);
the CLI test below also kills mid-data on a filling cartridge. Run every phase with
PROTECTCTL_TEST_ALL_PHASES=1 (before a release, or after touching protectctl/tape/).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from protectctl import api
from tests.conftest import cli_argv, cli_env, run_cli, write_policy
from tests.integration.test_tape import POLICY, snapshot, write_data

# one drive, so a cartridge a killed run left loaded must be unloaded by the next run
KILL_POLICY = POLICY.format(capacity="1MB").replace("slots: 10", "slots: 40").replace("drives: 2", "drives: 1")

Kill = tuple[str, int, bool]  # crash point, its passage, whether `tape list` must show a partial segment

# every phase of a copy; `warm`: a filling cartridge exists before the killed run (else all scratch)
CASES: list[tuple[str, bool, list[Kill]]] = [
    ("scratch-mid-data", False, [("tape.data", 2, True)]),  # the cartridge was scratch when the run began
    ("relabelled", False, [("tape.relabelled", 1, False)]),  # relabelled, the catalog not yet told
    ("mounted", True, [("tape.mounted", 1, False)]),  # a filling cartridge positioned, nothing written
    ("header", True, [("tape.header", 1, True)]),  # a segment begun on a filling cartridge
    ("appending-mid-data", True, [("tape.data", 2, True)]),
    ("end-of-volume", True, [("tape.end-of-volume", 1, True)]),  # end-of-volume record, no filemark
    ("volume-closed", True, [("tape.volume-closed", 1, True)]),  # closed full, not yet recorded full
    ("continuation-header", True, [("tape.header", 2, True)]),  # part 2 begun on the next cartridge
    ("trailer", True, [("tape.trailer", 1, True)]),  # the trailer, no filemark yet
    ("filemark", True, [("tape.filemark", 1, True)]),  # closed, not yet read back nor recorded
    ("recorded", True, [("tape.recorded", 1, False)]),  # recorded, the cartridge still in its drive
    # kills in a row, each run leaving something for the next one; the middle one after the format-2
    # index, before its trailer (the trailer has its own case above)
    ("three-in-a-row", True, [("tape.header", 1, True), ("tape.index", 1, True), ("tape.data", 3, True)]),
]


ALL_PHASES = os.environ.get("PROTECTCTL_TEST_ALL_PHASES") == "1"
DEFAULT_CASES = {"relabelled", "volume-closed", "three-in-a-row"}
_ALL_ONLY = pytest.mark.skipif(not ALL_PHASES, reason="one of every phase: PROTECTCTL_TEST_ALL_PHASES=1")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    policy_dir = write_policy(tmp_path / "site", KILL_POLICY)
    api.apply(policy_dir, confirm=lambda _plan: True)
    api.tape_label(policy_dir, 12, "monthly")
    return policy_dir


def _backup(site: Path, seed: int, expected: dict[str, dict[str, bytes]]) -> None:
    write_data(site / "data", seed=seed, big_files=2)  # ~1.45 MB: more than one 1 MB cartridge
    (result,) = api.run_backup(site, "full", "docs", None, agent_config=None, progress=None)
    assert result.ok
    expected[result.point_id] = snapshot(site / "data")


def _kill_at(site: Path, tmp: Path, point: str, passage: int) -> None:
    """Run `protectctl run tape docs --all` until it announces `point`, then SIGKILL it."""
    announce = tmp / f"announce-{point}-{passage}"
    env = cli_env({"PROTECTCTL_CRASH_POINT": f"{point}#{passage}", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)})
    proc = subprocess.Popen(
        cli_argv(site, "run", "tape", "docs", "--all"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (announce.exists() and announce.read_text().endswith("\n")):
        if proc.poll() is not None:
            pytest.fail(f"run tape ended ({proc.returncode}) before reaching {point}#{passage}: {proc.stderr}")
        assert time.monotonic() < deadline, f"{point}#{passage} not reached"
        time.sleep(0.01)  # polling what the run announced, not waiting for it
    assert announce.read_text() == f"{point} {proc.pid}\n"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _restore_every_copy(site: Path, tmp: Path, expected: dict[str, dict[str, bytes]], tag: str) -> int:
    """Every copy the catalog lists, read from tape through the restore path (one session, so the
    tape key is unsealed once), compared byte for byte with its point's source tree."""
    (target,) = api.sources(site, agent_config=None, group="docs", member="home")
    job = api.source_job(target)
    with api.tape_session(site, "restore every copy") as service:
        copies = service.copies_of("docs/home")
        for copy in copies:
            into = tmp / f"restore-{tag}-{copy.point_id[:12]}"
            result = service.restore(job, copy, target=into, subpaths=(), dry_run=False, overwrite=False)
            assert result.point_id == copy.point_id
            assert snapshot(into) == expected[copy.point_id], f"{tag}: copy {copy.point_id[:12]} differs"
    return len(copies)


@pytest.mark.parametrize(
    ("warm", "kills"), [pytest.param(w, k, id=n, marks=() if n in DEFAULT_CASES else _ALL_ONLY) for n, w, k in CASES]
)
def test_sigkill_run_tape_then_every_copy_restores(site: Path, tmp_path: Path, warm: bool, kills: list[Kill]) -> None:
    expected: dict[str, dict[str, bytes]] = {}
    if warm:  # a first copy leaves the pool a filling cartridge
        _backup(site, 1, expected)
        assert len(api.run_tape(site, "docs", None).copied) == 1
    for i, (point, passage, leaves_partial) in enumerate(kills):
        _backup(site, 10 + i, expected)
        _kill_at(site, tmp_path, point, passage)
        if leaves_partial:  # the catalog names what the killed run left, before anything reads a tape
            assert any(r.partial for r in api.tape_list(site)), point
        verify = api.verify_tape(site, "docs", None)  # reads back every cartridge in use
        assert verify.ok, verify.bad

    rerun = run_cli(site, "run", "tape", "docs", "--all", timeout=180)
    assert "point(s) copied" in rerun.stdout
    assert {c.point_id for c in api.tape_service(site).copies_of("docs/home")} == set(expected)
    assert _restore_every_copy(site, tmp_path, expected, "rerun") == len(expected)
    assert not [p for r in api.tape_list(site) for p in r.partial if p.kind.value in ("writing", "unterminated")]
    assert api.verify_tape(site, "docs", None).ok

    # a catalog rebuilt from the cartridges alone keeps every copy restorable
    (site / ".protectctl/tape/catalog.json").unlink()
    rebuilt = api.tape_inventory(site, rebuild=True)
    assert rebuilt.copies == len(expected) and not rebuilt.problems
    assert _restore_every_copy(site, tmp_path, expected, "rebuilt") == len(expected)


def test_after_a_kill_the_cli_restores_and_verify_reports_the_partial_segment(site: Path, tmp_path: Path) -> None:
    """The issue's sequence through the CLI: a run killed while appending to a filling cartridge."""
    expected: dict[str, dict[str, bytes]] = {}
    _backup(site, 1, expected)
    run_cli(site, "run", "tape", "docs")
    _backup(site, 2, expected)
    _kill_at(site, tmp_path, "tape.data", 1)  # the filling cartridge has room for one data record
    listed = run_cli(site, "tape", "list").stdout
    assert "partial segment" in listed and "was being written when its run stopped" in listed
    verified = run_cli(site, "run", "verify", "docs").stdout
    assert "1 copy(ies) of docs whole" in verified and "has no filemark" in verified
    rerun = run_cli(site, "run", "tape", "docs").stdout
    assert "1 point(s) copied" in rerun and "repaired:" in rerun and "replaced the partial segment" in rerun
    for point_id, tree in expected.items():
        copy = api.tape_service(site).catalog.copies[point_id]
        run_cli(
            site,
            "restore",
            "docs/home",
            "--to-time",
            copy.point_time.isoformat(),
            "--from",
            "tape",
            "--target",
            str(tmp_path / point_id),
        )
        assert snapshot(tmp_path / point_id) == tree
    assert "partial segment" not in run_cli(site, "tape", "list").stdout
    inventory = run_cli(site, "tape", "inventory").stdout
    assert "problem" not in inventory and "partial" not in inventory


def test_copies_written_into_a_partial_file_by_older_versions_are_read_and_rebuilt(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cartridges damaged by the old append (a rerun's segment in the killed run's unterminated
    file, after its abandoned attempt) restore again, verify calls them whole, a rebuild keeps them."""
    from protectctl.tape.copy import PoolWriter

    expected: dict[str, dict[str, bytes]] = {}
    _backup(site, 1, expected)
    api.run_tape(site, "docs", None)
    _backup(site, 2, expected)
    _kill_at(site, tmp_path, "tape.data", 1)
    with monkeypatch.context() as old:  # the writer as it was: append at end of data, no read-back
        old.setattr(PoolWriter, "_position_for_append", lambda self, volume, cart: volume.drive.seek_end_of_data())
        old.setattr(PoolWriter, "_verify_segment", lambda self, *args: None)
        (legacy,) = api.run_tape(site, "docs", None, all_points=True).copied
    first = api.tape_service(site).catalog.copies[legacy.point_id].parts[0]
    assert _restore_every_copy(site, tmp_path, expected, "legacy") == 2

    verify = api.verify_tape(site, "docs", None)
    assert verify.ok, verify.bad
    assert any(f"{first.barcode} file {first.file}" in p and "abandoned attempt" in p for p in verify.partial)

    (site / ".protectctl/tape/catalog.json").unlink()
    rebuilt = api.tape_inventory(site, rebuild=True)
    assert rebuilt.copies == 2 and not rebuilt.problems
    assert _restore_every_copy(site, tmp_path, expected, "legacy-rebuilt") == 2
    _backup(site, 3, expected)  # and appending goes on after it
    assert len(api.run_tape(site, "docs", None).copied) == 1
    assert _restore_every_copy(site, tmp_path, expected, "legacy-appended") == 3
