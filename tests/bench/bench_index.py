"""The in-memory index alone: write and read one index object of N blobs, build the Index, look
blobs up (20,000 lookups, then 20,000 has_live: at 200,000 blobs the second crosses the budget
after which a sorted object builds its dict, engine/index.py).

    python tests/bench/bench_index.py --blobs 1000000
    git show cc13aaa:protectctl/engine/index.py > /tmp/index_before.py
    python tests/bench/bench_index.py --blobs 1000000 --module /tmp/index_before.py   # another version

CPU seconds (`time.process_time`, so a loaded machine inflates them less than wall time) and
the growth of RSS while the Index is built; each version in its own process.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from protectctl.engine import index as current  # noqa: E402
from protectctl.engine.crypto import Sealer  # noqa: E402
from protectctl.engine.pack import BlobKind, PackEntry  # noqa: E402

PER_PACK = 20_000


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def _module(path: Path | None) -> ModuleType:
    if path is None:
        return current
    spec = importlib.util.spec_from_file_location("index_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=200_000)
    parser.add_argument("--module", type=Path, help="an index.py to measure instead of this tree's")
    args = parser.parse_args()
    module = _module(args.module)
    sealer = Sealer(bytes(32))
    rng = random.Random(1)
    packs: dict[str, list[PackEntry]] = {}
    for start in range(0, args.blobs, PER_PACK):
        count = min(PER_PACK, args.blobs - start)
        packs[rng.randbytes(32).hex()] = [
            PackEntry(rng.randbytes(32), BlobKind.DATA, i * 300, 300, 250) for i in range(count)
        ]
    t = time.process_time()
    name, stored = module.encode_index(sealer, module.IndexFile(packs=packs))  # each version its own format
    written = time.process_time() - t
    probes = [e.blob_id for entries in packs.values() for e in entries][:: max(1, args.blobs // 20_000)]
    del packs
    gc.collect()
    rss = _rss_mib()
    t0 = time.process_time()
    read = module.decode_index(sealer, name, stored)
    t1 = time.process_time()
    index = module.Index()
    index.add_file(name, read)
    t2 = time.process_time()
    grown = _rss_mib() - rss
    for blob_id in probes:
        index.lookup(blob_id)
    t3 = time.process_time()
    for blob_id in probes:
        index.has_live(blob_id)
    t4 = time.process_time()
    print(
        f"{args.blobs:,} blobs ({args.module or 'this tree'}): write {written:.3f} s, read {t1 - t0:.3f} s, "
        f"build {t2 - t1:.3f} s, "
        f"RSS +{grown:.1f} MiB, lookup {(t3 - t2) / len(probes) * 1e6:.2f} us, "
        f"has_live {(t4 - t3) / len(probes) * 1e6:.2f} us"
    )


if __name__ == "__main__":
    main()
