"""vmImage's read-ahead thread (a consumer that stops early never waits on it forever), and a
restore's errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from protectctl.providers.vmimage.backup import prefetch


def _closes_within(pieces: Iterator[tuple[int, bytes]], exhausted: threading.Event) -> bool:
    """Take one piece, wait until the source is used up (the queue full behind it), then stop."""

    def consume() -> None:
        gen = prefetch(pieces, depth=1)
        next(gen)
        exhausted.wait(10)
        gen.close()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(10)
    return not worker.is_alive()


def test_stopping_after_the_source_ended_does_not_hang() -> None:
    exhausted = threading.Event()

    def pieces() -> Iterator[tuple[int, bytes]]:
        yield 0, b"a"
        yield 1, b"b"
        exhausted.set()

    assert _closes_within(pieces(), exhausted)


def test_stopping_after_the_source_failed_does_not_hang() -> None:
    exhausted = threading.Event()

    def pieces() -> Iterator[tuple[int, bytes]]:
        yield 0, b"a"
        yield 1, b"b"
        exhausted.set()
        raise OSError("read failed")

    assert _closes_within(pieces(), exhausted)


def test_a_target_directory_that_cannot_be_written_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protectctl.errors import RestoreError
    from protectctl.providers.vmimage import restore

    def refused(**_kw: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(restore.tempfile, "mkdtemp", refused)  # as a non-root user in a read-only directory
    request = SimpleNamespace(point=SimpleNamespace(tree=b"t"))
    with pytest.raises(RestoreError, match="cannot write beside .*: Permission denied"):
        restore._write(request, None, tmp_path / "vm.raw", "raw")  # type: ignore[arg-type]


def test_a_qemu_nbd_that_goes_away_is_one_clear_error(tmp_path: Path) -> None:
    import socket
    import struct

    from protectctl.errors import ProviderError
    from protectctl.providers.vmimage.nbd import NbdClient

    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()

        def serve() -> None:  # the handshake of a 1 MiB export, then a reset instead of a reply
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3))
                conn.recv(4)
                head = conn.recv(16)
                conn.recv(struct.unpack(">I", head[12:16])[0])
                info = struct.pack(">HQH", 0, 1 << 20, 0)
                for kind, body in ((3, info), (1, b"")):
                    conn.sendall(struct.pack(">QIII", 0x3E889045565A9, 7, kind, len(body)) + body)
                conn.recv(28)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        with NbdClient(path, "img") as client:
            assert client.size == 1 << 20
            with pytest.raises(ProviderError, match="qemu-nbd"):
                list(client.read_ranges([(0, 4096)]))
        worker.join(10)
