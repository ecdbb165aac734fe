"""Issue 6: the tape timer's own command line, one member at a time; D2T (`copyFrom: source`)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from protectctl import api
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from tests.conftest import REPO, cli_env, write_policy
from tests.integration.test_tape import POLICY, snapshot, write_data

TWO_MEMBERS = POLICY.format(capacity="10MB").replace(
    "      filesystem: {path: ./data}\n",
    "      filesystem: {path: ./data}\n    - name: etc\n      host: local\n      filesystem: {path: ./etc}\n",
)


def _site(tmp_path: Path, policy: str) -> Path:
    site = write_policy(tmp_path / "site", policy)
    write_data(site / "data", seed=1, big_files=0)
    write_data(site / "etc", seed=2, big_files=0)
    api.apply(site, confirm=lambda _plan: True)
    return site


def _cron_argv(site: Path, address: str) -> list[str]:
    """The command of the cron line apply rendered for `address` (`m h dom mon dow user CMD`)."""
    (path,) = api.read_state(site).resources[address].outputs["files"]
    (line,) = [
        ln
        for ln in Path(path).read_text().splitlines()
        if ln and not ln.startswith("#") and not re.match(r"[A-Z_]+=", ln)
    ]
    # the run's output is kept and printed only on failure: out=$( timeout … nice -n 19 ARGV 2>&1 ) || …
    match = re.search(r"out=\$\( (.*) 2>&1 \) \|\|", line.split(None, 6)[6])
    assert match, line
    argv = shlex.split(match.group(1))
    assert argv[:4] == ["timeout", "-k", "60", str(2 * 86400)] and argv[4:7] == ["nice", "-n", "19"]
    return argv[7:]


def test_the_rendered_tape_timer_command_copies_that_member(tmp_path: Path) -> None:
    site = _site(tmp_path, TWO_MEMBERS)
    api.tape_label(site, 1, "monthly")
    for member in ("home", "etc"):
        (r,) = api.run_backup(site, "full", "docs", member, agent_config=None, progress=None)
        assert r.ok
    argv = _cron_argv(site, "schedule.docs/home/tape")
    assert argv[1:] == ["-C", str(site), "run", "tape", "docs", "--member", "home"]
    # argv[0] is the agent's protectctl entry point; run this checkout's module with the same arguments
    proc = subprocess.run(
        [sys.executable, "-m", "protectctl", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env({"PYTHONPATH": str(REPO)}),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 point(s) copied" in proc.stdout and "docs/home" in proc.stdout
    assert {c.source for c in api.tape_service(site).catalog.copies.values()} == {"docs/home"}
    # the other member's timer copies the other member
    argv = _cron_argv(site, "schedule.docs/etc/tape")
    assert argv[-2:] == ["--member", "etc"]
    api_result = api.run_tape(site, "docs", "etc")
    assert [c.source for c in api_result.copied] == ["docs/etc"]


def test_d2t_copies_straight_from_the_source(tmp_path: Path) -> None:
    site = _site(tmp_path, POLICY.format(capacity="10MB").replace("copyFrom: disk", "copyFrom: source"))
    api.tape_label(site, 1, "monthly")
    original = snapshot(site / "data")
    (copied,) = api.run_tape(site, "docs", "home").copied
    assert copied.source == "docs/home"
    # nothing went through the disk repository
    passphrase = (site / ".protectctl/passphrase").read_bytes().strip()
    with Repository.open(LocalStorage(site / ".protectctl/repo"), passphrase) as repo:
        assert repo.list_points() == []
    write_data(site / "data", seed=9, big_files=0)  # the source moves on; the tape copy does not
    result = api.restore(
        site,
        "docs/home",
        "latest",
        agent_config=None,
        target=str(tmp_path / "r"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    assert result.point_id == copied.point_id
    assert snapshot(tmp_path / "r") == original
    # a second D2T run writes a new point (a full backup each time)
    (again,) = api.run_tape(site, "docs", "home").copied
    assert again.point_id != copied.point_id


def test_tape_runs_take_turns_and_a_refused_one_names_the_holder(tmp_path: Path) -> None:
    """Two runs never drive the library or rewrite the catalog at once: a run waits for the one
    before it (the members' tape timers fire together); one that gives up names the holder."""
    site = _site(tmp_path, TWO_MEMBERS)
    api.tape_label(site, 1, "monthly")
    for member in ("home", "etc"):
        (r,) = api.run_backup(site, "full", "docs", member, agent_config=None, progress=None)
        assert r.ok
    env = cli_env({"PYTHONPATH": str(REPO)})

    def hold(seconds: float) -> subprocess.Popen[str]:
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from pathlib import Path; from protectctl import api\n"
                "with api.tape_session(Path(sys.argv[1]), 'tape copy of docs'):\n"
                "    print('held', flush=True); time.sleep(float(sys.argv[2]))",
                str(site),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        return holder

    def run_tape(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "protectctl", "-C", str(site), "run", "tape", "docs", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    holder = hold(60)
    try:
        refused = run_tape("--member", "home", "--lock-timeout", "1s")
        assert refused.returncode != 0
        assert "tape libraries of this policy is busy" in refused.stderr and f"pid {holder.pid}" in refused.stderr
        assert "tape copy of docs" in refused.stderr and "Traceback" not in refused.stderr
        assert not api.tape_service(site).catalog.copies  # nothing was written
    finally:
        holder.kill()  # a holder that dies releases the lock at once
        holder.wait()
    assert run_tape("--member", "home").returncode == 0
    holder = hold(2)  # by default a run waits for the one before it
    waited = run_tape("--member", "etc")
    holder.wait()
    assert waited.returncode == 0, waited.stderr
    assert sorted(c.source for c in api.tape_service(site).catalog.copies.values()) == ["docs/etc", "docs/home"]
