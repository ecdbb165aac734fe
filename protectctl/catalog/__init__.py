"""Recovery points and log ranges: query by source and time (pure helpers)."""

from __future__ import annotations

from protectctl.catalog.select import select_point
from protectctl.catalog.timespec import TimeSpecError, parse_time

__all__ = ["TimeSpecError", "parse_time", "select_point"]
