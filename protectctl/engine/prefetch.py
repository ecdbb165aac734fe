"""Reading many small objects from a store whose requests are costly (s3), a few at a time.

`fetch_in_order(storage, kind, names)` yields `(name, bytes or the error)` in the order of
`names`, with up to the store's `read_parallelism` GETs in flight ahead of the consumer (1,
the default, reads one after another as before: local disk, sftp). Used for the point
manifests a job scans and the index objects it loads: on SeaweedFS a GET costs ~5-40 ms, so
a repository of 2,000 points read one by one spends 10-80 s on round trips alone.

Errors are handed back, not raised, so the caller keeps its own policy per object (a
manifest that vanished is skipped, a damaged one reported). At most `read_parallelism`
objects are held beyond the one being consumed: memory stays bounded for large index objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from protectctl.engine.storage.base import ObjectKind, StorageBackend


def read_parallelism(storage: StorageBackend) -> int:
    return max(1, int(getattr(storage, "read_parallelism", 1)))


def fetch_in_order(
    storage: StorageBackend, kind: ObjectKind, names: Iterable[str], *, limit: int | None = None
) -> Iterator[tuple[str, bytes | Exception]]:
    workers = read_parallelism(storage) if limit is None else max(1, min(limit, read_parallelism(storage)))
    if workers == 1:
        for name in names:
            try:
                yield name, storage.get(kind, name)
            except Exception as err:  # handed to the caller, which decides
                yield name, err
        return
    pending: deque[tuple[str, Future[bytes]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix=f"get-{kind.value}") as pool:
        try:
            for name in names:
                pending.append((name, pool.submit(storage.get, kind, name)))
                if len(pending) > workers:
                    yield _result(*pending.popleft())
            while pending:
                yield _result(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()


def _result(name: str, future: Future[bytes]) -> tuple[str, bytes | Exception]:
    try:
        return name, future.result()
    except Exception as err:
        return name, err
