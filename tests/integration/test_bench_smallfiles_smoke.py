"""Smoke run of the many-small-files benchmark (tests/bench/bench_smallfiles.py), protectctl only,
on a few hundred files: every phase runs through the real CLI and the restore equals the source.
Not a timing test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.bench_smallfiles import PHASES

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]


def test_bench_smallfiles_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "bench" / "bench_smallfiles.py"),
            "--files",
            "300",
            "--tools",
            "protectctl",
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
    assert results["dataset"]["files"] == 300 and results["dataset"]["dirs"] == 3
    assert results["dataset"]["appended"] == 1
    for key, _ in PHASES:
        assert results["phases"][key]["protectctl"]["ok"], results["phases"][key]["protectctl"]
    assert results["phases"]["first"]["protectctl"]["extra"]["files"] == 300
    assert results["verify"]["protectctl"]["ok"], results["verify"]["protectctl"]
    assert "first backup" in proc.stdout
    assert not list((tmp_path / "work").iterdir()), "work directory left behind without --keep"
