"""tests/bench/bench_plan.py runs and reports (small size: the real figures come from a full run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.bench
def test_bench_plan_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/bench/bench_plan.py"), "--groups", "20", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "20 groups x 3 members" in out
    for row in (
        "validate + plan (in-process)",
        "protectctl validate + plan",
        "protectctl plan, no changes",
        "python -c pass",
        "protectctl --version",
    ):
        assert row in out, out
