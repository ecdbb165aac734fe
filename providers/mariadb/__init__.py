"""The MariaDB provider (see provider.py and docs/mariadb.md).

Importing the package loads only the thin provider class and its spec model; the modules
that do the work (backup, restore, binlog reading, ...) are imported when a method needs them.
"""

from __future__ import annotations

from protectctl.providers.mariadb.provider import MariadbProvider

__all__ = ["MariadbProvider"]
