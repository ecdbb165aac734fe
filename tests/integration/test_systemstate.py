"""systemState end to end: capture this machine, restore to a directory, compare, check the runbook."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from protectctl.agent.jobs import RetentionSpec, SourceJob, list_points, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import RestoreError
from protectctl.providers.systemstate.runbook import STEPS

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="a Debian system (dpkg) is captured")
PASS = b"state pass"


def _job(tmp: Path, root: str = "/") -> SourceJob:
    storage = LocalStorage(tmp / "repo")
    if not Repository.exists(storage):
        Repository.init(storage, PASS, kdf_n=2**10)
    return SourceJob(
        source="hosts/system",
        provider="systemState",
        spec={"root": root},  # type: ignore[call-arg]
        storage=storage,
        passphrase=lambda: PASS,
        state_dir=tmp / "state",
        host="app1",
        retention=RetentionSpec(keep_within_s=86400),
    )


def test_capture_this_machine_restore_and_check_the_runbook(tmp_path: Path) -> None:
    started = time.time() - 1
    before = subprocess.run(["dpkg", "--get-selections"], capture_output=True, text=True, check=True).stdout
    job = _job(tmp_path)
    result = run_backup(job, "sync")
    assert result.ok, result.errors
    out = tmp_path / "restored"
    restored = restore(job, "latest", target=out)
    assert any("recover.sh" in n for n in restored.notes)

    after = subprocess.run(["dpkg", "--get-selections"], capture_output=True, text=True, check=True).stdout
    assert (out / "state/packages/dpkg-selections.txt").read_text() in (before, after)  # unless both moved
    # /etc byte-exact (files other processes created or changed during the test aside: ctime)
    compared = 0
    for dirpath, _dirs, files in os.walk("/etc"):
        for name in files:
            live = Path(dirpath) / name
            try:
                st = live.lstat()
            except OSError:
                continue
            if not live.is_file() or live.is_symlink() or st.st_ctime >= started:  # changed meanwhile
                continue
            copy = out / "etc" / live.relative_to("/etc")
            assert copy.read_bytes() == live.read_bytes(), live
            assert copy.stat().st_mode == st.st_mode, live
            compared += 1
    assert compared > 50
    assert (out / "etc/shadow").exists() and (out / "etc/shadow").stat().st_mode & 0o077 == (
        Path("/etc/shadow").stat().st_mode & 0o077
    )

    runbook = out / "recover.sh"
    subprocess.run(["bash", "-n", str(runbook)], check=True)
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", "-x", str(runbook)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    dry = subprocess.run(
        [str(runbook), "--dry-run", "--root", str(tmp_path / "newroot")], capture_output=True, text=True, check=True
    ).stdout
    for number, name in enumerate(STEPS, 1):
        assert f"== step {number}: {name}" in dry
    assert "would run: cp -a --remove-destination" in dry and "nothing was changed" in dry
    assert "shadow" not in result.__repr__()  # counts only, never the content
    shadow_line = Path("/etc/shadow").read_text().splitlines()[0]
    assert shadow_line not in dry

    # a second sync reads only what changed in /etc and the freshly captured state
    second = run_backup(job, "sync")
    assert second.ok and second.bytes_read < result.bytes_read
    assert len(list_points(job.storage, PASS)) == 2
    with pytest.raises(RestoreError, match="never onto the live system"):
        restore(job, "latest", target=None)


def test_runbook_with_disks_is_shellcheck_clean(tmp_path: Path) -> None:
    from protectctl.providers.systemstate.runbook import render

    manifest = {
        "hostname": "app1",
        "files": {"packages/dpkg-selections.txt": "", "packages/apt-manual.txt": "", "kernel/cmdline": ""},
        "disks": [{"name": "sda", "path": "/dev/sda", "pttype": "gpt"}],
        "units": ["ssh.service", "fstrim.timer", "getty@tty1.service"],
    }
    script = tmp_path / "recover.sh"
    script.write_text(render(manifest, point="p1"))
    script.chmod(0o700)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    for name in ("packages/dpkg-selections.txt", "packages/apt-manual.txt", "kernel/cmdline"):
        (tmp_path / "state" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "state" / name).write_text("root=/dev/sda2 ro\n" if name == "kernel/cmdline" else "")
    dry = subprocess.run([str(script), "--dry-run"], capture_output=True, text=True, check=True).stdout
    assert "skipped /dev/sda: pass --partition" in dry
    assert "would run: systemctl --root=/ enable -- ssh.service fstrim.timer getty@tty1.service" in dry
    assert "root=/dev/sda2 ro" in dry
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_exclude_patterns_are_checked_by_validate() -> None:
    from protectctl.providers.systemstate import SystemStateProvider
    from protectctl.providers.systemstate.spec import SystemStateMember

    spec = SystemStateMember.model_validate({"exclude": ["ssl/private/", "!"]})
    (problem,) = SystemStateProvider().check_member(spec, source="hosts/system", hosts=None)
    assert problem.path == ("exclude", 1) and "empty pattern" in problem.summary
