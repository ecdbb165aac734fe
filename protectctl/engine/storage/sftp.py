"""`RemoteStorage`: the storage Protocol on a repository reached over SSH (`type: sftp`).

The client side of `protectctl serve` (engine/storage/serve.py): every call is one request
and one answer on a byte stream, which the caller opens: an SSH exec channel to the backup
server (provision/ssh.py `open_stream`; with an agent's key the server forces
`protectctl serve --append-only --repo PATH`), or a local subprocess in tests. One request
at a time (a lock), so the writer's threads may share one backend.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from protectctl.engine.storage.base import ObjectInfo, ObjectKind, ObjectMissingError
from protectctl.engine.storage.serve import PROTOCOL_VERSION, AppendOnlyError, frame
from protectctl.errors import RepositoryError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Stream(Protocol):
    def send(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at end of stream."""

    def close(self) -> None: ...


class RemoteStorage:
    """Objects in a repository served by `protectctl serve` at the other end of a stream."""

    def __init__(self, connect: Callable[[], Stream], where: str) -> None:
        self._connect = connect
        self._where = where
        self._stream: Stream | None = None
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self.append_only: bool | None = None

    def describe(self) -> str:
        return f"sftp:{self._where}"

    # --- the Protocol ---------------------------------------------------------------

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        _check(name)
        self._call({"op": "put", "kind": kind.value, "name": name, "size": len(data)}, bytes(data))

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        _check(name)
        _, body = self._call({"op": "get", "kind": kind.value, "name": name, "offset": offset, "length": length})
        if length is not None and len(body) != length:
            raise RepositoryError(
                f"{self.describe()}: reading {kind}/{name}: wanted {length} bytes, the object is shorter"
            )
        return body

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        reply, _ = self._call({"op": "list", "kind": kind.value})
        items = reply.get("items")
        assert isinstance(items, list)
        return iter([ObjectInfo(kind, str(n), int(s)) for n, s in items])

    def delete(self, kind: ObjectKind, name: str) -> None:
        _check(name)
        self._call({"op": "delete", "kind": kind.value, "name": name})

    def exists(self, kind: ObjectKind, name: str) -> bool:
        _check(name)
        reply, _ = self._call({"op": "exists", "kind": kind.value, "name": name})
        return bool(reply.get("exists"))

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None

    # --- wire -----------------------------------------------------------------------

    def _open(self) -> Stream:
        if self._stream is None:
            stream = self._connect()
            self._stream = stream
            self._buffer.clear()
            reply, _ = self._exchange(stream, {"op": "hello"}, b"")
            if reply.get("version") != PROTOCOL_VERSION:
                raise RepositoryError(
                    f"{self.describe()}: the server speaks serve protocol "
                    f"{reply.get('version')}, this protectctl {PROTOCOL_VERSION}",
                    hint="upgrade protectctl on the backup server (apply does)",
                )
            self.append_only = bool(reply.get("append_only"))
        return self._stream

    def _call(self, header: dict[str, object], payload: bytes = b"") -> tuple[dict[str, object], bytes]:
        with self._lock:
            stream = self._open()
            try:
                reply, body = self._exchange(stream, header, payload)
            except (OSError, EOFError) as err:
                self._stream = None
                raise RepositoryError(f"{self.describe()}: connection lost: {err}") from err
        if reply.get("ok"):
            return reply, body
        message = f"{self.describe()}: {reply.get('message')}"
        error = reply.get("error")
        if error == "missing":
            raise ObjectMissingError(message)
        if error == "refused":
            raise AppendOnlyError(message, hint="this key is append-only; prune and check run from the control machine")
        if error == "invalid":
            raise ValueError(message)
        raise RepositoryError(message)

    def _exchange(self, stream: Stream, header: dict[str, object], payload: bytes) -> tuple[dict[str, object], bytes]:
        import json

        stream.send(frame(header, payload))
        line = self._read_line(stream)
        try:
            reply = json.loads(line)
        except ValueError:
            raise RepositoryError(
                f"{self.describe()}: the server did not answer in the serve protocol: {line[:200]!r}",
                hint="is protectctl installed on the backup server?",
            ) from None
        size = int(reply.get("size") or 0) if reply.get("ok") and header.get("op") == "get" else 0
        return reply, self._read_exact(stream, size)

    def _fill(self, stream: Stream) -> None:
        chunk = stream.recv(1 << 20)
        if not chunk:
            self._stream = None
            raise RepositoryError(
                f"{self.describe()}: the server closed the connection",
                hint="see the backup server's auth log; a key not authorised for this "
                "repository ends the session at once",
            )
        self._buffer += chunk

    def _read_line(self, stream: Stream) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            self._fill(stream)

    def _read_exact(self, stream: Stream, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill(stream)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _check(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"invalid object name {name!r}")


class ProcessStream:
    """A Stream over a subprocess's stdin/stdout (`protectctl serve` run locally; tests)."""

    def __init__(self, argv: list[str]) -> None:
        import subprocess

        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        assert self._proc.stdout is not None
        data: bytes = self._proc.stdout.read1(size)  # type: ignore[attr-defined]
        return data

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(timeout=10)
