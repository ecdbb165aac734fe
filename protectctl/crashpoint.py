"""Crash points: named moments of a long write where a kill test stops the process. Test-only.

`reached(name)` does nothing unless the environment variable PROTECTCTL_CRASH_POINT names this
point (`NAME`, or `NAME#N` for its N-th passage in this process). Then it appends
`NAME pid\\n` to the file PROTECTCTL_CRASH_ANNOUNCE and waits for the signal that ends the
process, so a test SIGKILLs a real run at exactly the phase it names, however fast or slow
the machine, with no fixed sleeps. Nothing else reads these variables.
"""

from __future__ import annotations

import os
import signal

_ENV_POINT = "PROTECTCTL_CRASH_POINT"
_ENV_ANNOUNCE = "PROTECTCTL_CRASH_ANNOUNCE"
_passages: dict[str, int] = {}


def reached(name: str) -> None:
    """Mark a phase; pause for good here if the test asked for this point."""
    wanted = os.environ.get(_ENV_POINT)
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point != name:
        return
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] != (int(nth) if nth else 1):
        return
    announce = os.environ.get(_ENV_ANNOUNCE)
    if announce:
        with open(announce, "a", encoding="utf-8") as out:
            out.write(f"{name} {os.getpid()}\n")
    while True:  # until the test's SIGKILL
        signal.pause()
