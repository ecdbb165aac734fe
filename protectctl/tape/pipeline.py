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
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
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
