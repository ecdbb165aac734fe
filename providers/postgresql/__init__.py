"""The PostgreSQL provider (see provider.py and docs/postgresql.md).

Importing the package loads only the thin provider class and its spec model; the modules
that do the work (backup, restore, streaming, ...) are imported when a method needs them.
"""

from __future__ import annotations

from protectctl.providers.postgresql.provider import PostgresqlProvider

__all__ = ["PostgresqlProvider"]
