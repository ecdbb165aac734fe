"""The `vmImage:` member spec: its model only, so a policy validates without the rest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protectctl.policy.model import CamelSpec


class VmImageMember(CamelSpec):
    path: str = Field(
        description="the disk image (qcow2 or raw) on the host; a relative path on a local host "
        "resolves against the policy file"
    )
    format: Literal["auto", "qcow2", "raw"] = Field(
        "auto",
        description="the image's format; auto: probed at the first backup, then held to (set raw for a raw "
        "image: a guest can write what looks like a qcow2 header at its start)",
    )
    domain: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
        description="a libvirt domain using the image: backups through its checkpoints "
        "(needs libvirt on the host); without it the image must not be written during a sync",
    )
