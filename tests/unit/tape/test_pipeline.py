"""The tape pipeline: an ordered map over threads with a bounded number of items in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from protectctl.tape.pipeline import ordered_map


def test_results_come_in_input_order_whatever_finishes_first() -> None:
    def slow_for_small(n: int) -> int:
        time.sleep(0.002 * (10 - n % 10))
        return n * n

    assert list(ordered_map(slow_for_small, range(40), workers=4)) == [n * n for n in range(40)]
    assert list(ordered_map(slow_for_small, range(5), workers=0)) == [n * n for n in range(5)]


def test_at_most_depth_items_are_taken_from_the_input_ahead_of_the_consumer() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for n in range(100):
            pulled.append(n)
            yield n

    results = ordered_map(lambda n: n, source(), workers=2, depth=3)
    assert next(results) == 0
    assert len(pulled) <= 3 + 1  # the double buffer, not the whole input
    results.close()


def test_an_error_reaches_the_consumer_at_its_turn_and_closing_stops_the_workers() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            started.append(n)
        if n == 3:
            raise ValueError("record 3 is damaged")
        return n

    results = ordered_map(work, range(1000), workers=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="record 3"):
        next(results)
    assert len(started) < 20  # the failure did not let the producers run on through the input
    before = len(started)
    results.close()
    time.sleep(0.01)
    assert len(started) == before
