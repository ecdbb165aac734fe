"""Reading MariaDB binary log files: pure, bytes in, facts out.

A binlog file is the magic ``\\xfebin`` and a run of events, each with a 19-byte header
(timestamp u32, type u8, server_id u32, length u32, next position u32, flags u16; little
endian). What a sync records and a restore needs:

* the file's identity: its Format_description event's timestamp (when the file was created)
  and whether the server still had it open (``LOG_EVENT_BINLOG_IN_USE_F``);
* the GTID state at its start (the Gtid_list event MariaDB writes at the head of each file):
  the chain check compares it with the previous file's last GTIDs;
* each transaction's start: its GTID event (domain, server, sequence number), its offset and
  its time (whole seconds: the binlog keeps no finer time);
* where valid events end (a server killed mid-write leaves a torn last event).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"\xfebin"
HEADER = struct.Struct("<IBIIIH")
FORMAT_DESCRIPTION = 15
ROTATE = 4
STOP = 3
GTID = 162
GTID_LIST = 163
IN_USE = 0x1


@dataclass(frozen=True, slots=True)
class Event:
    offset: int
    timestamp: int
    type: int
    server_id: int
    length: int
    flags: int


@dataclass(frozen=True, slots=True)
class Transaction:
    offset: int  # of its GTID event: where replay of it starts (a --stop-position before it)
    timestamp: int  # epoch seconds
    gtid: str  # domain-server-seqno


@dataclass(frozen=True, slots=True)
class BinlogFacts:
    created: int  # the Format_description timestamp: with the name, the file's identity
    in_use: bool  # the server had not closed it (the active file, or a crash)
    start_state: tuple[str, ...]  # GTIDs of the Gtid_list at the file's head, one per domain
    transactions: tuple[Transaction, ...]
    first_time: int | None
    last_time: int | None  # of the last event (a transaction's commit)
    valid_end: int  # bytes of whole events from the start
    size: int

    @property
    def last_gtids(self) -> tuple[str, ...]:
        """The state after this file: the start state advanced by its transactions, per domain.
        The Gtid_list at a file's head holds one GTID per domain *and server* (after a failover:
        0-1-25 and 0-2-27): a domain's state is its highest sequence number."""
        state: dict[str, str] = {}
        for g in self.start_state:
            domain, seqno = g.split("-")[0], g.rpartition("-")[2]
            if domain not in state or int(seqno) > int(state[domain].rpartition("-")[2]):
                state[domain] = g
        for t in self.transactions:
            state[t.gtid.split("-")[0]] = t.gtid
        return tuple(state[d] for d in sorted(state, key=int))


def events(data: bytes) -> Iterator[Event]:
    """The whole events of a binlog file; stops at a torn one. ValueError when it is not a binlog."""
    if not data.startswith(MAGIC):
        raise ValueError("not a MariaDB binary log (no \\xfebin magic)")
    pos = len(MAGIC)
    while pos + HEADER.size <= len(data):
        timestamp, kind, server_id, length, _next, flags = HEADER.unpack_from(data, pos)
        if length < HEADER.size or pos + length > len(data):
            return
        yield Event(pos, timestamp, kind, server_id, length, flags)
        pos += length


def read_facts(data: bytes) -> BinlogFacts:
    """What a sync records of one binlog file; ValueError when it is not a binlog."""
    created = 0
    in_use = False
    start_state: tuple[str, ...] = ()
    transactions: list[Transaction] = []
    first_time = last_time = None
    end = len(MAGIC) if data.startswith(MAGIC) else 0
    for event in events(data):
        end = event.offset + event.length
        body = data[event.offset + HEADER.size : end]
        if event.type == FORMAT_DESCRIPTION:
            created = event.timestamp
            in_use = bool(event.flags & IN_USE)
            continue
        if event.type == GTID_LIST:
            start_state = _gtid_list(body)
            continue
        if event.type == GTID and len(body) >= 12:
            seqno, domain = struct.unpack_from("<QI", body, 0)
            transactions.append(Transaction(event.offset, event.timestamp, f"{domain}-{event.server_id}-{seqno}"))
        if event.type in (ROTATE, STOP) or event.timestamp == 0:
            continue
        if transactions:
            first_time = transactions[0].timestamp if first_time is None else first_time
            last_time = event.timestamp
    return BinlogFacts(created, in_use, start_state, tuple(transactions), first_time, last_time, end, len(data))


def _gtid_list(body: bytes) -> tuple[str, ...]:
    if len(body) < 4:
        return ()
    count = struct.unpack_from("<I", body, 0)[0] & 0x0FFFFFFF
    out = []
    for i in range(count):
        at = 4 + 16 * i
        if at + 16 > len(body):
            break
        domain, server, seqno = struct.unpack_from("<IIQ", body, at)
        out.append(f"{domain}-{server}-{seqno}")
    return tuple(out)


def stop_offset(facts: BinlogFacts, stop_before: int, *, start: int = 0) -> int | None:
    """Where replay must stop so that no transaction started at or after `stop_before` (epoch
    seconds) is applied: the offset of the first such transaction's GTID event at or after
    `start`; None when the whole file is before it."""
    for t in facts.transactions:
        if t.offset >= start and t.timestamp >= stop_before:
            return t.offset
    return None


def sequence(name: str) -> int | None:
    """The number of a binlog file name (``binlog.000042`` → 42); None for another name."""
    _, dot, suffix = name.rpartition(".")
    return int(suffix) if dot and suffix.isdigit() else None


def build_event(timestamp: int, kind: int, server_id: int, body: bytes, flags: int = 0, at: int = 4) -> bytes:
    """One event's bytes (for tests and tools that write binlog-shaped data)."""
    length = HEADER.size + len(body)
    return HEADER.pack(timestamp, kind, server_id, length, at + length, flags) + body
