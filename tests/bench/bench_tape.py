#!/usr/bin/env python3
"""Tape benchmark: protectctl tape write and read throughput against plain `tar`, in one run.

One run builds the deterministic dataset (tests/bench/dataset.py), backs it up into a fresh
repository (not timed), then measures on the same disk:

    tape write    PoolWriter.copy_point: read + decrypt the blob bodies from the repository
                  (format 2: no decompress/recompress), re-encrypt under the cartridge key,
                  write records to a virtual cartridge, through the tape pipeline
    tape read     read the cartridge (authenticate every record, spool ciphertext) and restore
                  through the filesystem restorer, verified against stored hashes
    tar write     tar -cf of the dataset directory
    tar read      tar -xf into an empty directory

and, in the same run, the machine's limits for the same work: AES-256-GCM sealing of 4 MiB
records (one thread, and as many threads as the pipeline uses), BLAKE3 hashing (what a
restore verifies with), and `dd` writing (with fsync) and reading 4 MiB blocks on the work
disk. A copy cannot beat the slowest of those it needs; the table says which one binds.

Throughput is logical dataset bytes per second. tar neither compresses nor encrypts nor
verifies, so it is the floor of what the disk allows, not a like-for-like competitor.
Warm cache, as in bench_backup.py.

    python tests/bench/bench_tape.py                  # 256 MiB
    python tests/bench/bench_tape.py --size 1GiB --workdir /var/tmp
    python tests/bench/bench_tape.py --workers 0      # the pipeline off (all in one thread)
    python tests/bench/bench_tape.py --format 1       # the old format (zstd per record)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench import dataset  # noqa: E402

RESULTS_DIR = HERE / "results"
PASS = b"protectctl-bench-passphrase"


_CPU: dict[float, float] = {}  # wall seconds of a _timed call -> CPU seconds it used (this process + children)


def _timed(action: object) -> float:
    """Wall seconds of `action`; the CPU seconds it used (all threads, and children) go to _CPU."""
    import resource

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    before = cpu()
    started = time.perf_counter()
    action()  # type: ignore[operator]
    wall = time.perf_counter() - started
    _CPU[wall] = cpu() - before
    return wall


def limits(workdir: Path, workers: int, total: int = 256 << 20) -> dict[str, float]:
    """MiB/s this machine allows for each step of a tape copy, measured now."""
    import os
    import threading

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    record = os.urandom(4 << 20)
    count = max(4, total // len(record))
    aes = AESGCM(os.urandom(32))
    nonce = os.urandom(12)

    def seal(n: int) -> None:
        for _ in range(n):
            aes.encrypt(nonce, record, b"aad")

    def threaded(n_threads: int) -> float:
        threads = [threading.Thread(target=seal, args=(count // n_threads,)) for _ in range(n_threads)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return (count // n_threads) * n_threads * 4 / (time.perf_counter() - started)

    mib = 1 << 20
    out = {"aes_gcm_1_thread": count * 4 / _timed(lambda: seal(count))}
    out[f"aes_gcm_{max(workers, 1)}_threads"] = threaded(max(workers, 1))
    out["blake3"] = count * 4 / _timed(lambda: [blake3.blake3(record).digest() for _ in range(count)])
    target = workdir / "dd.bin"
    blocks = max(4, total // (4 * mib))
    out["dd_write_fsync"] = (
        blocks
        * 4
        / _timed(
            lambda: subprocess.run(
                ["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={blocks}", "conv=fsync"],
                check=True,
                capture_output=True,
            )
        )
    )
    out["dd_read"] = (
        blocks
        * 4
        / _timed(
            lambda: subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=4M"], check=True, capture_output=True)
        )
    )
    target.unlink()
    return out


def run(
    size: int, workdir: Path, *, workers: int | None = None, format_version: int | None = None
) -> dict[str, object]:
    from protectctl.agent.jobs import RetentionSpec, SourceJob, run_backup
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage
    from protectctl.progress import NullProgress
    from protectctl.restore.run import restore_tree
    from protectctl.tape.catalog import Catalog
    from protectctl.tape.copy import PoolTarget, PoolWriter
    from protectctl.tape.keys import KeyStore
    from protectctl.tape.library import VirtualLibrary
    from protectctl.tape.reader import TapePointReader
    from protectctl.tape.volume import Volume, open_volume, write_label

    data = workdir / "data"
    dataset.build(data, size)
    logical = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    storage = LocalStorage(workdir / "repo")
    Repository.init(storage, PASS, kdf_n=2**10)
    job = SourceJob(
        source="bench/data",
        provider="filesystem",
        spec={"path": str(data)},
        storage=storage,
        passphrase=lambda: PASS,
        state_dir=workdir / "state",
        host="bench",
        retention=RetentionSpec(keep_within_s=86400),
    )
    point_id = run_backup(job, "full").point_id

    now = datetime.now(UTC)
    library = VirtualLibrary(workdir / "lib", slots=4, drives=1, capacity_bytes=4 * size + (64 << 20))
    keys = KeyStore(workdir / "keys", {"kek": lambda: PASS}, kdf_n=2**10)
    key = keys.create("kek", now=now)
    catalog = Catalog()
    from protectctl.tape.catalog import Cartridge, CartridgeState

    library.add_cartridge("BENCH1L9")
    drive = library.load("BENCH1L9")
    cipher = write_label(drive, "bench", key.id, "kek", keys.kek(key.id), "lib", now)
    library.unload(1)
    catalog.cartridges["BENCH1L9"] = Cartridge(
        "BENCH1L9",
        "lib",
        "bench",
        CartridgeState.SCRATCH,
        key.id,
        cipher.label.vid,
        now,
        library.capacity_bytes,
    )
    catalog.cartridges["BENCH1L9"].state = CartridgeState.FILLING
    writer = PoolWriter(
        library,
        PoolTarget("lib", "bench", "kek", 86400),
        catalog,
        keys,
        lambda: None,
        now,
        NullProgress(),
        workers=workers,
        format_version=format_version,
    )
    with Repository.open(storage, PASS) as repo:
        point = repo.load_point(point_id)
        tape_write_s = _timed(lambda: (writer.copy_point(repo, point), writer.close()))  # type: ignore[func-returns-value]
    copy = catalog.copies[point_id]
    tape_bytes = sum(p.stat().st_size for p in (workdir / "lib" / "cartridges").rglob("f*"))

    def mount(barcode: str) -> tuple[Volume, object]:
        d = library.load(barcode)
        return Volume(d, open_volume(d, keys.kek)), lambda: library.unload(1)

    read_stages: dict[str, float] = {}
    records: dict[str, int] = {}  # records spooled by the read pass, and opened again for the restore

    def tape_read() -> None:
        with TapePointReader(workdir) as reader:
            if workers is not None:
                reader.workers = workers
            read_stages["(read pass, wall)"] = _timed(
                lambda: reader.read_parts(point_id, copy.parts, mount)  # type: ignore[arg-type]
            )
            read_stages["read pass"] = _CPU[read_stages["(read pass, wall)"]]
            assert point.tree is not None
            restore_s = _timed(lambda: _verified(restore_tree(reader, point.tree, workdir / "from-tape")))
            read_stages["restore (decrypt, decompress, hash, write files)"] = _CPU[restore_s]
            read_stages["(restore, wall)"] = restore_s
            read_stages.update(reader.clock.seconds)
            records.update(spooled=len(reader._records), opened_again=reader.records_opened)

    def _verified(outcome: object) -> None:
        assert getattr(outcome, "verified", None) == point.stats.files

    tape_read_s = _timed(tape_read)

    # the restorer alone, from the disk repository: what the tape read can reach at best
    def repo_restore() -> None:
        with Repository.open(storage, PASS) as repo:
            assert point.tree is not None
            _verified(restore_tree(repo, point.tree, workdir / "from-repo"))

    repo_restore_s = _timed(repo_restore)
    shutil.rmtree(workdir / "from-repo", ignore_errors=True)
    tar_file = workdir / "data.tar"
    tar_write_s = _timed(lambda: subprocess.run(["tar", "-cf", str(tar_file), "-C", str(data), "."], check=True))
    (workdir / "from-tar").mkdir()
    tar_read_s = _timed(
        lambda: subprocess.run(["tar", "-xf", str(tar_file), "-C", str(workdir / "from-tar")], check=True)
    )
    assert dataset.manifest(workdir / "from-tape") == dataset.manifest(data)
    mib = 1 << 20
    import os

    return {
        "time": now.isoformat(),
        "format": writer.format_version,
        "workers": writer.workers,
        "load": os.getloadavg(),
        # as many bytes as the copy (8-256 MiB), so a smoke run stays quick
        "limits_mib_per_s": limits(workdir, writer.workers, total=min(256 << 20, max(8 << 20, logical))),
        # CPU seconds per stage, summed over the threads running it (PoolWriter.clock, reader.clock;
        # the read's restore and read pass: process CPU); "(..., wall)" are wall seconds
        "stages_cpu_seconds": {"tape_write": dict(writer.clock.seconds), "tape_read": read_stages},
        "tape_read_records": records,
        "restore_from_repository": {
            "seconds": repo_restore_s,
            "cpu_seconds": _CPU[repo_restore_s],
            "mib_per_s": logical / mib / repo_restore_s,
        },
        "dataset_bytes": logical,
        "files": point.stats.files,
        "tape_bytes": tape_bytes,
        "tar_bytes": tar_file.stat().st_size,
        "seconds": {
            "tape_write": tape_write_s,
            "tape_read": tape_read_s,
            "tar_write": tar_write_s,
            "tar_read": tar_read_s,
        },
        # CPU seconds per phase: on a shared, loaded machine wall time mostly measures the queue
        "cpu_seconds": {
            "tape_write": _CPU[tape_write_s],
            "tape_read": _CPU[tape_read_s],
            "tar_write": _CPU[tar_write_s],
            "tar_read": _CPU[tar_read_s],
        },
        "mib_per_s": {
            "tape_write": logical / mib / tape_write_s,
            "tape_read": logical / mib / tape_read_s,
            "tar_write": logical / mib / tar_write_s,
            "tar_read": logical / mib / tar_read_s,
        },
    }


def bounds(result: dict[str, object]) -> dict[str, dict[str, float]]:
    """For each direction, the rate (logical MiB/s) each limit measured in the same run allows; the
    smallest binds. Crypto and disk work on tape bytes (compressed), hence the ratio."""
    limits = result["limits_mib_per_s"]
    assert isinstance(limits, dict)
    ratio = float(str(result["dataset_bytes"])) / float(str(result["tape_bytes"]))
    aes = max(v for k, v in limits.items() if k.startswith("aes_gcm"))
    restore = result["restore_from_repository"]
    assert isinstance(restore, dict)
    # a read authenticates every record before the restore writes anything: the read pass and the
    # restore follow each other, so their times add up
    read_pass = min(limits["dd_read"], aes) * ratio
    return {
        "tape_write": {
            "disk write, fsync'ed (dd)": limits["dd_write_fsync"] * ratio,
            "AES-256-GCM twice per byte (repository open, cartridge seal)": aes / 2 * ratio,
        },
        "tape_read": {
            "disk read (dd)": limits["dd_read"] * ratio,
            "AES-256-GCM twice per byte (read pass, restore)": aes / 2 * ratio,
            "the restorer itself, from the disk repository": restore["mib_per_s"],
            "read pass at the disk's and AES-GCM's pace, then the restorer": 1
            / (1 / read_pass + 1 / restore["mib_per_s"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256MiB", help="dataset size (default 256MiB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to work (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default tests/bench/results/)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--workers", type=int, default=None, help="pipeline threads (0: none; default per core)")
    parser.add_argument("--format", type=int, default=None, choices=(1, 2), help="tape format to write")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-tape-", dir=args.workdir))
    try:
        result = run(dataset.parse_size(args.size), work, workers=args.workers, format_version=args.format)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or RESULTS_DIR / f"tape-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rates, secs, cpus = result["mib_per_s"], result["seconds"], result["cpu_seconds"]
    stages, limits, load = result["stages_cpu_seconds"], result["limits_mib_per_s"], result["load"]
    assert isinstance(rates, dict) and isinstance(secs, dict) and isinstance(cpus, dict)
    assert isinstance(stages, dict) and isinstance(limits, dict) and isinstance(load, tuple)
    sizes = {k: dataset.human(float(str(result[k]))) for k in ("dataset_bytes", "tape_bytes", "tar_bytes")}
    print(
        f"dataset {sizes['dataset_bytes']}, {result['files']} files; "
        f"on tape {sizes['tape_bytes']}, tar {sizes['tar_bytes']}"
    )
    print(
        f"format {result['format']}, {result['workers']} pipeline worker(s), load {' '.join(f'{x:.2f}' for x in load)}"
    )
    records, restore = result["tape_read_records"], result["restore_from_repository"]
    assert isinstance(records, dict) and isinstance(restore, dict)
    mib = float(str(result["dataset_bytes"])) / (1 << 20)
    for name in ("tape_write", "tape_read", "tar_write", "tar_read"):
        cpu = cpus[name]
        print(
            f"  {name:<10} {rates[name]:8.1f} MiB/s  ({secs[name]:.2f} s; {cpu:.2f} s CPU, "
            f"{cpu * 1000 / mib:.2f} ms CPU per MiB, {cpu / secs[name]:.2f} cores)"
        )
        for stage, value in stages.get(name, {}).items():
            shown = f"{value:.2f} s" if stage.startswith("(") else f"{value * 1000 / mib:5.2f} ms CPU per MiB"
            print(f"      {stage:<52} {shown}")
        if name == "tape_read":
            print(f"      records spooled {records['spooled']}, opened again for the restore {records['opened_again']}")
    print(
        f"  restore from the repository (same point, same restorer): {restore['mib_per_s']:.1f} MiB/s "
        f"({restore['seconds']:.2f} s; {restore['cpu_seconds'] * 1000 / mib:.2f} ms CPU per MiB)"
    )
    print("machine limits, same run:")
    for name, rate in limits.items():
        print(f"  {name:<18} {rate:8.1f} MiB/s  ({1000 / rate:.2f} ms per MiB)")
    for direction, allowed in bounds(result).items():
        limit, rate = min(allowed.items(), key=lambda kv: kv[1])
        print(
            f"{direction}: binding limit {limit}, {rate:.1f} MiB/s of dataset; "
            f"reached {rates[direction]:.1f} ({rates[direction] / rate:.0%})"
        )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
