"""The PostgreSQL benchmark runs end to end at a tiny scale (pgBackRest side skipped if absent)."""

from __future__ import annotations

import pytest

from tests.integration import pgcluster

pytestmark = [pytest.mark.bench,
              pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available()))]


def test_bench_postgresql_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.bench.bench_postgresql import main

    results = main(["--scale", "1", "--transactions", "200"])
    rows = results["rows"]
    assert isinstance(rows, dict)
    assert {"full", "incremental (sync: WAL)", "incremental (express full)", "restore to time + promote"} <= set(rows)
    assert all(row["protectctl_s"] > 0 for row in rows.values())
    assert "protectctl" in capsys.readouterr().out
