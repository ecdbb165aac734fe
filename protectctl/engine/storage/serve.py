"""`protectctl serve`: the storage Protocol spoken over a byte stream (stdin/stdout of an SSH
forced command), and its append-only guard.

Wire format (version 1), both directions: one JSON header line (UTF-8, `\\n`-terminated),
then exactly `size` raw bytes when the header has a `size`. Requests:

    {"op": "hello"}                                         -> {"ok", "version", "append_only", "describe"}
    {"op": "put", "kind", "name", "size"} + bytes           -> {"ok"}
    {"op": "get", "kind", "name", "offset", "length"}       -> {"ok", "size"} + bytes
    {"op": "list", "kind"}                                  -> {"ok", "items": [[name, size], ...]}
    {"op": "delete", "kind", "name"}                        -> {"ok"}
    {"op": "exists", "kind", "name"}                        -> {"ok", "exists"}

Failures answer {"ok": false, "error": "missing" | "invalid" | "refused" | "failed", "message"}.

Append-only (`--append-only`, what a protected host's key is forced to run) lets a client add
objects but never delete or change one: `put` of an existing name is refused unless the bytes
are identical (an idempotent retry), `delete` is refused. The carve-out is `locks/`: a lock
is a lease its holder rewrites while it works and deletes when done, and stale locks of dead
holders must be removable, so lock objects may be overwritten and deleted. Locks hold no
data: the worst a compromised host can do with them is break the mutual exclusion of
prune, which can then only hurt recovery points written during that prune, never delete or
alter what was stored before (docs/fleet.md). Prune and check run without `--append-only`,
from the control machine's own key.

Engine-level: no policy, no SSH; the caller gives the streams.
"""

from __future__ import annotations

import json
from typing import BinaryIO

from protectctl.engine.storage.base import ObjectKind, ObjectMissingError
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import RepositoryError

PROTOCOL_VERSION = 1
MAX_HEADER = 64 * 1024


class AppendOnlyError(RepositoryError):
    """The storage refused to delete or overwrite an object (append-only)."""


def read_header(stream: BinaryIO) -> dict[str, object] | None:
    line = stream.readline(MAX_HEADER)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise RepositoryError("serve protocol: header line too long or truncated")
    header = json.loads(line)
    if not isinstance(header, dict):
        raise RepositoryError("serve protocol: header is not an object")
    return header


def read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise RepositoryError(f"serve protocol: stream ended {left} bytes early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def frame(header: dict[str, object], payload: bytes = b"") -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


class Server:
    """Answers requests on a LocalStorage; `append_only` forbids delete and overwrite (locks excepted)."""

    def __init__(self, storage: LocalStorage, *, append_only: bool) -> None:
        self.storage = storage
        self.append_only = append_only

    def serve(self, incoming: BinaryIO, outgoing: BinaryIO) -> None:
        while True:
            header = read_header(incoming)
            if header is None:
                return
            payload = read_exact(incoming, int(str(header.get("size", 0)))) if header.get("op") == "put" else b""
            try:
                reply, body = self.handle(header, payload)
            except ObjectMissingError as err:
                reply, body = {"ok": False, "error": "missing", "message": str(err)}, b""
            except AppendOnlyError as err:
                reply, body = {"ok": False, "error": "refused", "message": str(err)}, b""
            except ValueError as err:
                reply, body = {"ok": False, "error": "invalid", "message": str(err)}, b""
            except RepositoryError as err:
                reply, body = {"ok": False, "error": "failed", "message": str(err)}, b""
            outgoing.write(frame(reply, body))
            outgoing.flush()

    def handle(self, header: dict[str, object], payload: bytes) -> tuple[dict[str, object], bytes]:
        op = header.get("op")
        if op == "hello":
            return {
                "ok": True,
                "version": PROTOCOL_VERSION,
                "append_only": self.append_only,
                "describe": self.storage.describe(),
            }, b""
        kind = ObjectKind(str(header.get("kind")))
        name = str(header.get("name", ""))
        if op == "list":
            return {"ok": True, "items": [[i.name, i.size] for i in self.storage.list(kind)]}, b""
        if op == "exists":
            return {"ok": True, "exists": self.storage.exists(kind, name)}, b""
        if op == "get":
            length = header.get("length")
            data = self.storage.get(
                kind, name, int(str(header.get("offset", 0))), None if length is None else int(str(length))
            )
            return {"ok": True, "size": len(data)}, data
        if op == "put":
            if not self._already_stored(kind, name, payload):
                self.storage.put(kind, name, payload)
            return {"ok": True}, b""
        if op == "delete":
            if self.append_only and kind is not ObjectKind.LOCKS:
                raise AppendOnlyError(f"append-only: deleting {kind}/{name} is refused")
            self.storage.delete(kind, name)
            return {"ok": True}, b""
        raise ValueError(f"unknown operation {op!r}")

    def _already_stored(self, kind: ObjectKind, name: str, payload: bytes) -> bool:
        """Append-only: True for an identical retry; raises for an overwrite."""
        if not self.append_only or kind is ObjectKind.LOCKS or not self.storage.exists(kind, name):
            return False
        try:
            same = self.storage.get(kind, name) == payload
        except ObjectMissingError:
            return False
        if not same:
            raise AppendOnlyError(f"append-only: overwriting {kind}/{name} is refused")
        return True
