"""What an interrupted command tells the user (Ctrl-C, SIGINT): what was left and how to go on.

A command sets its note before it starts work; the one error handler (cli/main.py) prints
it when KeyboardInterrupt reaches it. A leaf module, so any command module may import it.
"""

from __future__ import annotations

_note: list[str] = [""]


def on_interrupt(note: str) -> None:
    """What to say if this command is interrupted from now on."""
    _note[0] = note


def interrupt_message() -> str:
    note = _note[0]
    return f"Interrupted: {note}" if note else "Interrupted."
