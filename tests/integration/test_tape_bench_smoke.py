"""Smoke run of the tape benchmark (tests/bench/bench_tape.py) on a tiny dataset: not a timing test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bench.bench_tape import main

pytestmark = pytest.mark.bench


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs tar")
def test_bench_tape_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tape.json"
    assert main(["--size", "2MiB", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["mib_per_s"]) == {"tape_write", "tape_read", "tar_write", "tar_read"}
    assert all(v > 0 for v in result["mib_per_s"].values())
