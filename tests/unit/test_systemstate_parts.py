"""systemState's capture and runbook agree on where each disk's partition table is."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from protectctl.providers.systemstate import capture
from protectctl.providers.systemstate.runbook import render


def test_the_runbook_reads_each_table_where_the_capture_saved_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks = [
        {"name": "cciss/c0d0", "path": "/dev/cciss/c0d0", "type": "disk", "pttype": "dos", "size": 1},
        {"name": "sda", "path": "/dev/sda", "type": "disk", "pttype": "gpt", "size": 2},
    ]

    def run(argv: Sequence[str]) -> tuple[bool, str]:
        if argv[0] == "lsblk":
            return True, json.dumps({"blockdevices": disks})
        return (True, f"label: {argv[-1]}\n") if argv[0] == "sfdisk" else (False, "not here")

    monkeypatch.setattr(capture, "_run", run)
    monkeypatch.setattr(capture.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    out = tmp_path / "state"
    out.mkdir()
    got = capture._Capture(Path("/"), out)
    got.disks()
    script = render({"files": got.got.files, "disks": got.got.disks}, point="p1")
    dumps = re.findall(r'partition_disk \S+ "\$HERE/state/([^"]+)"', script)
    assert len(dumps) == 2
    for dump in dumps:
        assert (out / dump).is_file(), dump


def test_a_root_without_systemd_is_a_gap_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    got = capture.capture(tmp_path / "root", tmp_path / "out")
    assert not got.errors, got.errors  # an error would mark every point of such a system incomplete
    assert any(gap.startswith("enabled systemd units: no ") for gap in got.gaps)
