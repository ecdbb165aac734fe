"""The MariaDB recovery catalog: full backups, shipped binlogs, recoverable windows, gaps.

Pure: recovery points in (anything with `id`, `time`, `kind`, `extra`, `complete`), values
out. The facts come from each point's `extra["mariadb"]` (written by backup.py):

    base            a full backup: the binlog file and position it is consistent with, its GTID
                    state, and `consistent_at` (an instant after mariadb-backup's commit lock)
    binlogs         binlog files stored in this point: name, sequence number, creation time,
                    first/last transaction time (whole seconds), GTID state at its start and end
    covered_until   every transaction committed before this instant is in the binlogs shipped so
                    far (the sync flushed the binary log first)

A full F can be restored to any instant from its consistency point for as long as the
binlogs are continuous from the file holding F's position: the window is [F.consistent_at,
end], end the last transaction time (or coverage instant) of that continuous run. A missing
file ends the run, so a gap is never hidden: it shrinks the window and is reported. Files are
followed by sequence number; a file whose head GTID state does not continue the previous
file's (RESET MASTER, a purged file renamed) is a gap too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from protectctl.errors import RestoreError
from protectctl.providers._common import PointLike, Span, merged_spans
from protectctl.providers._common import iso_time as _dt
from protectctl.providers._common import maps as _maps


@dataclass(frozen=True, slots=True)
class Binlog:
    origin: str  # the server that wrote it ("server_id:basename"): numbering is per origin
    name: str
    seq: int
    created: int
    first_time: datetime | None
    last_time: datetime | None
    start_state: tuple[str, ...]
    end_state: tuple[str, ...]
    size: int
    point_id: str


@dataclass(frozen=True, slots=True)
class Link:
    """One binlog of a window's chain. `after` is set where the chain moves to another server's
    binlogs (a failover): replay of this file starts after the transactions of that GTID state."""

    binlog: Binlog
    after: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Base:
    point_id: str
    point_time: datetime
    origin: str
    binlog_file: str | None  # None: the server had binary logging off
    binlog_pos: int
    gtid: str
    consistent_at: datetime
    # an express full: the points whose streams a restore applies in order (the real full first,
    # then each express full's changed pages, this one last); a real full: its own id only
    chain: tuple[str, ...] = ()
    to_lsn: int | None = None  # the InnoDB LSN its copy reached (an express full starts there)
    identity: Mapping[str, object] | None = None  # the server and data directory it copied
    stream_bytes: int = 0

    @property
    def seq(self) -> int | None:
        return _seq(self.binlog_file) if self.binlog_file else None

    @property
    def express(self) -> bool:
        return len(self.chain) > 1

    @property
    def parts(self) -> tuple[str, ...]:
        return self.chain or (self.point_id,)


@dataclass(frozen=True, slots=True)
class Window:
    base: Base
    start: datetime
    end: datetime
    chain: tuple[Link, ...]  # the continuous binlogs from the base's file on

    def contains(self, when: datetime) -> bool:
        return self.start <= when <= self.end


@dataclass(frozen=True, slots=True)
class Gap:
    first_missing: str
    last_missing: str
    after: datetime | None  # the last transaction before the gap
    before: datetime | None  # the first one after it

    def describe(self) -> str:
        span = (
            self.first_missing
            if self.first_missing == self.last_missing
            else f"{self.first_missing}..{self.last_missing}"
        )
        return f"binlog {span} missing (transactions from {_t(self.after)} to {_t(self.before)} cannot be replayed)"


Key = tuple[str, int]  # (origin, sequence number)


@dataclass(frozen=True, slots=True)
class Catalog:
    bases: tuple[Base, ...]
    binlogs: Mapping[Key, Binlog]  # the newest stored copy of each
    windows: tuple[Window, ...]
    gaps: tuple[Gap, ...]
    orphans: tuple[tuple[str, str], ...] = ()  # (express full, the base it needs): not in the repository

    def base(self, point_id: str) -> Base | None:
        return next((b for b in self.bases if b.point_id == point_id), None)

    def merged(self) -> list[tuple[datetime, datetime]]:
        return merged_spans([(w.start, w.end) for w in self.windows])

    def shipped(self) -> set[tuple[str, str, int]]:
        """(origin, name, created) of every stored binlog: a sync ships what is not among them."""
        return {(b.origin, b.name, b.created) for b in self.binlogs.values()}

    def first_seq(self, origin: str) -> int | None:
        seqs = [s for o, s in self.binlogs if o == origin]
        return min(seqs) if seqs else None


@dataclass(frozen=True, slots=True)
class RestorePlan:
    base: Base
    window: Window
    # time: stop before `stop_before`; gtid: stop after transaction `gtid`; end/latest: replay all
    mode: Literal["time", "end", "latest", "gtid"]
    target: datetime | None
    files: tuple[Link, ...]  # to replay, in order (the first from the base's position)
    stop_before: int | None  # epoch seconds: no transaction started at or after it is replayed
    note: str = ""
    gtid: str | None = None  # mode gtid: the last transaction replayed (DOMAIN-SERVER-SEQNO)


def _epoch(value: object) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int) and value > 0 else None


def _t(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "?"


def _seq(name: str) -> int | None:
    _, dot, suffix = name.rpartition(".")
    return int(suffix) if dot and suffix.isdigit() else None


def _facts(point: PointLike) -> Mapping[str, object] | None:
    facts = point.extra.get("mariadb")
    return facts if isinstance(facts, Mapping) else None


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def build_catalog(points: Iterable[PointLike]) -> Catalog:
    """The catalog of one MariaDB source from its points (any order)."""
    bases: list[Base] = []
    chains: dict[str, tuple[str, ...]] = {}
    orphans: list[tuple[str, str]] = []
    files: dict[Key, Binlog] = {}
    coverage: list[tuple[Key, datetime]] = []
    for point in sorted(points, key=lambda p: p.time):
        facts = _facts(point)
        if facts is None or not point.complete:
            continue
        origin = str(facts.get("origin") or "")
        base = facts.get("base")
        if isinstance(base, Mapping):
            found = _base(point, origin, base, chains)
            if isinstance(found, Base):
                chains[point.id] = found.parts
                bases.append(found)
            else:
                orphans.append((point.id, found))  # its base is gone: it restores nothing (its binlogs still count)
        for raw in _maps(facts.get("binlogs")):
            seq = _seq(str(raw["name"]))
            if seq is None:
                continue
            files[(origin, seq)] = Binlog(
                origin,
                str(raw["name"]),
                seq,
                int(str(raw.get("created") or 0)),
                _epoch(raw.get("first_time")),
                _epoch(raw.get("last_time")),
                _strs(raw.get("start_state")),
                _strs(raw.get("end_state")),
                int(str(raw.get("size") or 0)),
                point.id,
            )
        until, through = _dt(facts.get("covered_until")), facts.get("covered_through_seq")
        if until is not None and isinstance(through, int):
            coverage.append(((origin, through), until))
    windows = tuple(_window(b, files, coverage) for b in bases)
    return Catalog(tuple(bases), files, windows, tuple(_gaps(files, bases)), tuple(orphans))


def _base(
    point: PointLike, origin: str, base: Mapping[str, object], chains: Mapping[str, tuple[str, ...]]
) -> Base | str:
    """The full of `point`; for an express full whose base is not a full of the catalog, that base's id."""
    express_of = base.get("express_of")
    if isinstance(express_of, str):
        if express_of not in chains:
            return express_of
        chain: tuple[str, ...] = (*chains[express_of], point.id)
    else:
        chain = (point.id,)
    to_lsn, identity = base.get("to_lsn"), base.get("identity")
    return Base(
        point.id,
        point.time,
        origin,
        str(base["binlog_file"]) if base.get("binlog_file") else None,
        int(str(base.get("binlog_pos") or 0)),
        str(base.get("gtid") or ""),
        _dt(base.get("consistent_at")) or point.time,
        chain,
        to_lsn if isinstance(to_lsn, int) else None,
        identity if isinstance(identity, Mapping) else None,
        int(str(base.get("stream_bytes") or 0)),
    )


def state_map(state: Sequence[str]) -> dict[int, int]:
    """A GTID state as domain → sequence number (the server part names who wrote it: a
    failover changes it, the numbering of the domain goes on). A binlog's Gtid_list holds one
    GTID per domain and server: the domain's state is the highest number."""
    out: dict[int, int] = {}
    for gtid in state:
        parts = gtid.split("-")
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            out[int(parts[0])] = max(out.get(int(parts[0]), 0), int(parts[2]))
    return out


def continues(prev: Binlog, nxt: Binlog) -> bool:
    """Whether `nxt` follows `prev` of the same server with nothing lost between them."""
    if nxt.origin != prev.origin or nxt.seq != prev.seq + 1:
        return False
    # each file starts with the GTID state the previous one ended with (per replication domain:
    # the head's Gtid_list also names the servers that wrote each domain before, e.g. after a failover)
    return state_map(nxt.start_state) == state_map(prev.end_state)


def takes_over(state: Sequence[str], other: Binlog) -> bool:
    """Whether `other` (another server's binlog: a replica that logs what it replicates) holds
    the transactions that come after `state`: it starts at or before it and ends beyond it."""
    have, start, end = state_map(state), state_map(other.start_state), state_map(other.end_state)
    if not have or not end:
        return False
    not_after = all(start.get(d, 0) <= n for d, n in have.items())
    return not_after and any(n > have.get(d, 0) for d, n in end.items())


def _hop(last: Binlog, files: Mapping[Key, Binlog]) -> Binlog | None:
    """The first binlog of another server that continues the chain after `last`."""
    found = [f for f in files.values() if f.origin != last.origin and takes_over(last.end_state, f)]
    return min(found, key=lambda f: (f.origin, f.seq)) if found else None


def _window(base: Base, files: Mapping[Key, Binlog], coverage: Sequence[tuple[Key, datetime]]) -> Window:
    seq = base.seq
    if seq is None or (base.origin, seq) not in files:
        return Window(base, base.consistent_at, base.consistent_at, ())
    end = base.consistent_at
    last = files[(base.origin, seq)]
    chain = [Link(last)]
    seen = {(last.origin, last.seq)}
    while True:
        if last.last_time is not None:
            end = max(end, last.last_time)
        nxt = files.get((last.origin, last.seq + 1))
        if nxt is not None and continues(last, nxt):
            chain.append(Link(nxt))
        elif (other := _hop(last, files)) is not None and (other.origin, other.seq) not in seen:
            chain.append(Link(other, last.end_state))
            nxt = other
        else:
            break
        seen.add((nxt.origin, nxt.seq))
        last = nxt
    tips = {link.binlog.origin: link.binlog.seq for link in chain}
    for (origin, through), until in coverage:
        if origin in tips and through <= tips[origin] and until > end:
            end = until
    return Window(base, base.consistent_at, end, tuple(chain))


def _gaps(files: Mapping[Key, Binlog], bases: Sequence[Base]) -> list[Gap]:
    gaps = []
    for origin in sorted({o for o, _ in files}):
        firsts = [b.seq for b in bases if b.seq is not None and b.origin == origin]
        present = sorted(s for o, s in files if o == origin and (not firsts or s >= min(firsts)))
        for before, after in zip(present, present[1:], strict=False):
            a, b = files[(origin, before)], files[(origin, after)]
            if continues(a, b):
                continue
            stem = a.name.rpartition(".")[0]
            width = len(a.name.rpartition(".")[2])
            if after > before + 1:
                first, last = f"{stem}.{before + 1:0{width}d}", f"{stem}.{after - 1:0{width}d}"
            else:
                first = last = f"between {a.name} and {b.name} (GTIDs do not continue)"
            gaps.append(Gap(first, last, a.last_time, b.first_time))
    return gaps


# -- choosing what a restore needs ---------------------------------------------------------


def stop_second(to_time: datetime) -> int:
    """Binlog times are whole seconds: a restore to T replays the transactions of the seconds
    before T's, never one that may have started after T."""
    return int(to_time.timestamp() // 1)


def plan_restore(catalog: Catalog, to_time: datetime | Literal["latest"], *, source: str = "") -> RestorePlan:
    """The full and binlogs for a restore to `to_time`; RestoreError says why not."""
    what = f" of {source}" if source else ""
    if not catalog.windows:
        raise RestoreError(
            f"nothing{what} can be restored: there is no full backup yet", hint="run `protectctl run full` first"
        )
    if to_time == "latest":
        window = max(catalog.windows, key=lambda w: (w.end, w.base.consistent_at))
        return RestorePlan(window.base, window, "latest", None, window.chain, None)
    candidates = [w for w in catalog.windows if w.contains(to_time)]
    if not candidates:
        raise refusal(catalog, to_time, what)
    window = max(candidates, key=lambda w: w.base.consistent_at)
    stop = stop_second(to_time)
    needed: list[Link] = []
    for link in window.chain:
        needed.append(link)
        if link.binlog.last_time is not None and link.binlog.last_time.timestamp() >= stop:
            break
    else:
        note = (
            f"no transaction started between the last shipped one and {_t(to_time)}: "
            "replaying all shipped binlogs of this window"
        )
        return RestorePlan(window.base, window, "end", to_time, tuple(needed), None, note)
    return RestorePlan(window.base, window, "time", to_time, tuple(needed), stop)


def parse_gtid(text: str) -> tuple[int, int, int]:
    """DOMAIN-SERVER-SEQNO as numbers; RestoreError when `text` is not one GTID."""
    parts = text.strip().split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise RestoreError(
            f"--to-gtid {text!r} is not a GTID",
            hint="give one MariaDB GTID, DOMAIN-SERVER-SEQNO (e.g. 0-1-42: `SELECT @@gtid_binlog_pos`)",
        )
    domain, server, seqno = (int(p) for p in parts)
    return domain, server, seqno


def plan_restore_gtid(catalog: Catalog, gtid: str, *, source: str = "") -> RestorePlan:
    """The full and binlogs for a restore through transaction `gtid` (it is replayed, the next one
    not): the newest full taken before it whose continuous binlogs reach it. RestoreError says
    why not: a malformed GTID, one before the first full, beyond the shipped binlogs, in a gap."""
    what = f" of {source}" if source else ""
    domain, server, seqno = parse_gtid(gtid)
    gtid = f"{domain}-{server}-{seqno}"
    if not catalog.windows:
        raise RestoreError(
            f"nothing{what} can be restored: there is no full backup yet", hint="run `protectctl run full` first"
        )
    found: list[tuple[Window, tuple[Link, ...]]] = []
    for window in catalog.windows:
        if window.base.binlog_file is None or _base_seq(window.base, domain) > seqno:
            continue  # the full holds changes after it: an older full must be the start
        needed: list[Link] = []
        for link in window.chain:
            needed.append(link)
            if state_map(link.binlog.end_state).get(domain, 0) >= seqno:
                found.append((window, tuple(needed)))
                break
    if found:
        window, files = max(found, key=lambda f: f[0].base.consistent_at)
        if _base_seq(window.base, domain) == seqno:  # the full itself is at that transaction
            files = files[:1]
        return RestorePlan(window.base, window, "gtid", None, files, None, gtid=gtid)
    raise gtid_refusal(catalog, domain, seqno, gtid, what)


def _base_seq(base: Base, domain: int) -> int:
    return state_map(base.gtid.split(",")).get(domain, 0)


def gtid_refusal(catalog: Catalog, domain: int, seqno: int, gtid: str, what: str) -> RestoreError:
    shipped = [state_map(b.end_state).get(domain) for b in catalog.binlogs.values()]
    last = max((n for n in shipped if n is not None), default=None)
    reachable = [
        (_base_seq(w.base, domain), max((state_map(k.binlog.end_state).get(domain, 0) for k in w.chain), default=0))
        for w in catalog.windows
        if w.base.binlog_file is not None
    ]
    listed = ", ".join(f"{a} to {b}" for a, b in gtid_spans(catalog)) or "none"
    if last is None:
        return RestoreError(
            f"GTID {gtid}: no shipped binlog{what} holds replication domain {domain}",
            hint=f"GTIDs that can be restored to: {listed}",
        )
    if seqno > last:
        return RestoreError(
            f"GTID {gtid} is beyond the shipped binlogs{what}: the last shipped transaction of domain "
            f"{domain} is number {last}",
            hint="run `protectctl run sync` first, or use `--to-time latest` to also replay the binlogs "
            "still on the source host",
        )
    if reachable and seqno < min(a for a, _ in reachable):
        return RestoreError(
            f"GTID {gtid} is before the first full backup{what} (its GTID state: domain {domain} at "
            f"{min(a for a, _ in reachable)})",
            hint=f"GTIDs that can be restored to: {listed}",
        )
    gaps = "; ".join(g.describe() for g in catalog.gaps)
    return RestoreError(
        f"GTID {gtid} cannot be reached{what}: the shipped binlogs from a full up to it are not continuous"
        + (f" ({gaps})" if gaps else ""),
        hint=f"GTIDs that can be restored to: {listed}",
    )


def refusal(catalog: Catalog, to_time: datetime, what: str) -> RestoreError:
    spans = catalog.merged()
    listed = ", ".join(f"{_t(a)} to {_t(b)}" for a, b in spans)
    if to_time < spans[0][0]:
        return RestoreError(
            f"{_t(to_time)} is before the first full backup{what} was consistent ({_t(spans[0][0])})",
            hint=f"recoverable: {listed}",
        )
    if to_time > spans[-1][1]:
        return RestoreError(
            f"{_t(to_time)} is after the last shipped binlog{what}: the newest recoverable instant is "
            f"{_t(spans[-1][1])}",
            hint="restore to a time up to then, run `protectctl run sync` first, or use `--to-time latest` "
            "to also replay the binlogs still on the source host",
        )
    gaps = "; ".join(g.describe() for g in catalog.gaps)
    return RestoreError(
        f"{_t(to_time)} falls in a gap of the shipped binlogs{what}" + (f": {gaps}" if gaps else ""),
        hint=f"recoverable: {listed}",
    )


def spans(catalog: Catalog) -> list[Span]:
    """The windows as browsing sees them: base, times, the points holding their binlogs."""
    return [span_of(w) for w in catalog.windows]


def span_of(window: Window) -> Span:
    return Span(
        window.base.point_id, window.start, window.end, frozenset(link.binlog.point_id for link in window.chain)
    )


def gtid_spans(catalog: Catalog) -> list[tuple[str, str]]:
    """The GTIDs a restore `--to-gtid` can reach, per replication domain, overlapping spans of the
    windows merged: (from, to), from being a full's own state (restoring to it replays nothing)."""
    spans: dict[int, list[tuple[int, int, str, str]]] = {}
    for w in catalog.windows:
        if w.base.binlog_file is None or not w.chain:
            continue
        ends: dict[int, str] = {}
        for link in w.chain:
            for g in link.binlog.end_state:
                d, n = int(g.split("-")[0]), int(g.rpartition("-")[2])
                if d not in ends or n > int(ends[d].rpartition("-")[2]):
                    ends[d] = g
        for d, end in ends.items():
            start = next((g for g in w.base.gtid.split(",") if g.startswith(f"{d}-")), f"{d}-0-0")
            spans.setdefault(d, []).append(
                (int(start.rpartition("-")[2]), int(end.rpartition("-")[2]), start.strip(), end)
            )
    out: list[tuple[str, str]] = []
    for d in sorted(spans):
        merged: list[tuple[int, int, str, str]] = []
        for lo, hi, a, b in sorted(spans[d]):
            if merged and lo <= merged[-1][1]:
                last = merged[-1]
                merged[-1] = (last[0], hi, last[2], b) if hi > last[1] else last
            else:
                merged.append((lo, hi, a, b))
        out += [(a, b) for _, _, a, b in merged]
    return out


def describe_windows(catalog: Catalog) -> list[str]:
    """Lines for `points list`: the recoverable spans, the GTIDs they reach, then every gap."""
    lines = [f"recoverable from {_t(a)} to {_t(b)}" for a, b in catalog.merged()]
    lines += [f"GTIDs {a} to {b} (restore --to-gtid)" for a, b in gtid_spans(catalog)]
    lines += [f"gap: {g.describe()}" for g in catalog.gaps]
    lines += [
        f"full {b.point_id[:12]} ({_t(b.consistent_at)}): binary logging was off, it restores to its own instant only"
        for b in catalog.bases
        if b.binlog_file is None
    ]
    return lines


def point_role(point: PointLike) -> Literal["base", "log", "point"]:
    """A real full is a base of the chain, a sync a log point, and so is an express full: like
    binlogs it rolls the full before it forward, so retention keeps the real full at or before
    the horizon and every express full and sync after it (agent/retention.py), and never an
    express full without its base."""
    facts = _facts(point)
    if facts is None:
        return "point"
    base = facts.get("base")
    return "base" if isinstance(base, Mapping) and not base.get("express_of") else "log"
