"""The figures every progress renderer shows (cli/progress.Tally)."""

from __future__ import annotations

from protectctl.cli.progress import Tally


def test_eta_follows_the_same_measure_as_the_percentage() -> None:
    files_only = Tally()
    files_only.reset("restore", total_files=10)  # totals in files, no bytes: not done, so no ETA of 0
    files_only.advance(1, 100)
    assert files_only.percent() == 10.0
    assert files_only.eta_s() != 0.0
    files_only.advance(9, 0)
    assert files_only.eta_s() == 0.0

    by_bytes = Tally()
    by_bytes.reset("upload", total_bytes=1000, total_files=1)
    assert by_bytes.eta_s() is None  # no rate yet
    by_bytes.advance(1, 1000)
    assert by_bytes.percent() == 100.0 and by_bytes.eta_s() == 0.0
