"""run, points, restore, prune, check, status: the data path (filled by the engine issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
