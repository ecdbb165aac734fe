"""The tape pipeline: an ordered map over threads with a bounded number of items in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from protectctl.tape.pipeline import StageClock, ordered_map, read_ahead, timed


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


def test_read_ahead_produces_on_its_own_thread_in_order_and_bounded() -> None:
    threads: set[str] = set()
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for n in range(50):
            threads.add(threading.current_thread().name)
            pulled.append(n)
            yield n

    items = read_ahead(source(), depth=2)
    assert next(items) == 0
    time.sleep(0.05)
    assert len(pulled) <= 1 + 2 + 1  # the one taken, the queue, the one waiting to be queued
    assert list(items) == list(range(1, 50))
    assert threads == {"tape-walk"}


def test_read_ahead_raises_the_producers_error_in_turn_and_closing_stops_the_producer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("tree damaged")

    items = read_ahead(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="tree damaged"):
        next(items)

    pulled: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            pulled.append(n)
            yield n
            n += 1

    items = read_ahead(endless(), depth=2)
    assert next(items) == 0
    items.close()  # joins the producer
    before = len(pulled)
    time.sleep(0.05)
    assert len(pulled) == before
    assert not any(t.name == "tape-walk" for t in threading.enumerate())


def test_stage_clock_sums_cpu_time_per_stage_over_threads() -> None:
    clock = StageClock()

    def spin() -> None:
        with clock.stage("work"):
            end = time.thread_time() + 0.02
            while time.thread_time() < end:
                pass
        with clock.stage("idle"):
            time.sleep(0.05)  # waiting costs no CPU

    workers = [threading.Thread(target=spin) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert clock.seconds["work"] >= 0.04
    assert clock.seconds["idle"] < 0.02
    assert list(timed(iter([1, 2]), clock, "made")) == [1, 2] and "made" in clock.seconds
