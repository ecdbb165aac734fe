"""Tape copies alternated between two versions of protectctl, on one kept dataset and repository.

    python tests/bench/tape_ab.py /var/tmp/tape-ab --size 128MiB --base-src /tmp/base --pairs 5

`base` runs import protectctl from --base-src (e.g. an older commit unpacked with
`git archive COMMIT | tar -x -C DIR`), `new` runs the one of this tree. The first run builds
the dataset (tests/bench/dataset.py) and backs it up into WORKDIR/repo; every run then, in a
process of its own: copies the point to a fresh virtual cartridge (tape write), reads it back
and restores it verified (tape read), and restores the same point from the repository (the
restorer alone, what the read can reach at best). Wall and CPU seconds (this process and its
threads) per phase, the load, and at the end the medians per version: on a shared machine only
alternated runs compare. `--write-only`: the tape write alone (the restores' writeback of what
they wrote otherwise lands on the next run's phases).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PASS = b"protectctl-bench-passphrase"
PHASES = ("tape_write", "tape_read", "repo_restore")


def _one(work: Path, size: int, write_only: bool) -> dict[str, object]:
    """One run of the phases with whatever protectctl is first on sys.path."""
    import resource
    from datetime import UTC, datetime

    from protectctl.agent.jobs import RetentionSpec, SourceJob, run_backup
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage
    from protectctl.progress import NullProgress
    from protectctl.restore.run import restore_tree
    from protectctl.tape.catalog import Cartridge, CartridgeState, Catalog
    from protectctl.tape.copy import PoolTarget, PoolWriter
    from protectctl.tape.keys import KeyStore
    from protectctl.tape.library import VirtualLibrary
    from protectctl.tape.reader import TapePointReader
    from protectctl.tape.volume import Volume, open_volume, write_label
    from tests.bench import dataset

    data, storage = work / "data", LocalStorage(work / "repo")
    if not (work / "point").exists():
        dataset.build(data, size)
        Repository.init(storage, PASS, kdf_n=2**10)
        job = SourceJob(
            source="bench/data",
            provider="filesystem",
            spec={"path": str(data)},
            storage=storage,
            passphrase=lambda: PASS,
            state_dir=work / "state",
            host="bench",
            retention=RetentionSpec(keep_within_s=86400),
        )
        (work / "point").write_text(run_backup(job, "full").point_id)
    point_id = (work / "point").read_text()
    for leftover in ("lib", "keys", "from-tape", "from-repo"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    now = datetime.now(UTC)
    library = VirtualLibrary(work / "lib", slots=4, drives=1, capacity_bytes=4 * size + (64 << 20))
    keys = KeyStore(work / "keys", {"kek": lambda: PASS}, kdf_n=2**10)
    key = keys.create("kek", now=now)
    library.add_cartridge("ABTEST1L")
    cipher = write_label(library.load("ABTEST1L"), "ab", key.id, "kek", keys.kek(key.id), "lib", now)
    library.unload(1)
    catalog = Catalog()
    catalog.cartridges["ABTEST1L"] = Cartridge(
        "ABTEST1L", "lib", "ab", CartridgeState.FILLING, key.id, cipher.label.vid, now, library.capacity_bytes
    )
    writer = PoolWriter(
        library, PoolTarget("lib", "ab", "kek", 86400), catalog, keys, lambda: None, now, NullProgress()
    )
    import protectctl

    out: dict[str, object] = {"load": os.getloadavg()[0], "source": str(Path(protectctl.__file__).parents[1])}

    def measured(name: str, action: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, started = usage.ru_utime + usage.ru_stime, time.perf_counter()
        action()  # type: ignore[operator]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out[name] = (time.perf_counter() - started, usage.ru_utime + usage.ru_stime - cpu)

    with Repository.open(storage, PASS) as repo:
        point = repo.load_point(point_id)
        measured("tape_write", lambda: (writer.copy_point(repo, point), writer.close()))  # type: ignore[func-returns-value]
    out["mib"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / (1 << 20)
    if write_only:
        return out
    copy = catalog.copies[point_id]
    assert point.tree is not None
    tree = point.tree

    def mount(barcode: str) -> tuple[Volume, object]:
        drive = library.load(barcode)
        return Volume(drive, open_volume(drive, keys.kek)), lambda: library.unload(1)

    def tape_read() -> None:
        with TapePointReader(work) as reader:
            reader.read_parts(point_id, copy.parts, mount)  # type: ignore[arg-type]
            assert restore_tree(reader, tree, work / "from-tape").verified == point.stats.files

    def repo_restore() -> None:
        with Repository.open(storage, PASS) as repo:
            assert restore_tree(repo, tree, work / "from-repo").verified == point.stats.files

    measured("tape_read", tape_read)
    measured("repo_restore", repo_restore)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--size", default="128MiB")
    parser.add_argument("--base-src", type=Path, required=True, help="a protectctl source tree for `base` runs")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--write-only", action="store_true", help="only the tape write (no restores dirtying the cache)"
    )
    parser.add_argument("--one", choices=("base", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        sys.path.insert(0, str(args.base_src if args.one == "base" else HERE.parents[2]))
        from tests.bench import dataset

        print(json.dumps(_one(args.workdir, dataset.parse_size(args.size), args.write_only)))
        return 0
    runs: dict[str, list[dict[str, object]]] = {"base": [], "new": []}
    for _ in range(args.pairs):
        for which in ("base", "new"):
            command = [sys.executable, str(HERE), str(args.workdir), "--size", args.size]
            command += ["--base-src", str(args.base_src), "--one", which] + ["--write-only"] * args.write_only
            result: dict[str, Any] = json.loads(
                subprocess.run(command, check=True, capture_output=True, text=True).stdout
            )
            runs[which].append(result)
            mib = result["mib"]
            shown = ", ".join(
                f"{p} {mib / result[p][0]:6.1f} MiB/s {result[p][1] * 1000 / mib:5.2f} ms CPU/MiB"
                for p in PHASES
                if p in result
            )
            print(f"{which:<4} load {result['load']:5.2f}: {shown}  ({result['source']})", flush=True)
    for which, results in runs.items():
        mib = float(str(results[0]["mib"]))
        medians = ", ".join(
            f"{p} {statistics.median(mib / r[p][0] for r in results):6.1f} MiB/s "  # type: ignore[index]
            f"{statistics.median(r[p][1] * 1000 / mib for r in results):5.2f} ms CPU/MiB"  # type: ignore[index]
            for p in PHASES
            if p in results[0]
        )
        print(f"median {which}: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
