"""Tape format 2 (issue 12, item 4): blob bodies copied without a zstd pass and an index of where
each blob sits. A format-1 copy and a format-2 copy share one cartridge and both restore; an
inventory rebuild finds both whole and the index again; a `--path` restore reads only the
records its path needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protectctl import api
from protectctl.tape import reader as tape_reader
from protectctl.tape.copy import PoolWriter
from tests.conftest import write_policy
from tests.integration.test_tape import POLICY, snapshot, write_data


def _backup(site: Path) -> None:
    (result,) = api.run_backup(site, "full", "docs", None, agent_config=None, progress=None)
    assert result.ok


def _restore(site: Path, when: str, target: Path, subpaths: list[str] | None = None) -> str:
    result = api.restore(
        site,
        "docs/home",
        when,
        agent_config=None,
        target=str(target),
        subpaths=subpaths or [],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    return str(result.point_id)


def test_format_1_and_2_copies_share_a_cartridge_and_a_path_restore_reads_only_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = write_policy(tmp_path / "site", POLICY.format(capacity="20MB"))
    write_data(site / "data", seed=1)
    api.apply(site, confirm=lambda _plan: True)
    api.tape_label(site, 1, "monthly")
    _backup(site)
    first = snapshot(site / "data")
    with monkeypatch.context() as m:
        m.setattr(PoolWriter, "format_version", 1)
        (old,) = api.run_tape(site, "docs", None).copied
    write_data(site / "data", seed=2, big_files=4)
    sub = site / "data" / "deep" / "er"
    sub.mkdir(parents=True)
    (sub / "wanted.bin").write_bytes(os.urandom(300_000))
    _backup(site)
    second = snapshot(site / "data")
    (new,) = api.run_tape(site, "docs", None).copied
    assert old.barcodes == new.barcodes  # appended to the same cartridge
    copies = api.tape_service(site).catalog.copies
    assert copies[old.point_id].index == [] and copies[new.point_id].index  # only format 2 has one

    reads: list[tuple[int, int]] = []  # per restore: (records read on demand, records spooled)
    original = tape_reader.TapePointReader.close

    def counted(self: tape_reader.TapePointReader) -> None:
        reads.append((self.records_read, len(self._records)))
        original(self)

    monkeypatch.setattr(tape_reader.TapePointReader, "close", counted)
    assert _restore(site, old.point_time.isoformat(), tmp_path / "r1") == old.point_id
    assert snapshot(tmp_path / "r1") == first
    assert _restore(site, "latest", tmp_path / "r2") == new.point_id
    assert snapshot(tmp_path / "r2") == second
    whole = reads[-1][1]  # the format-2 copy's data records, all read by a full restore
    assert whole >= 3

    # --path: the header, the index, and the records holding the path's trees and file only
    _restore(site, "latest", tmp_path / "r3", ["deep/er/wanted.bin"])
    assert (tmp_path / "r3" / "deep" / "er" / "wanted.bin").read_bytes() == (sub / "wanted.bin").read_bytes()
    assert not (tmp_path / "r3" / "notes.txt").exists()
    on_demand, spooled = reads[-1]
    assert spooled == 0 and 1 <= on_demand < whole

    # the catalog lost: a rebuild from the tape finds both copies whole, and the index again
    (site / ".protectctl" / "tape" / "catalog.json").unlink()
    api.tape_inventory(site, rebuild=True)
    rebuilt = api.tape_service(site).catalog.copies
    assert rebuilt[old.point_id].complete and rebuilt[new.point_id].complete
    assert rebuilt[new.point_id].index == copies[new.point_id].index
