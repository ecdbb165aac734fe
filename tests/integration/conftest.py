"""Fixtures shared by the integration tests (the fleet's sshd servers live in sshd.py)."""

from tests.integration.sshd import pinned_wheelhouse  # noqa: F401
