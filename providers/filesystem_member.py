"""The member spec of the filesystem provider (`filesystem:` in a ProtectionGroup member).

Its own module so that the provider loads without pydantic: only reading a policy needs the
model (providers/filesystem.py imports it on first use of `spec_model`).
"""

from __future__ import annotations

from typing import Literal

from protectctl.policy.model import CamelSpec, SizeText


class FilesystemMember(CamelSpec):
    path: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    one_file_system: bool = False
    snapshot: Literal["auto", "btrfs", "reflink", "none"] = "auto"
    change_tracking: Literal["auto", "off"] = "auto"
    change_tracking_min_size: SizeText | None = None
    change_tracking_block_size: SizeText | None = None
    change_journal: Literal["watch", "off"] = "off"
