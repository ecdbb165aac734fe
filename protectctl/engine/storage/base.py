"""The storage Protocol every backend implements, and its small vocabulary.

A backend stores named objects of a few kinds. It knows nothing of encryption, packs or
indexes; it only promises that a `put` is all-or-nothing (a reader sees the old object or
the whole new one, never a torn one) and that `get` returns exactly the bytes stored.
Retry, throttling and logging belong in wrappers that implement this same Protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from protectctl.errors import RepositoryError


class ObjectKind(StrEnum):
    CONFIG = "config"
    KEYS = "keys"
    DATA = "data"
    INDEX = "index"
    POINTS = "points"
    LOCKS = "locks"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    kind: ObjectKind
    name: str
    size: int


class ObjectMissingError(RepositoryError):
    """The named object does not exist (get/delete of a missing name)."""


class ObjectLockedError(RepositoryError):
    """The object is under object-lock retention (s3 `objectLock`) and cannot be deleted yet."""


class StorageBackend(Protocol):
    """Named objects in one place; every write is all-or-nothing."""

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        """Store `data` under (kind, name), replacing any old object atomically.

        `data` may be a memoryview of a buffer the caller reuses once `put` returns (the
        writer's pack buffers): a backend reads it during the call and never keeps it.
        """

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes from `offset` (`length` of them, or to the end); raises ObjectMissingError."""

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        """Every object of `kind`, in no particular order."""

    def delete(self, kind: ObjectKind, name: str) -> None:
        """Remove the object; raises ObjectMissingError if it is not there."""

    def exists(self, kind: ObjectKind, name: str) -> bool:
        """Whether the object is there."""

    def describe(self) -> str:
        """Where the objects live, for messages (e.g. "local:/srv/repo")."""


def discard_object(storage: StorageBackend, kind: ObjectKind, name: str) -> None:
    """Delete the object if it is there, no error if not: the store's own `discard` when it
    has one (s3: one DELETE instead of HEAD + DELETE), else `delete` with the miss ignored."""
    discard = getattr(storage, "discard", None)
    if discard is not None:
        discard(kind, name)
        return
    with contextlib.suppress(ObjectMissingError):
        storage.delete(kind, name)
