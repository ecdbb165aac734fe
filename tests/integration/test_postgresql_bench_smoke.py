"""The PostgreSQL benchmark's protectctl side runs end to end at a tiny scale.

pgBackRest is left out here: under a loaded CI machine its archive-push failures before the
stanza settles make PostgreSQL's archiver back off for a minute, which is the benchmark's
business, not this harness check's."""

from __future__ import annotations

import pytest

from tests.integration import pgcluster

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(pgcluster.available() is not None, reason=str(pgcluster.available())),
]


def test_bench_postgresql_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.bench.bench_postgresql import main

    results = main(["--scale", "1", "--transactions", "200", "--no-pgbackrest"])
    rows = results["rows"]
    assert isinstance(rows, dict)
    assert {"full", "incremental (sync: WAL)", "incremental (express full)", "restore to time + promote"} <= set(rows)
    assert all(row["protectctl_s"] > 0 for row in rows.values())
    assert "protectctl" in capsys.readouterr().out
