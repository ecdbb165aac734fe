"""The state backend interface: read, write, lock. Local file, s3 object, postgres table."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from protectctl.state.model import State


class StateBackend(Protocol):
    def read(self) -> State:
        """The current state (an empty one with a new lineage if none was written)."""

    def exists(self) -> bool:
        """Whether a state was ever written."""

    def write(self, state: State) -> None:
        """Persist all-or-nothing, keeping the previous state as a backup."""

    def lock(self, command: str, timeout_s: float) -> AbstractContextManager[None]:
        """Hold the state lock; raises StateLockedError naming the holder after timeout_s."""

    def unlock(self, force: bool = False) -> str:
        """Break a lock left behind; returns what was removed."""

    def describe(self) -> str: ...
