"""A minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies): enough to read an
export of `qemu-nbd` over its Unix socket without a binding to libnbd.

READ, WRITE (a restore into a new image) and FLUSH. Requests are pipelined up to a small
depth; replies may come back in any order (qemu-nbd answers each as it completes): they are
matched by handle.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import deque
from collections.abc import Iterable, Iterator

from protectctl.errors import ProviderError

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = b"IHAVEOPT"
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_OPT_REPLY_MAGIC = 0x3E889045565A9
_REP_ACK = 1
_REP_INFO = 3
_INFO_EXPORT = 0
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_CMD_READ = 0
_CMD_WRITE = 1
_CMD_DISC = 2
_CMD_FLUSH = 3
MAX_READ = 32 << 20  # qemu-nbd's largest request
_TIMEOUT_S = 600  # for one reply, as qemu.run allows one command


class NbdClient:
    """One connection to an export; `size` is the export's size in bytes."""

    def __init__(self, socket_path: str, export: str, *, depth: int = 8) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(_TIMEOUT_S)  # a qemu-nbd that hangs never hangs the job
        self._depth = depth
        self._handle = 0
        try:
            self._sock.connect(socket_path)
            self.size = self._handshake(export.encode())
        except (OSError, struct.error) as err:
            self._sock.close()
            raise ProviderError(f"cannot read the image through qemu-nbd: {err}") from err

    def close(self) -> None:
        with contextlib.suppress(ProviderError):  # a goodbye to a server already gone
            self._request(_CMD_DISC, 0, 0)
        self._sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, command: int, offset: int, length: int) -> int:
        """Send a request header (a write's data follows it); returns the request's handle."""
        self._handle += 1
        self._send(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, command, self._handle, offset, length))
        return self._handle

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as err:  # qemu-nbd died or stopped answering: one clear line, not a traceback
            raise ProviderError(f"the connection to qemu-nbd failed: {err.strerror or err}") from err

    def _recv(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:])
            except OSError as err:
                raise ProviderError(f"the connection to qemu-nbd failed: {err.strerror or err}") from err
            if k == 0:
                raise ProviderError("qemu-nbd closed the connection")
            got += k
        return buf

    def _handshake(self, export: bytes) -> int:
        head = self._recv(18)
        if head[:8] != _NBDMAGIC or head[8:16] != _IHAVEOPT:
            raise ProviderError("the NBD server does not speak the newstyle protocol")
        (flags,) = struct.unpack(">H", head[16:18])
        if not flags & _FLAG_FIXED_NEWSTYLE:
            raise ProviderError("the NBD server does not speak fixed newstyle")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | (flags & _FLAG_NO_ZEROES)))
        data = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
        self._sock.sendall(_IHAVEOPT + struct.pack(">II", _OPT_GO, len(data)) + data)
        size: int | None = None
        while True:
            magic, _option, kind, length = struct.unpack(">QIII", self._recv(20))
            body = bytes(self._recv(length)) if length else b""
            if magic != _OPT_REPLY_MAGIC:
                raise ProviderError("the NBD server answered the export request with garbage")
            if kind & 0x80000000:
                raise ProviderError(f"the NBD server refused the export: {body[4:].decode(errors='replace')}")
            if kind == _REP_INFO and len(body) >= 12 and struct.unpack(">H", body[:2])[0] == _INFO_EXPORT:
                size = struct.unpack(">Q", body[2:10])[0]
            elif kind == _REP_ACK:
                break
        if size is None:
            raise ProviderError("the NBD server did not say the export's size")
        return size

    def read_ranges(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bytearray]]:
        """(offset, data) for each (offset, length) asked, in order, a few requests in flight."""
        pending: deque[tuple[int, int, int]] = deque()
        arrived: dict[int, bytearray] = {}
        todo = iter(ranges)
        done = False
        while True:
            while not done and len(pending) < self._depth:
                item = next(todo, None)
                if item is None:
                    done = True
                    break
                offset, length = item
                if length > MAX_READ or offset + length > self.size:
                    raise ProviderError(f"read of {length} bytes at {offset} is past the image or too long")
                pending.append((self._request(_CMD_READ, offset, length), offset, length))
            if not pending:
                return
            handle, offset, length = pending[0]
            while handle not in arrived:  # qemu-nbd may answer requests out of order
                magic, error, got = struct.unpack(">IIQ", self._recv(16))
                asked = next((p for p in pending if p[0] == got), None)
                if magic != _SIMPLE_REPLY_MAGIC or asked is None:
                    raise ProviderError(f"the NBD server sent an unexpected reply (magic {magic:#x})")
                if error:
                    raise ProviderError(f"reading the image at offset {asked[1]} failed (NBD error {error})")
                arrived[got] = self._recv(asked[2])
            pending.popleft()
            yield offset, arrived.pop(handle)

    def write_ranges(self, pieces: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> int:
        """Write each (offset, data), a few requests in flight, then flush; returns bytes written."""
        pending: dict[int, int] = {}  # handle -> offset
        written = 0
        for offset, data in pieces:
            if len(data) > MAX_READ or offset + len(data) > self.size:
                raise ProviderError(f"write of {len(data)} bytes at {offset} is past the image or too long")
            while len(pending) >= self._depth:
                self._acknowledge(pending, "writing")
            pending[self._request(_CMD_WRITE, offset, len(data))] = offset
            self._send(data)
            written += len(data)
        while pending:
            self._acknowledge(pending, "writing")
        pending[self._request(_CMD_FLUSH, 0, 0)] = 0
        self._acknowledge(pending, "flushing")
        return written

    def _acknowledge(self, pending: dict[int, int], doing: str) -> None:
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != _SIMPLE_REPLY_MAGIC or handle not in pending:
            raise ProviderError(f"the NBD server sent an unexpected reply (magic {magic:#x})")
        offset = pending.pop(handle)
        if error:
            raise ProviderError(f"{doing} the image at offset {offset} failed (NBD error {error})")
