"""The `vmImage:` member spec: its model only, so a policy validates without the rest."""

from __future__ import annotations

from pydantic import Field

from protectctl.policy.model import CamelSpec


class VmImageMember(CamelSpec):
    path: str = Field(description="the disk image (qcow2 or raw) on the host; a relative path on a local host "
                      "resolves against the policy file")
    domain: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                               description="a libvirt domain using the image: backups through its checkpoints "
                               "(needs libvirt on the host); without it the image must not be written during a sync")
