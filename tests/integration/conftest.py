"""Fixtures shared by the integration tests (the fleet's sshd servers live in sshd.py)."""

# loop-mounted XFS, btrfs and ext4, one of each per session, shared by every module using them
from tests.integration.loopfs import btrfs_mount, ext4_seconds_mount, xfs_mount  # noqa: F401
from tests.integration.sshd import pinned_wheelhouse  # noqa: F401
from tests.integration.wheel import project_wheel  # noqa: F401
