"""The pure parts of the mariadb provider: reading binlogs, the recovery catalog (windows,
gaps, what a restore to T replays), apply's decision on binary logging, the target checks, and
the point roles prune keeps a binlog chain by."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from protectctl.errors import ProviderError, RestoreError
from protectctl.provider import LogChain, RestoreOptions, load_provider
from protectctl.providers.mariadb import binlog as bl
from protectctl.providers.mariadb.catalog import build_catalog, describe_windows, plan_restore, point_role
from protectctl.providers.mariadb.prepare import needed, refusal
from protectctl.providers.mariadb.restore_server import check_target, local_binlogs
from protectctl.providers.mariadb.server import Server

T0 = 1_800_000_000  # epoch seconds


def gtid_event(ts: int, seqno: int, domain: int = 0, server: int = 1) -> bytes:
    return bl.build_event(ts, bl.GTID, server, struct.pack("<QIB", seqno, domain, 0) + b"\0" * 6)


def binlog_bytes(
    created: int, start: list[tuple[int, int, int]], txns: list[tuple[int, int]], *, in_use: bool = False
) -> bytes:
    """A binlog: format description, Gtid_list (domain, server, seqno), then per transaction
    (time, seqno) a GTID event and an XID event."""
    out = bytearray(bl.MAGIC)
    out += bl.build_event(created, bl.FORMAT_DESCRIPTION, 1, b"\x04\x00" + b"x" * 60, flags=bl.IN_USE if in_use else 0)
    body = struct.pack("<I", len(start)) + b"".join(struct.pack("<IIQ", d, s, n) for d, s, n in start)
    out += bl.build_event(created, bl.GTID_LIST, 1, body)
    for ts, seqno in txns:
        out += gtid_event(ts, seqno)
        out += bl.build_event(ts, 16, 1, b"\0" * 8)  # XID: the commit
    return bytes(out)


def test_binlog_facts_identity_gtids_and_transactions() -> None:
    data = binlog_bytes(T0, [(0, 1, 7)], [(T0 + 1, 8), (T0 + 5, 9)], in_use=True)
    facts = bl.read_facts(data)
    assert facts.created == T0 and facts.in_use
    assert facts.start_state == ("0-1-7",) and facts.last_gtids == ("0-1-9",)
    assert [t.gtid for t in facts.transactions] == ["0-1-8", "0-1-9"]
    assert (facts.first_time, facts.last_time) == (T0 + 1, T0 + 5)
    assert facts.valid_end == facts.size == len(data)
    # a server killed mid-write: the torn last event is not counted, what precedes it is whole
    torn = bl.read_facts(data + gtid_event(T0 + 9, 10)[:20])
    assert torn.valid_end == len(data) and len(torn.transactions) == 2
    # replay stops before the first transaction of the stop second, never inside one
    assert bl.stop_offset(facts, T0 + 5) == facts.transactions[1].offset
    assert bl.stop_offset(facts, T0 + 6) is None
    assert bl.stop_offset(facts, T0, start=facts.transactions[1].offset) == facts.transactions[1].offset
    with pytest.raises(ValueError, match="not a MariaDB binary log"):
        bl.read_facts(b"hello")
    assert bl.sequence("mariadb-bin.000042") == 42 and bl.sequence("mariadb-bin.index") is None


@dataclass(frozen=True)
class P:
    id: str
    time: datetime
    kind: str
    extra: Mapping[str, object] = field(default_factory=dict)
    complete: bool = True
    source: str = "shop/db"


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def record(seq: int, first: int, last: int, start: str, end: str) -> dict[str, object]:
    return {
        "name": f"mariadb-bin.{seq:06d}",
        "created": T0 + first,
        "size": 100,
        "first_time": T0 + first,
        "last_time": T0 + last,
        "start_state": [start] if start else [],
        "end_state": [end],
    }


def full(pid: str, when: int, seq: int, binlogs: list[dict[str, object]]) -> P:
    base = {
        "binlog_file": f"mariadb-bin.{seq:06d}",
        "binlog_pos": 400,
        "gtid": "0-1-3",
        "consistent_at": at(when).isoformat(),
    }
    return P(
        pid,
        at(when),
        "full",
        {
            "mariadb": {
                "base": base,
                "binlogs": binlogs,
                "covered_until": at(when).isoformat(),
                "covered_through_seq": seq,
            }
        },
    )


def sync(pid: str, when: int, binlogs: list[dict[str, object]], through: int) -> P:
    return P(
        pid,
        at(when),
        "sync",
        {"mariadb": {"binlogs": binlogs, "covered_until": at(when).isoformat(), "covered_through_seq": through}},
    )


CHAIN = [
    full("f1", 10, 2, [record(2, 5, 9, "0-1-2", "0-1-3")]),
    sync("s1", 60, [record(3, 10, 30, "0-1-3", "0-1-10"), record(4, 30, 50, "0-1-10", "0-1-20")], 4),
]


def test_one_window_from_the_full_to_the_sync_that_covers_it() -> None:
    catalog = build_catalog(CHAIN)
    assert describe_windows(catalog) == [
        f"recoverable from {at(10):%Y-%m-%dT%H:%M:%SZ} to {at(60):%Y-%m-%dT%H:%M:%SZ}",
        "GTIDs 0-1-3 to 0-1-20 (restore --to-gtid)",
    ]
    plan = plan_restore(catalog, at(20) + timedelta(milliseconds=300))
    assert plan.mode == "time" and plan.base.point_id == "f1" and plan.stop_before == T0 + 20
    assert [f.binlog.name for f in plan.files] == ["mariadb-bin.000002", "mariadb-bin.000003"]  # 4 is after T
    latest = plan_restore(catalog, "latest")
    assert latest.mode == "latest" and [f.binlog.seq for f in latest.files] == [2, 3, 4]
    quiet = plan_restore(catalog, at(55))  # after the last transaction, before the sync's flush
    assert quiet.mode == "end" and quiet.stop_before is None and len(quiet.files) == 3


def test_refusals_say_why() -> None:
    catalog = build_catalog(CHAIN)
    with pytest.raises(RestoreError, match="before the first full backup") as early:
        plan_restore(catalog, at(0), source="shop/db")
    assert "recoverable:" in str(early.value.hint)
    with pytest.raises(RestoreError, match="after the last shipped binlog") as late:
        plan_restore(catalog, at(120))
    assert "latest" in str(late.value.hint)
    with pytest.raises(RestoreError, match="no full backup yet"):
        plan_restore(build_catalog([CHAIN[1]]), "latest")


def test_a_missing_binlog_is_a_gap_and_ends_the_window() -> None:
    points = [
        CHAIN[0],
        sync("s1", 60, [record(4, 30, 50, "0-1-10", "0-1-20")], 4),
        full("f2", 70, 5, [record(5, 65, 69, "0-1-20", "0-1-22")]),
    ]
    catalog = build_catalog(points)
    (gap,) = catalog.gaps
    assert gap.first_missing == "mariadb-bin.000003"
    assert any(line.startswith("gap: binlog mariadb-bin.000003 missing") for line in describe_windows(catalog))
    with pytest.raises(RestoreError, match="falls in a gap"):
        plan_restore(catalog, at(40))
    assert plan_restore(catalog, at(70)).base.point_id == "f2"
    # GTIDs that do not continue (RESET MASTER between two files) are a gap too
    reset = [CHAIN[0], sync("s1", 60, [record(3, 10, 30, "", "0-1-1")], 3)]
    assert build_catalog(reset).gaps and build_catalog(reset).windows[0].end == at(10)


def test_after_a_failover_the_chain_goes_on_in_the_new_primarys_binlogs() -> None:
    a, b = "1:mariadb-bin", "2:mariadb-bin"  # the old primary, the replica promoted (it logs what it replicates)
    base = full("f1", 10, 2, [record(2, 5, 9, "0-1-2", "0-1-3")])
    old = sync("s1", 40, [record(3, 10, 30, "0-1-3", "0-1-10")], 3)
    new = sync("s2", 90, [record(1, 1, 20, "", "0-1-8"), record(2, 21, 80, "0-1-8", "0-2-15")], 2)
    points = [
        P(p.id, p.time, p.kind, {"mariadb": {**p.extra["mariadb"], "origin": o}})  # type: ignore[dict-item]
        for p, o in ((base, a), (old, a), (new, b))
    ]
    catalog = build_catalog(points)
    (window,) = catalog.windows
    assert [(link.binlog.origin, link.binlog.seq, link.after) for link in window.chain] == [
        (a, 2, None),
        (a, 3, None),
        (b, 2, ("0-1-10",)),
    ]
    assert window.end == at(90) and not catalog.gaps
    assert [link.binlog.seq for link in plan_restore(catalog, at(50)).files] == [2, 3, 2]


def test_roles_for_prune_and_the_provider_abilities() -> None:
    assert [point_role(p) for p in CHAIN] == ["base", "log"]
    assert point_role(P("x", at(0), "full")) == "point"
    provider = load_provider("mariadb")
    assert isinstance(provider, LogChain) and isinstance(provider, RestoreOptions)
    assert provider.point_role(CHAIN[1]) == "log"  # type: ignore[arg-type]


def test_apply_names_the_exact_setting_when_it_may_not_restart() -> None:
    assert needed({"log_bin": "1", "binlog_format": "ROW", "server_id": "1"}) == []
    settings = needed({"log_bin": "0", "binlog_format": "MIXED", "server_id": "0"})
    assert [(s.name, s.value, s.restart) for s in settings] == [
        ("log_bin", "mariadb-bin", True),
        ("binlog_format", "ROW", False),
        ("server_id", "1", False),
    ]
    err = refusal("shop/db", settings, "/etc/mysql/mariadb.conf.d/99-protectctl.cnf")
    assert isinstance(err, ProviderError)
    assert "set log_bin = mariadb-bin, binlog_format = ROW, server_id = 1 under [mariadbd]" in str(err)
    assert "allowRestart: true" in str(err.hint)


def test_target_checks(tmp_path: Path) -> None:
    source = Server.from_spec({"data_dir": str(tmp_path / "data")})
    with pytest.raises(RestoreError, match="give --target"):
        check_target(None, source, overwrite=False)
    for bad in (tmp_path / "data", tmp_path / "data" / "sub", tmp_path):
        with pytest.raises(RestoreError, match="source's data directory"):
            check_target(bad, source, overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RestoreError, match="not empty"):
        check_target(tmp_path / "full", source, overwrite=False)
    assert check_target(tmp_path / "new", source, overwrite=False) == tmp_path / "new"


def test_local_binlogs_continue_the_shipped_chain(tmp_path: Path) -> None:
    catalog = build_catalog(CHAIN)
    last = catalog.binlogs[("", 4)]
    (tmp_path / "mariadb-bin.000005").write_bytes(binlog_bytes(T0 + 50, [(0, 1, 20)], [(T0 + 70, 21)]))
    active = binlog_bytes(T0 + 80, [(0, 1, 21)], [(T0 + 81, 22)], in_use=True)
    (tmp_path / "mariadb-bin.000006").write_bytes(active + b"\x01\x02\x03")  # a torn tail
    (tmp_path / "mariadb-bin.000008").write_bytes(binlog_bytes(T0 + 90, [(0, 1, 30)], []))  # after a gap
    found = local_binlogs(tmp_path, last)
    assert [p.name for p, _, _ in found] == ["mariadb-bin.000005", "mariadb-bin.000006"]
    assert found[1][1].valid_end == len(active)
    # a file that does not continue the chain's GTIDs stops it
    (tmp_path / "mariadb-bin.000005").write_bytes(binlog_bytes(T0 + 50, [(0, 1, 2)], []))
    assert local_binlogs(tmp_path, last) == []


def test_restore_options_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    from protectctl.provider import RestoreRequest

    provider = load_provider("mariadb")
    spec = {"data_dir": str(tmp_path / "data")}
    for options, message in (({"as_name": "x"}, "give --database too"), ({"database": "x"}, "needs --as")):
        request = RestoreRequest("shop/db", spec, None, None, tmp_path / "t", options=options)  # type: ignore[arg-type]
        with pytest.raises(RestoreError, match=message):
            provider.restore(request)


def test_a_pair_is_one_source_with_a_node_per_host() -> None:
    from protectctl.providers.mariadb.pair import node_spec, nodes
    from protectctl.providers.mariadb.spec import MariadbMember

    provider = load_provider("mariadb")
    member = {
        "data_dir": "/srv/a",
        "socket": "/run/a.sock",
        "per_host": {"db2": {"data_dir": "/srv/b", "socket": None}},
    }
    spec = provider.source_spec(member, {"db1": "/s1", "db2": "/s2"})  # type: ignore[attr-defined]
    assert [(n.host, n.spec["data_dir"], n.spec["socket"], n.state_dir) for n in nodes(spec)] == [
        ("db1", "/srv/a", "/run/a.sock", Path("/s1")),
        ("db2", "/srv/b", "/run/a.sock", Path("/s2")),
    ]
    assert node_spec({**spec, "node": "db2"})["data_dir"] == "/srv/b"
    assert provider.source_identity(member, "db2") == "/srv/b"  # type: ignore[attr-defined]
    model = MariadbMember.model_validate({"dataDir": "/srv/a", "perHost": {"db3": {"dataDir": "/x"}}})
    problems = provider.check_member(model, source="shop/db", hosts=("db1", "db2"))  # type: ignore[attr-defined]
    assert any("not one of the pair's hosts" in p.summary for p in problems)
    alone = provider.check_member(model, source="shop/db", hosts=None)  # type: ignore[attr-defined]
    assert any("perHost is for a member with `hosts:`" in p.summary for p in alone)


def test_stream_parts_are_cut_at_the_streams_own_chunk_headers() -> None:
    from protectctl.providers.mariadb.backup import XBSTREAM_MAGIC, cut_at

    stream = b"".join(XBSTREAM_MAGIC + bytes([n]) * 90 for n in range(10))  # ten 98-byte chunks
    assert cut_at(stream[:150], 200) is None  # not a part yet
    assert cut_at(stream, 200) == 294  # the first header at or past 200
    shifted = b"x" * 7 + stream  # content moved: the cut is still at a header, the parts after it the same
    at = cut_at(shifted, 200)
    assert at is not None and shifted[at:] == stream[at - 7 :] and stream[at - 7 :].startswith(XBSTREAM_MAGIC)


def test_prune_keeps_the_binlogs_the_kept_full_needs() -> None:
    from protectctl.agent.jobs import _role
    from protectctl.agent.retention import PointRef, RetentionSpec, plan_source

    points = [full("f1", 0, 2, []), sync("s1", 3600, [], 2), full("f2", 7200, 3, []), sync("s2", 9000, [], 3)]
    refs = [PointRef(p.id, "shop/db", p.time, True, _role(p, "mariadb")) for p in points]  # type: ignore[arg-type]
    assert [r.role for r in refs] == ["base", "log", "base", "log"]
    now = at(9000) + timedelta(seconds=600)
    kept = {d.point.id: d.reasons for d in plan_source(refs, RetentionSpec(keep_within_s=2400), now=now)}
    # the horizon (8400) falls after f2: f2 is the window base and s2 rolls it forward; f1 and s1 go
    assert kept["f2"] and kept["s2"] and not kept["f1"] and not kept["s1"]


def test_the_stream_reader_cuts_parts_at_headers_and_loses_no_byte() -> None:
    import io

    from protectctl.providers.mariadb.backup import XBSTREAM_MAGIC, _Reader

    # chunks of uneven sizes, headers straddling the reader's 1 MiB reads; one long headerless run
    stream = b"".join(XBSTREAM_MAGIC + bytes([n % 251]) * (70_000 + n * 3_001) for n in range(60))
    stream += b"z" * 900_000 + XBSTREAM_MAGIC + b"tail"
    reader = _Reader(io.BufferedReader(io.BytesIO(stream)), 300_000, lambda part: bytes(part[-3:]))  # type: ignore[arg-type]
    reader.start()
    parts = []
    while (got := reader.parts.get(timeout=30)) is not None:
        assert isinstance(got, tuple)
        item, digest = got
        assert digest == bytes(item[-3:])  # hashed by the reader, before the part is handed over
        parts.append(bytes(item))
        reader.release(item)  # the buffer is read into again: the copy above keeps the part
    assert b"".join(parts) == stream
    assert all(p.startswith(XBSTREAM_MAGIC) for p in parts)
    assert all(len(p) >= 300_000 for p in parts[:-1]) and all(len(p) <= 2 * 300_000 + (1 << 20) for p in parts)


def test_prepare_notes_say_what_apply_does_and_whether_it_may_restart() -> None:
    from protectctl.providers.mariadb.prepare import notes

    (allowed,) = notes({"allow_restart": True, "restart_command": ["rc-service", "mariadb", "restart"]})
    assert "binlog_format = ROW" in allowed and "runs `rc-service mariadb restart` (allowRestart)" in allowed
    (refused,) = notes({"allow_restart": False, "nodes": [{"host": "db1"}, {"host": "db2"}]})
    assert "each server of the pair" in refused and "allowRestart: false refuses" in refused


def test_restore_to_a_gtid_replays_through_it_and_refuses_one_out_of_reach() -> None:
    from protectctl.providers.mariadb.catalog import plan_restore_gtid
    from protectctl.providers.mariadb.restore_server import Staged, gtid_cut

    catalog = build_catalog(CHAIN)  # the full at 0-1-3; binlogs 2 (..0-1-3), 3 (..0-1-10), 4 (..0-1-20)
    plan = plan_restore_gtid(catalog, "0-1-12", source="shop/db")
    assert plan.mode == "gtid" and plan.gtid == "0-1-12" and [f.binlog.seq for f in plan.files] == [2, 3, 4]
    assert [f.binlog.seq for f in plan_restore_gtid(catalog, "0-1-10").files] == [2, 3]
    assert [f.binlog.seq for f in plan_restore_gtid(catalog, "0-1-3").files] == [2]  # the full itself
    with pytest.raises(RestoreError, match="beyond the shipped binlogs of shop/db") as late:
        plan_restore_gtid(catalog, "0-1-21", source="shop/db")
    assert "run sync" in str(late.value.hint) and "--to-time latest" in str(late.value.hint)
    with pytest.raises(RestoreError, match="before the first full backup") as early:
        plan_restore_gtid(catalog, "0-1-2")
    assert early.value.hint == "GTIDs that can be restored to: 0-1-3 to 0-1-20"
    with pytest.raises(RestoreError, match="no shipped binlog holds replication domain 5"):
        plan_restore_gtid(catalog, "5-1-2")
    with pytest.raises(RestoreError, match="is not a GTID"):
        plan_restore_gtid(catalog, "0-1")
    gap = build_catalog([CHAIN[0], sync("s1", 60, [record(4, 30, 50, "0-1-10", "0-1-20")], 4)])
    with pytest.raises(RestoreError, match="not continuous"):
        plan_restore_gtid(gap, "0-1-15")

    # where replay stops: after the transaction's commit, before the next one's GTID event
    data = binlog_bytes(T0, [(0, 1, 10)], [(T0 + 1, 11), (T0 + 2, 12), (T0 + 3, 13)])
    staged = [Staged(Path("/x"), bl.read_facts(data), False)]
    offsets = [t.offset for t in staged[0].facts.transactions]
    assert gtid_cut(staged, [4], "0-1-12") == (1, offsets[2])
    assert gtid_cut(staged, [4], "0-1-13") == (1, None)  # the file's last: replayed to its end
    assert gtid_cut(staged, [offsets[1]], "0-1-11") == (0, None)  # before the full's position: nothing
    with pytest.raises(RestoreError, match="there is 0-1-12") as other:
        gtid_cut(staged, [4], "0-7-12")  # the number exists, written by another server
    assert "--to-gtid 0-1-12" in str(other.value.hint)


def test_after_a_failover_a_files_head_names_both_servers_and_the_chain_still_continues() -> None:
    # the promoted server's next file starts with its binlog state: one GTID per domain and server
    data = binlog_bytes(T0, [(0, 1, 25), (0, 2, 27)], [(T0 + 1, 28)])
    facts = bl.read_facts(data)
    assert facts.last_gtids == ("0-1-28",)  # the domain's highest number goes on (the test's events say server 1)
    b = "2:mariadb-bin"
    base = full("f1", 10, 1, [record(1, 5, 9, "0-1-20", "0-2-27")])
    after = sync("s1", 60, [{**record(2, 20, 30, "0-1-25", "0-2-30"), "start_state": ["0-1-25", "0-2-27"]}], 2)
    points = [P(p.id, p.time, p.kind, {"mariadb": {**p.extra["mariadb"], "origin": b}}) for p in (base, after)]  # type: ignore[dict-item]
    catalog = build_catalog(points)
    assert not catalog.gaps and [link.binlog.seq for link in catalog.windows[0].chain] == [1, 2]


def test_plan_refresh_preview_names_the_restart_or_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from protectctl.provider import PrepareRequest
    from protectctl.providers.mariadb import prepare

    monkeypatch.setattr(
        prepare, "_running", lambda server, source: {"log_bin": "0", "binlog_format": "MIXED", "server_id": "0"}
    )
    spec = {"data_dir": "/var/lib/mysql", "allow_restart": False}
    (refused,) = prepare.preview(PrepareRequest("shop/db", spec, Path("/state"))).warnings
    assert (
        refused.startswith("apply will refuse: shop/db: binary logging is off") and "log_bin = mariadb-bin" in refused
    )
    assert "allowRestart: true" in refused
    allowed = prepare.preview(PrepareRequest("shop/db", {**spec, "allow_restart": True}, Path("/state")))
    assert not allowed.warnings and allowed.changes == (
        "apply will set log_bin OFF -> mariadb-bin (at the restart)",
        "apply will set binlog_format MIXED -> ROW (at once, SET GLOBAL)",
        "apply will set server_id 0 -> 1 (at once, SET GLOBAL)",
        "apply will write /etc/mysql/mariadb.conf.d/99-protectctl.cnf",
        "apply will restart MariaDB: `systemctl restart mariadb` (allowRestart)",
    )
    monkeypatch.setattr(
        prepare, "_running", lambda server, source: {"log_bin": "1", "binlog_format": "ROW", "server_id": "3"}
    )
    assert prepare.preview(PrepareRequest("shop/db", spec, Path("/state"))) == prepare.PrepareOutcome()


# -- express fulls ---------------------------------------------------------------------------

IDENTITY = {"server_id": 1, "data_dir": "/var/lib/mysql", "ibdata1": 42}


def express_full(pid: str, when: int, on: str | None, *, to_lsn: int = 1000, size: int = 100) -> P:
    point = full(pid, when, 2, [record(2, 5, 9, "0-1-2", "0-1-3")])
    base = dict(point.extra["mariadb"]["base"])  # type: ignore[index]
    base.update({"to_lsn": to_lsn, "identity": IDENTITY, "stream_bytes": size})
    if on is not None:
        base["express_of"] = on
    return P(pid, point.time, "full", {"mariadb": {**point.extra["mariadb"], "base": base}})  # type: ignore[dict-item]


def test_express_chain_in_the_catalog_and_its_restore_plan() -> None:
    from protectctl.providers.mariadb import express

    points = [express_full("r", 10, None), express_full("e1", 20, "r"), express_full("e2", 30, "e1")]
    catalog = build_catalog(points)
    assert [b.parts for b in catalog.bases] == [("r",), ("r", "e1"), ("r", "e1", "e2")]
    assert plan_restore(catalog, at(30)).base.parts == ("r", "e1", "e2")
    assert express.describe(catalog)[1] == "express full e2: changed pages on full e1 (restore applies r <- e1 <- e2)"
    # prune's roles: an express full rolls its base forward, as a sync does
    assert [point_role(p) for p in points] == ["base", "log", "log"]
    orphaned = build_catalog(points[1:])  # the real full forgotten: the express fulls restore nothing
    assert not orphaned.bases and orphaned.orphans == (("e1", "r"), ("e2", "e1"))
    assert "cannot be restored: its base r is not in the repository" in express.describe(orphaned)[0]
    problems = load_provider("mariadb").status_problems("shop/db", {}, points[1:], Path("/nonexistent"))  # type: ignore[attr-defined]
    assert problems[0].startswith("express full e1 cannot be restored: its base r is not in the repository")


def test_no_express_is_for_run_full(capsys: pytest.CaptureFixture[str]) -> None:
    from protectctl.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["-C", "/nonexistent", "run", "sync", "shop", "--no-express"])
    assert exited.value.code == 1 and "--no-express is for `run full`" in capsys.readouterr().err


def test_express_or_real_and_why() -> None:
    from protectctl.providers.mariadb import express

    chain = [express_full("r", 10, None, size=1000), express_full("e1", 20, "r", size=100)]

    def choose(points: list[P], **kw: object) -> express.Choice:
        args: dict[str, object] = {"identity": IDENTITY, "server_lsn": 5000, "spec": {}, **kw}
        return express.choose(points, build_catalog(points), **args)  # type: ignore[arg-type]

    assert choose([]) == express.Choice(None)  # the first full: real, nothing to say
    assert choose(chain).base is not None and choose(chain).base.point_id == "e1"  # type: ignore[union-attr]
    assert "--no-express" in choose(chain, forced_real=True).why_real
    assert "expressFulls: 0" in choose(chain, spec={"express_fulls": 0}).why_real
    assert "(expressFulls: 1)" in choose(chain, spec={"express_fulls": 1}).why_real
    assert "hold 10 % of its size (expressMaxPercent: 10)" in choose(chain, spec={"express_max_percent": 10}).why_real
    moved = choose(chain, identity={**IDENTITY, "ibdata1": 43}).why_real
    assert "another server or data directory (ibdata1 42 -> 43)" in moved
    assert "behind the previous full's 1000" in choose(chain, server_lsn=10).why_real
    assert "e1 needs full r, which is not in the repository" in choose(chain[1:]).why_real
    assert "full r of the chain is damaged" in choose(chain, tree_present=lambda pid: pid != "r").why_real
    old = [full("f1", 10, 2, [])]  # a full taken before express fulls existed
    assert "records no LSN" in choose(old).why_real
    assert "fewer than 6 and their changes less than 50 %" in express.plan_note({})
    assert "a real full every time" in express.plan_note({"express_fulls": 0})


def test_prune_keeps_the_real_full_an_express_full_needs() -> None:
    from protectctl.agent.retention import PointRef, RetentionSpec, plan_source

    points = [
        express_full("r", 0, None),
        express_full("e1", 3600, "r"),
        sync("s1", 5400, [], 2),
        express_full("e2", 7200, "e1"),
    ]
    refs = [PointRef(p.id, "g/m", p.time, True, point_role(p)) for p in points]
    now = at(7300)
    kept = {d.point.id for d in plan_source(refs, RetentionSpec(keep_within_s=1800), now=now) if d.keep}
    assert kept == {"r", "e1", "s1", "e2"}  # e2 alone is within: its chain r <- e1 stays
