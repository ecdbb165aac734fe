"""Smoke run of the backup benchmark (tests/bench/bench_backup.py) on a tiny dataset.

Not a timing test: it proves the harness drives every installed tool through all phases
(protectctl through its real CLI) and that each restore equals the source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import dataset
from tests.bench.bench_backup import PHASES

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "bench" / "bench_backup.py"


def test_dataset_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert dataset.build(a, 1 << 20, seed=7) == dataset.build(b, 1 << 20, seed=7)
    assert dataset.manifest(a) == dataset.manifest(b)
    ra = dataset.mutate(a, 0.10, 1, seed=7)
    rb = dataset.mutate(b, 0.10, 1, seed=7)
    assert ra.summary() == rb.summary()
    assert ra.files_deleted and ra.files_added and ra.overwritten_bytes and ra.appended_bytes
    assert dataset.manifest(a) == dataset.manifest(b)
    assert dataset.parse_size("64MiB") == 64 << 20 and dataset.parse_size("1GiB") == 1 << 30


def test_bench_backup_smoke(tmp_path: Path) -> None:
    tools = ["protectctl"] + [t for t, exe in (("restic", "restic"), ("borg", "borg")) if shutil.which(exe)]
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "--size",
            "8MiB",
            "--tools",
            ",".join(tools),
            "--workdir",
            str(tmp_path / "work"),
            "--output",
            str(out),
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"harness exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert results["dataset"]["bytes"] == 8 << 20
    assert [m["changed_bytes"] > 0 for m in results["mutations"]] == [True, True]
    for tool in tools:
        for key, _ in PHASES:
            assert results["phases"][key][tool]["ok"], (key, tool, results["phases"][key][tool])
        assert results["verify"][tool]["ok"], results["verify"][tool]
        assert results["repository"][tool]["apparent_bytes"] > 0
    assert results["phases"]["first"]["protectctl"]["extra"].get("complete") is True
    assert "protectctl" in proc.stdout and "full restore" in proc.stdout
    assert not list((tmp_path / "work").iterdir()), "work directory left behind without --keep"
