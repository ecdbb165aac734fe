"""The figures every progress renderer shows (protectctl/cli/progress.py `Tally`): pure."""

from __future__ import annotations

from protectctl.cli.progress import Tally, clock


def test_totals_counted_alongside_give_percent_and_never_a_question_mark() -> None:
    tally = Tally()
    tally.reset("upload")
    tally.advance(3, 3_000_000)
    assert tally.percent() is None and tally.eta_s() is None
    assert tally.describe().startswith("3 files, 3.0 MB, ") and "?" not in tally.describe()
    tally.total(10, 8_000_000, final=False)  # the walk goes on
    assert "(counting the total: 10 files, 8.0 MB so far)" in tally.describe()
    tally.total(1_200, 12_000_000, final=True)
    tally.total(5, 5, final=False)  # a late partial count never replaces the whole one
    assert (tally.total_files, tally.total_bytes) == (1_200, 12_000_000)
    assert tally.describe().startswith("3 of 1,200 files, 3.0 MB of 12.0 MB, 25%, ")
    assert "ETA " in tally.describe() and "?" not in tally.describe()
    tally.advance(1_197, 9_500_000)  # a file grew while it was read: capped, done
    assert tally.percent() == 100.0 and tally.eta_s() == 0.0
    assert tally.done_line().startswith("upload done: 1,200 files, 12.5 MB in 0:")


def test_totals_given_at_start_and_empty_phases() -> None:
    tally = Tally()
    tally.reset("restore", total_bytes=0, total_files=0)
    assert tally.percent() == 100.0 and tally.eta_s() == 0.0
    tally.reset("restore", total_bytes=0, total_files=4)  # empty files: percent by files
    tally.advance(1, 0)
    assert tally.percent() == 25.0


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.6, 125, 3600, 3723)] == ["0:00", "1:00", "2:05", "1:00:00", "1:02:03"]
