"""`protectctl mount` (issue 15): a real read-only FUSE mount of recovery points.

One repository for the module (two points of a small source with files of two users the test
creates); each test runs the real CLI as a mount process and reads through it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protectctl import api
from protectctl.progress import NullProgress
from tests.conftest import cli_argv, cli_env, copy_example, run_cli, wait_until
from tests.integration.test_browse import fast_repository

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs root, /dev/fuse and fusermount3 (apt-get install fuse3)",
)

USERS = ("pc-browse-alice", "pc-browse-bob")
OLD = os.urandom(5 << 20)
NEW = OLD[: 2 << 20] + os.urandom(1 << 20) + OLD[3 << 20 :]


@dataclass
class Site:
    policy: Path


def _user(name: str, created: list[str]) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        created.append(name)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("mount")
    policy = copy_example("quickstart", base / "qs")
    data = policy / "data"
    fast_repository(policy)
    run_cli(policy, "-q", "apply", "--auto-approve")
    (data / "big.bin").write_bytes(OLD)
    shared = data / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    created: list[str] = []
    for name in USERS:
        user = _user(name, created)
        mine = shared / f"{name}.txt"
        mine.write_text(f"{name}'s own notes\n")
        mine.chmod(0o600)
        os.chown(mine, user.pw_uid, user.pw_gid)
    (first,) = api.run_backup(policy, "sync", "docs", None, agent_config=None, progress=NullProgress())
    (data / "big.bin").write_bytes(NEW)
    (second,) = api.run_backup(policy, "sync", "docs", None, agent_config=None, progress=NullProgress())
    assert first.ok and second.ok
    yield Site(policy)
    shutil.rmtree(base, ignore_errors=True)
    for name in created:  # the users this test made go with it
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def mountpoint() -> Iterator[Path]:
    """A mountpoint other users can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="protectctl-mount-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def _mount(site: Site, mountpoint: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cli_argv(site.policy, "mount", str(mountpoint), "docs/home", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    wait_until(
        lambda: proc.poll() is not None or os.path.exists(mountpoint / "docs" / "home" / "latest"), "the mount is up"
    )
    assert proc.poll() is None, proc.communicate()
    return proc


def test_reads_are_byte_exact_a_killed_mount_is_reusable_and_ctrl_c_unmounts(site: Site, mountpoint: Path) -> None:
    proc = _mount(site, mountpoint)
    home = mountpoint / "docs" / "home"
    assert (home / "latest" / "big.bin").read_bytes() == NEW
    first, second = sorted(os.listdir(home / "by-time"))  # by time; "-ID8" added within one second
    assert os.readlink(home / "latest") == f"by-time/{second}"
    assert (home / "by-time" / first / "big.bin").read_bytes() == OLD
    with (home / "by-time" / first / "big.bin").open("rb") as f:  # a read in the middle
        f.seek(3 << 20)
        assert f.read(4096) == OLD[3 << 20 : (3 << 20) + 4096]
    assert sorted(os.listdir(home / "latest")) == ["big.bin", "hello.txt", "report.txt", "shared"]
    with pytest.raises(OSError) as refused:
        (home / "latest" / "new.txt").write_bytes(b"x")
    assert refused.value.errno in (30, 13)  # EROFS (or EACCES: the directory is not writable)
    proc.kill()  # leaves "Transport endpoint is not connected" behind
    proc.wait(timeout=30)
    again = _mount(site, mountpoint)
    assert (home / "latest" / "hello.txt").read_bytes() == (site.policy / "data" / "hello.txt").read_bytes()
    again.send_signal(signal.SIGINT)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 130 and b"Traceback" not in err and b"unmounted" in err
    assert not os.path.ismount(mountpoint)


def test_allow_other_keeps_owners_and_modes(site: Site, mountpoint: Path) -> None:
    proc = _mount(site, mountpoint, "--allow-other")
    try:
        shared = mountpoint / "docs" / "home" / "latest" / "shared"
        alice, bob = USERS
        own = subprocess.run(["cat", str(shared / f"{alice}.txt")], user=alice, capture_output=True, text=True)
        assert own.returncode == 0 and own.stdout == f"{alice}'s own notes\n", own.stderr
        other = subprocess.run(["cat", str(shared / f"{bob}.txt")], user=alice, capture_output=True, text=True)
        assert other.returncode != 0 and "Permission denied" in other.stderr
        st = os.stat(shared / f"{bob}.txt")
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(bob).pw_uid, 0o600)
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        assert proc.wait(timeout=60) == 0
