"""Output: the one place results, messages and errors reach the terminal.

Results go to stdout (text, or one JSON document under --json); messages, warnings,
progress and errors go to stderr. Colour only on a TTY.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from protectctl.errors import ProtectctlError

STYLES = {
    "add": "green",
    "change": "yellow",
    "destroy": "red",
    "danger": "bold red",
    "dim": "dim",
    "bold": "bold",
    "warn": "yellow",
    "": "",
}


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            # not a terminal (CI, pipes): wide enough that tables never wrap their cells
            self._out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stdout.isatty()

    @property
    def can_prompt(self) -> bool:
        """A question can be answered: stdin is a terminal (the question itself goes to stderr)."""
        return sys.stdin.isatty()

    def document(self, doc: Mapping[str, Any]) -> None:
        """One JSON document on stdout."""
        sys.stdout.write(json.dumps(doc, indent=2, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def text(self, text: str) -> None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def lines(self, lines: Iterable[tuple[str, str]]) -> None:
        if not sys.stdout.isatty():
            # no colour to add: plain text, as rich costs ~0.2 ms a line (a 1,000-group plan is
            # 180,000 lines: 35 s through rich; see tests/bench/bench_plan.py)
            texts = [line for _style, line in lines]
            sys.stdout.write("\n".join(texts) + "\n" if texts else "")
            sys.stdout.flush()
            return
        from rich.text import Text

        for style, line in lines:
            self.out.print(Text(line, style=STYLES.get(style, "")))

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> None:
        from rich.table import Table

        table = Table(title=title, box=None, pad_edge=False, header_style="bold")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.out.print(table)

    def info(self, message: str, *, always: bool = False) -> None:
        if always or not self.quiet:
            self.err.print(message, markup=False, highlight=False)

    def warn(self, message: str) -> None:
        from rich.text import Text

        self.err.print(Text(f"Warning: {message}", style="yellow"))

    def error(self, err: ProtectctlError) -> None:
        from protectctl.errors import PolicyError

        diagnostics = list(err.diagnostics) if isinstance(err, PolicyError) else []
        if self.json_mode:
            doc: dict[str, Any] = {
                "format_version": "1.0",
                "error": {
                    "type": type(err).__name__,
                    "message": err.message,
                    "hint": err.hint,
                    "diagnostics": [d.to_json() for d in diagnostics],
                },
            }
            sys.stderr.write(json.dumps(doc, indent=2) + "\n")
            return
        from rich.text import Text

        for d in diagnostics:
            style = "red" if d.severity.value == "error" else "yellow"
            self.err.print(Text(str(d), style=style))
        self.err.print(Text(f"Error: {err.message}", style="bold red"))
        if err.hint:
            self.err.print(Text(f"  hint: {err.hint}", style="dim"))
