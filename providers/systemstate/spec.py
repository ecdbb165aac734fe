"""The `systemState:` member spec: its model only."""

from __future__ import annotations

from pydantic import Field

from protectctl.policy.model import CamelSpec


class SystemStateMember(CamelSpec):
    root: str = Field(
        "/",
        pattern=r"^/",
        description="the system's root directory: / for the running system, or "
        "a mounted one (its disks and kernel are then not captured)",
    )
    exclude: tuple[str, ...] = Field((), description="gitignore-style patterns of files under /etc not to capture")
