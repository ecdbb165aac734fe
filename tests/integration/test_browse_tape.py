"""Browsing tape copies (issue 15, `--from tape`): ls, cat, versions, diff, find read the tape
catalog and only the records they need, with the disk repository gone.

One site for the module: two points copied to one virtual cartridge (the first in tape format 1,
read whole; the second in format 2, with an index, read record by record), a third point on disk
only; the disk answers are kept, then the repository is moved away, so every
answer below can only come from tape. Tests read it; the one that moves the cartridge to a vault
moves it back.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protectctl import api
from protectctl.tape import reader as tape_reader
from protectctl.tape.copy import PoolWriter
from tests.conftest import write_policy
from tests.integration.test_browse import Capture, cli, fast_repository
from tests.integration.test_tape import POLICY

WANTED = os.urandom(700_000)


@dataclass
class Site:
    policy: Path
    points: list[str]  # the two copied to tape, oldest first
    disk_only: str  # a third point, never copied
    barcode: str
    disk: dict[str, dict[str, object]]  # --json answers from the repository, by command


def _backup(policy: Path) -> str:
    (result,) = api.run_backup(policy, "full", "docs", None, agent_config=None, progress=None)
    assert result.ok
    return str(result.point_id)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("browse-tape")
    policy = write_policy(base / "site", POLICY.format(capacity="20MB"))
    fast_repository(policy)
    data = policy / "data"
    (data / "deep" / "er").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"version 1\n")
    (data / "gone.txt").write_bytes(b"will go\n")
    (data / "deep" / "er" / "wanted.bin").write_bytes(WANTED)
    for i in range(8):  # records the reads below must not need
        (data / f"filler{i}.bin").write_bytes(os.urandom(400_000))
    api.apply(policy, confirm=lambda _plan: True)
    api.tape_label(policy, 1, "monthly")
    first = _backup(policy)
    with pytest.MonkeyPatch.context() as m:  # the first copy in tape format 1 (no index: read whole)
        m.setattr(PoolWriter, "format_version", 1)
        (copied,) = api.run_tape(policy, "docs", None).copied
    (data / "a.txt").write_bytes(b"version 2\n")
    (data / "gone.txt").unlink()
    (data / "new.txt").write_bytes(b"added\n")
    second = _backup(policy)
    api.run_tape(policy, "docs", None)
    (data / "a.txt").write_bytes(b"version 3, on disk only\n")
    third = _backup(policy)
    disk = {}
    from protectctl.cli.main import main

    for name, args in {
        "ls": ["ls", "docs/home", "--to-time", second, "--json"],
        "versions": ["versions", "docs/home", "a.txt", "--json"],
        "find": ["find", "docs", "*.bin", "--json"],
        "points": ["points", "list", "docs/home", "--json"],
    }.items():
        disk[name] = _json_of(main, policy, args)
    shutil.move(policy / ".protectctl" / "repo", base / "repo-away")  # from here on: tape only
    yield Site(policy, [first, second], third, copied.barcodes[0], disk)
    shutil.rmtree(base, ignore_errors=True)


def _json_of(main: object, policy: Path, args: list[str]) -> dict[str, object]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as ended:
        main(["-C", str(policy), *args])  # type: ignore[operator]
    assert ended.value.code == 0, out.getvalue()
    doc: dict[str, object] = json.loads(out.getvalue())
    return doc


def _shape(doc: object) -> object:
    """The keys of a JSON document, recursively (lists by their first item)."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items() if k != "read_from"}
    if isinstance(doc, list):
        return [_shape(doc[0])] if doc else []
    return None


def test_ls_versions_diff_find_answer_from_tape_alone(site: Site, capsysbinary: Capture) -> None:
    listing = json.loads(cli(capsysbinary, site.policy, "ls", "docs/home", "--from", "tape", "--json")[0])
    names = [e["name"] for e in listing["entries"]]
    assert names == ["a.txt", "deep", *(f"filler{i}.bin" for i in range(8)), "new.txt"]
    assert listing["point"]["id"] == site.points[1]  # the newest copy, not the newer disk-only point
    assert listing["read_from"] == {"medium": "tape", "cartridges": [site.barcode], "copies_read": 1, "skipped": []}
    assert site.disk["ls"]["read_from"] == {"medium": "disk"}
    assert _shape(listing) == _shape(site.disk["ls"]) and listing["entries"] == site.disk["ls"]["entries"]
    old = cli(capsysbinary, site.policy, "ls", "docs/home", "--from", "tape", "--to-time", site.points[0][:8])[0]
    assert "gone.txt" in old.split() and "new.txt" not in old.split()

    history = json.loads(
        cli(capsysbinary, site.policy, "versions", "docs/home", "a.txt", "--from", "tape", "--json")[0]
    )
    assert [v["first_point"]["id"] for v in history["versions"]] == site.points  # 2 versions on tape (3 on disk)
    assert len(site.disk["versions"]["versions"]) == 3 and _shape(history) == _shape(site.disk["versions"])

    out = cli(capsysbinary, site.policy, "diff", "docs/home", site.points[0], site.points[1], "--from", "tape")[0]
    root = (site.policy / "data").resolve()
    assert out.splitlines() == [f"M {root}/a.txt  (content)", f"- {root}/gone.txt", f"+ {root}/new.txt"]

    found = json.loads(cli(capsysbinary, site.policy, "find", "docs", "wanted*", "--from", "tape", "--json")[0])
    assert [(m["path"], m["points"]) for m in found["matches"]] == [(f"{root}/deep/er/wanted.bin", site.points)]
    assert _shape(found) == _shape(site.disk["find"]) and found["read_from"]["copies_read"] == 2


def test_cat_reads_only_the_records_the_file_needs(
    site: Site, capsysbinary: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    original = tape_reader.TapePointReader.close

    def counted(self: tape_reader.TapePointReader) -> None:
        reads.append(self.records_read)
        original(self)

    monkeypatch.setattr(tape_reader.TapePointReader, "close", counted)
    capsysbinary.readouterr()
    from protectctl.cli.main import main

    with pytest.raises(SystemExit) as ended:
        main(["-C", str(site.policy), "cat", "docs/home", "/deep/er/wanted.bin", "--from", "tape"])
    assert ended.value.code == 0
    assert capsysbinary.readouterr().out == WANTED
    copy = api.tape_service(site.policy).catalog.copies[site.points[1]]
    assert copy.index and copy.bytes_plain > 3_000_000
    (records,) = reads
    assert 1 <= records <= 3  # the trees on the way and the file's chunk(s): not the 3.2 MB of fillers


def test_clear_errors_no_copy_no_library_cartridge_in_a_vault(site: Site, capsysbinary: Capture) -> None:
    _, err = cli(capsysbinary, site.policy, "ls", "docs/home", "--from", "tape", "--to-time", site.disk_only, expect=1)
    assert f"point {site.disk_only} of docs/home has no copy on tape" in err and len(err.strip().splitlines()) <= 2
    _, err = cli(capsysbinary, site.policy, "ls", "docs/home", "--from", "floppy", expect=1)
    assert "expected disk or tape" in err
    api.tape_move(site.policy, site.barcode, "vault:east")
    try:
        _, err = cli(capsysbinary, site.policy, "cat", "docs/home", "a.txt", "--from", "tape", expect=1)
        assert f"outside the library: {site.barcode} (vault east)" in err and "tape move" in err
        _, err = cli(capsysbinary, site.policy, "versions", "docs/home", "a.txt", "--from", "tape", expect=1)
        assert "every tape copy asked for is on cartridges outside the library" in err
        _, err = cli(capsysbinary, site.policy, "find", "docs", "*.txt", "--from", "tape", expect=1)
        assert "every tape copy asked for is on cartridges outside the library" in err
    finally:
        api.tape_move(site.policy, site.barcode, "library")
    assert cli(capsysbinary, site.policy, "cat", "docs/home", "a.txt", "--from", "tape")[0] == "version 2\n"


def test_points_list_from_tape_reads_the_catalog_only(site: Site, capsysbinary: Capture) -> None:
    doc = json.loads(cli(capsysbinary, site.policy, "points", "list", "docs", "--from", "tape", "--json")[0])
    assert [p["id"] for p in doc["points"]] == site.points and doc["read_from"] == {"medium": "tape"}
    disk = site.disk["points"]
    assert set(doc) - {"read_from"} == set(disk) and set(doc["points"][0]) - {"tape"} == set(disk["points"][0])
    assert [p["tape"]["format"] for p in doc["points"]] == [1, 2]
    tape = doc["points"][1]["tape"]
    (where,) = tape["cartridges"]
    assert where.startswith(f"{site.barcode} (slot ") and tape["format"] == 2 and tape["in_library"]
    text = cli(capsysbinary, site.policy, "points", "list", "--from", "tape")[0]
    assert site.points[0][:8] in text and site.disk_only[:8] not in text


def test_a_group_removed_from_the_policy_is_browsed_from_its_copies(site: Site, capsysbinary: Capture) -> None:
    policy_file = site.policy / "protect.yaml"
    text = policy_file.read_text()
    policy_file.write_text(text[: text.index("---\napiVersion: protectctl/v1\nkind: ProtectionGroup")])
    try:  # its points are gone from disk too (the repository moved away): only the catalog knows it
        assert cli(capsysbinary, site.policy, "ls", "docs/home", "--from", "tape")[0].split()[0] == "a.txt"
        doc = json.loads(cli(capsysbinary, site.policy, "points", "list", "--from", "tape", "--json")[0])
        assert doc["removed_sources"] == ["docs/home"] and not doc["points"][0]["in_policy"]
    finally:
        policy_file.write_text(text)
