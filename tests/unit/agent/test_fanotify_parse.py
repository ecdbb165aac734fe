"""fanotify records as the kernel writes them, parsed (agent/fanotify.py); no kernel needed."""

from __future__ import annotations

import struct

from protectctl.agent.fanotify import FAN_CREATE, FAN_MODIFY, FAN_ONDIR, FAN_Q_OVERFLOW, Event, parse


def _record(mask: int, name: bytes, *, handle: bytes = b"\x01" * 8, info_type: int = 2) -> bytes:
    body = struct.pack("=ii", 7, -9) + struct.pack("=Ii", len(handle), 0x81) + handle
    if info_type == 2:
        body += name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)  # the kernel pads records to 4 bytes
    info = struct.pack("=BBH", info_type, 0, 4 + len(body)) + body
    return struct.pack("=IBBHQii", 24 + len(info), 3, 0, 24, mask, -1, 42) + info


def test_directory_handles_names_and_an_overflow() -> None:
    data = (
        _record(FAN_MODIFY, b"file")
        + _record(FAN_CREATE | FAN_ONDIR, b"sub", handle=b"\x02" * 12)
        + struct.pack("=IBBHQii", 24, 3, 0, 24, FAN_Q_OVERFLOW, -1, 0)  # no info record
        + _record(FAN_MODIFY, b"", info_type=3)  # a DFID record without a name: the directory itself
        + _record(FAN_MODIFY, b"after")
    )
    events = list(parse(data))
    assert events == [
        Event(FAN_MODIFY, (7, -9), 0x81, b"\x01" * 8, b"file"),
        Event(FAN_CREATE | FAN_ONDIR, (7, -9), 0x81, b"\x02" * 12, b"sub"),
        Event(FAN_Q_OVERFLOW),
        Event(FAN_MODIFY, (7, -9), 0x81, b"\x01" * 8, b"."),
        Event(FAN_MODIFY, (7, -9), 0x81, b"\x01" * 8, b"after"),
    ]
    assert events[2].overflow and not events[0].overflow
