"""The systemState provider: what bare-metal recovery needs besides the files (see provider.py,
docs/system-state.md). Importing the package loads only the thin provider class and its spec."""

from __future__ import annotations

from protectctl.providers.systemstate.provider import SystemStateProvider

__all__ = ["SystemStateProvider"]
