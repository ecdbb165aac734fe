"""`CachedStorage`: a local copy of the small immutable objects a job reads every run.

Every backup job reads every point manifest of the repository (to find its source's points)
and every index object. On a store whose requests cost (s3: 5-40 ms each) that grows with the
repository: 14 days of 15-minute syncs of four sources are ~5,400 manifests, so ~5,400 GETs per
sync. Both kinds are written once under their name and never rewritten (a point's name is
its random id, an index object's the BLAKE3 of its bytes), so a copy kept by name stays
right until the object is deleted, which a listing shows. As restic does with its cache.

- `get` of a whole POINTS or INDEX object: the local copy if there is one, else the store's
  (then kept). An index copy is kept and served only if its bytes hash to its name; a
  manifest copy is authenticated when the repository opens it (sealed with the point id as
  associated data), and a copy that does not open is dropped (`evict_cached`) and read again.
- `put` keeps a copy of what it stored, so the next run does not read back its own objects.
- `list` of those kinds asks the store (the truth) and, once the listing is complete, drops
  the copies of names no longer listed (gc and prune deleted them): the cache never holds more
  than the repository does.
- Everything else passes through. Copies are written atomically (a temporary file renamed)
  with mode 0600 under the agent's state directory; several agents sharing it is safe (a
  copy dropped by one's listing while another keeps it is read again next time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protectctl.engine.crypto import content_name
from protectctl.engine.storage.base import ObjectInfo, ObjectKind, StorageBackend, discard_object

CACHED_KINDS = (ObjectKind.POINTS, ObjectKind.INDEX)


def cache_dir_for(state_dir: Path, storage: StorageBackend) -> Path:
    """One directory per repository location under the agent's state directory."""
    where = hashlib.sha256(storage.describe().encode()).hexdigest()[:24]
    return state_dir / "cache" / "objects" / where


class CachedStorage:
    """A StorageBackend keeping local copies of POINTS and INDEX objects (see the module doc)."""

    def __init__(self, inner: StorageBackend, directory: Path) -> None:
        self.inner = inner
        self.directory = directory
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:  # the store's tuning (read_parallelism, ...) and extras
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # --- the Protocol ---------------------------------------------------------------

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        self.inner.put(kind, name, data)
        if kind in CACHED_KINDS:
            self._keep(kind, name, bytes(data))

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind not in CACHED_KINDS or offset or length is not None:
            return self.inner.get(kind, name, offset, length)
        path = self._path(kind, name)
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                pass
            else:
                if self._valid(kind, name, data):
                    self.hits += 1
                    return data
                self.evict(kind, name)
        self.misses += 1
        data = self.inner.get(kind, name)
        self._keep(kind, name, data)
        return data

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        if kind not in CACHED_KINDS:
            yield from self.inner.list(kind)
            return
        listed: set[str] = set()
        for info in self.inner.list(kind):
            listed.add(info.name)
            yield info
        self._prune(kind, listed)  # reached only when the listing was read to its end

    def delete(self, kind: ObjectKind, name: str) -> None:
        self.evict(kind, name)
        self.inner.delete(kind, name)

    def discard(self, kind: ObjectKind, name: str) -> None:
        self.evict(kind, name)
        discard_object(self.inner, kind, name)

    def exists(self, kind: ObjectKind, name: str) -> bool:
        return self.inner.exists(kind, name)

    def describe(self) -> str:
        return self.inner.describe()

    # --- the copies -------------------------------------------------------------------

    def evict(self, kind: ObjectKind, name: str) -> None:
        path = self._path(kind, name)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def _path(self, kind: ObjectKind, name: str) -> Path | None:
        # names are hex (point ids, content names); anything else is never cached
        if kind not in CACHED_KINDS or not name or len(name) > 128 or not all(c in "0123456789abcdef" for c in name):
            return None
        return self.directory / kind.value / name

    @staticmethod
    def _valid(kind: ObjectKind, name: str, data: bytes) -> bool:
        return kind is not ObjectKind.INDEX or content_name(data) == name

    def _keep(self, kind: ObjectKind, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        if path is None or not self._valid(kind, name, data):
            return
        tmp = path.with_name(f".{name}.{os.getpid()}.{id(data):x}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:  # a cache: a full or read-only disk only costs the GET next time
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _prune(self, kind: ObjectKind, listed: set[str]) -> None:
        directory = self.directory / kind.value
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        stale = time.time() - 3600  # a temporary file a killed writer left
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name.startswith("."):
                    if entry.stat().st_mtime < stale:
                        os.unlink(entry.path)
                elif entry.name not in listed:
                    os.unlink(entry.path)


def evict_cached(storage: StorageBackend, kind: ObjectKind, name: str) -> bool:
    """Drop the local copy of (kind, name) from the CachedStorage under `storage` (through
    wrappers that name theirs `inner`); False when there is none, so nothing to read again."""
    layer: Any = storage
    for _ in range(8):
        if isinstance(layer, CachedStorage):
            layer.evict(kind, name)
            return True
        layer = layer.__dict__.get("inner") if hasattr(layer, "__dict__") else None
        if layer is None:
            return False
    return False
