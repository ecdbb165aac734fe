"""An ordered map over threads with a bounded double buffer: the copy to and from tape overlaps
reading, crypto and writing without reordering records or holding more than a few in memory.

`ordered_map(fn, items, workers=N)` runs `fn` on up to N items at once and yields the results
in input order. At most `depth` items (default 2 x N: one being consumed while the next ones
are being prepared, the double buffer) are in flight, so memory stays at `depth` records
whatever the length of the input, and a slow consumer (the drive) throttles the producers.
The input is pulled in the caller's thread (a tape drive or a tree walk must stay in one
thread and in order); only `fn` runs on the workers. With `workers=0` everything runs in the
caller's thread, for comparison and for debugging.

Threads, not processes: the work is AES-GCM, zstd, BLAKE3 and file I/O, which release the
GIL on large buffers, and records are megabytes, so handing them between processes would
cost as much as the work (tests/bench/bench_tape.py measures both limits in the same run).

An exception in `fn` is raised to the consumer at that item's turn, in order; closing the
generator early (the consumer failed or stopped) cancels what has not started and waits for
what has, so no worker outlives the copy.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core, at least 2 (I/O overlaps crypto even on one core), at most 8."""
    return max(2, min(8, os.cpu_count() or 1))


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, depth: int | None = None
) -> Generator[R, None, None]:
    """`map(fn, items)` on `workers` threads, in order, at most `depth` items in flight."""
    if workers <= 0:
        yield from map(fn, items)
        return
    limit = max(1, depth if depth is not None else 2 * workers)
    source = iter(items)
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tape")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                    break
                pending.append(pool.submit(fn, item))  # type: ignore[arg-type]
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def read_ahead(items: Iterable[T], *, depth: int = 4) -> Generator[T, None, None]:
    """`items`, produced on a thread of their own at most `depth` ahead of the consumer.

    For an input that costs CPU to produce (the walk of a point's trees) while the consumer's
    thread is busy with work that releases the GIL (writing to the drive): both run at once.
    An exception in the producer is raised to the consumer at that point of the sequence;
    closing the generator early stops the producer (at its next item) and waits for it."""
    out: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            last: tuple[bool, object] = (True, _END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            last = (False, err)
        while not stop.is_set():
            try:
                out.put(last, timeout=0.1)
                return
            except queue.Full:
                continue

    producer = threading.Thread(target=produce, name="tape-walk", daemon=True)
    producer.start()
    try:
        while True:
            ok, item = out.get()
            if not ok:
                assert isinstance(item, BaseException)
                raise item
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()


def timed(items: Iterable[T], clock: StageClock | None, name: str) -> Iterator[T]:
    """`items`, the CPU time of producing each one counted as stage `name` of `clock`."""
    source = iter(items)
    while True:
        if clock is None:
            item = next(source, _END)
        else:
            with clock.stage(name):
                item = next(source, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]


class StageClock:
    """CPU seconds spent in each stage of a copy, summed over the threads that ran it
    (`time.thread_time`, so time a thread waited for the GIL, a lock or the disk is not counted).
    Tells which stage binds (tests/bench/bench_tape.py prints them per MiB)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - started
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + spent
