"""Small real filesystems for tests: a sparse image file, mkfs, `mount -o loop`.

Each kind is mounted once per test session (session-scoped fixtures) and unmounted at the end;
tests work in their own subdirectory of it. A machine that cannot (not root, no mkfs, no loop
device) skips the test and says why: never a silent pass.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

IMAGE_SIZE = 320 << 20  # the smallest size every mkfs below accepts with room to spare

# kind -> (mkfs argv before the image path, mount options)
_KINDS: dict[str, tuple[list[str], str]] = {
    "xfs": (["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], ""),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], ""),
    # 128-byte inodes keep timestamps in whole seconds: racy changes are easy to provoke.
    "ext4-seconds": (["mkfs.ext4", "-q", "-F", "-I", "128"], ""),
}


def _mount(kind: str, base: Path) -> Path:
    mkfs, options = _KINDS[kind]
    if os.geteuid() != 0:
        pytest.skip(f"mounting a loop {kind} filesystem needs root")
    if shutil.which(mkfs[0]) is None:
        pytest.skip(f"{mkfs[0]} is not installed (.ci/run installs it)")
    image = base / f"{kind}.img"
    with open(image, "wb") as handle:
        handle.truncate(IMAGE_SIZE)  # sparse: costs only what the filesystem writes
    mountpoint = base / kind
    mountpoint.mkdir()
    made = subprocess.run([*mkfs, str(image)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"{mkfs[0]} failed: {made.stderr.strip()[:200]}")
    argv = ["mount", "-o", ",".join(filter(None, ["loop", options])), str(image), str(mountpoint)]
    mounted = subprocess.run(argv, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount {kind}: {mounted.stderr.strip()[:200]}")
    return mountpoint


def _unmount(mountpoint: Path) -> None:
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
    if done.returncode != 0:  # still busy (a test's process lingers): detach lazily
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


@contextlib.contextmanager
def loop_filesystem(kind: str, base: Path) -> Iterator[Path]:
    mountpoint = _mount(kind, base)
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)
        with contextlib.suppress(OSError):
            (base / f"{kind}.img").unlink()


def fresh_dir(mountpoint: Path, name: str = "t") -> Path:
    """A new directory of its own on a shared mount."""
    path = mountpoint / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def xfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_filesystem("xfs", tmp_path_factory.mktemp("loopfs-xfs")) as mountpoint:
        yield mountpoint


@pytest.fixture(scope="session")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_filesystem("btrfs", tmp_path_factory.mktemp("loopfs-btrfs")) as mountpoint:
        yield mountpoint


@pytest.fixture(scope="session")
def ext4_seconds_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_filesystem("ext4-seconds", tmp_path_factory.mktemp("loopfs-ext4")) as mountpoint:
        yield mountpoint
