"""How `--help` lists commands: each command's first sentence whole, wrapped, never cut off.

Click cuts a command's summary to what fits one line (`Cartridges: barcode, pool, state,
location, expiry, key id,...`); this group wraps it instead. Used by every typer app of the CLI.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup

_NO_LIMIT = 10_000


class HelpGroup(TyperGroup):
    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, command.get_short_help_str(_NO_LIMIT)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
