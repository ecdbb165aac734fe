"""The vmImage provider: a virtual machine's disk image (qcow2 or raw) protected at the host
level, incrementals read through a persistent dirty bitmap (see provider.py, docs/vm-images.md).

Importing the package loads only the thin provider class and its spec model.
"""

from __future__ import annotations

from protectctl.providers.vmimage.provider import VmImageProvider

__all__ = ["VmImageProvider"]
