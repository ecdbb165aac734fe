#!/usr/bin/env python3
"""The machine's limits for a backup of big files: each stage alone, on one thread and on N.

Measures, on the bench dataset's kind of data (1 MiB pieces, half text-like, half random),
the throughput of every stage a big file goes through in a backup: read (page cache),
FastCDC chunking, keyed BLAKE3 (one thread, and with `max_threads`), zstd level 3, AES-256-GCM
and writing a pack file, then the restore's own stages: AES-256-GCM decrypt_into, zstd
decompression into a reused buffer (as pack.decode_body_into does) and writing new files with
pwrite (1 MiB at a time, page cache, as restore/fs.py does). Each runs first on one thread, then
on N threads at once (aggregate): a stage whose N-thread figure is about N times its one-thread
figure releases the GIL.

    python tests/bench/bench_stages.py                # 64 MiB per stage, threads 1 and cores
    python tests/bench/bench_stages.py --mib 256 --threads 2 --json

Run it beside tests/bench/bench_backup.py (same load) to say how far each stage of the
backup is from the machine's limit (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent.parent))

import blake3  # noqa: E402
import pyfastcdc  # noqa: E402
import zstandard  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from tests.bench import dataset  # noqa: E402

MiB = 1 << 20


def _pieces(total: int) -> list[bytes]:
    """1 MiB pieces: half text-like (the dataset's lines), half random."""
    return [dataset.content(1, f"stages/{i}", MiB, text=i % 2 == 0) for i in range(total // MiB)]


def _timed(threads: int, work: Callable[[int], int]) -> tuple[float, float]:
    """MiB/s of `work(thread_index)` (returns bytes done) run on `threads` threads at once, and
    MiB per CPU-second of one thread (its own CPU time: what a core does, whatever the load)."""
    done = [0] * threads
    cpu = [0.0] * threads
    start_gate = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        start_gate.wait()
        t0 = time.thread_time()
        done[i] = work(i)
        cpu[i] = time.thread_time() - t0

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return sum(done) / MiB / (time.perf_counter() - t0), sum(done) / MiB / max(sum(cpu), 1e-9)


def measure(total: int, threads: list[int]) -> dict[str, dict[int, tuple[float, float]]]:
    pieces = _pieces(total)
    key = os.urandom(32)
    aead = AESGCM(key)
    results: dict[str, dict[int, tuple[float, float]]] = {}
    tmp = tempfile.mkdtemp(prefix="bench-stages-")
    src = Path(tmp, "src")
    with open(src, "wb") as f:
        for p in pieces:
            f.write(p)
    with open(src, "rb") as f:  # warm the page cache
        while f.read(8 * MiB):
            pass

    def read(_: int) -> int:
        buf = bytearray(8 * MiB)
        fd = os.open(src, os.O_RDONLY)
        try:
            got = pos = 0
            while n := os.preadv(fd, [buf], pos):
                pos += n
                got += n
            return got
        finally:
            os.close(fd)

    def chunk(_: int) -> int:
        data = b"".join(pieces)
        cdc = pyfastcdc.FastCDC(768 << 10, min_size=256 << 10, max_size=4 << 20, seed=1)
        return sum(c.length for c in cdc.cut_buf(data))

    def hash1(_: int) -> int:
        for p in pieces:
            blake3.blake3(p, key=key).digest()
        return total

    def hash_auto(_: int) -> int:
        for p in pieces:
            blake3.blake3(p, key=key, max_threads=blake3.blake3.AUTO).digest()
        return total

    def zstd(_: int) -> int:
        cctx = zstandard.ZstdCompressor(level=3)
        for p in pieces:
            cctx.compress(p)
        return total

    def zstd_text(_: int) -> int:
        cctx = zstandard.ZstdCompressor(level=3)
        for p in pieces[::2]:
            cctx.compress(p)
        return len(pieces[::2]) * MiB

    def aes(_: int) -> int:
        out = bytearray(MiB + 16)
        nonce = os.urandom(12)
        for p in pieces:
            aead.encrypt_into(nonce, p, b"aad", out)
        return total

    sealed = [aead.encrypt(b"n" * 12, p, b"aad") for p in pieces]
    frames = [zstandard.ZstdCompressor(level=3).compress(p) for p in pieces]

    def aes_open(_: int) -> int:
        out = bytearray(MiB)
        for c in sealed:
            aead.decrypt_into(b"n" * 12, c, b"aad", out)
        return total

    def unzstd(_: int) -> int:
        dctx = zstandard.ZstdDecompressor()
        out = memoryview(bytearray(MiB))
        for frame in frames:
            reader = dctx.stream_reader(frame)
            got = 0
            while got < MiB and (n := reader.readinto(out[got:])):
                got += n
        return total

    def restore_write(i: int) -> int:
        for n, p in enumerate(pieces):  # files of 8 MiB, created anew each
            path = Path(tmp, f"restored{i}-{n // 8}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.pwrite(fd, p, (n % 8) * MiB)
            finally:
                os.close(fd)
        for n in range(0, len(pieces), 8):
            os.unlink(Path(tmp, f"restored{i}-{n // 8}"))
        return total

    def write(i: int) -> int:
        path = Path(tmp, f"pack{i}")
        for n in range(0, len(pieces), 8):
            with open(path, "wb") as f:
                for p in pieces[n : n + 8]:
                    f.write(p)
            os.unlink(path)
        return total

    stages: dict[str, Callable[[int], int]] = {
        "read (page cache, preadv 8 MiB)": read,
        "FastCDC (pyfastcdc, 1 MiB mean)": chunk,
        "keyed BLAKE3, 1 MiB, one thread": hash1,
        "keyed BLAKE3, 1 MiB, max_threads=AUTO": hash_auto,
        "zstd level 3 (half text, half random)": zstd,
        "zstd level 3 (text only)": zstd_text,
        "AES-256-GCM encrypt_into": aes,
        "write a pack file (8 MiB, no fsync)": write,
        "restore: AES-256-GCM decrypt_into": aes_open,
        "restore: zstd decompress (half text, half random)": unzstd,
        "restore: pwrite 1 MiB into new files (page cache)": restore_write,
    }
    for name, work in stages.items():
        results[name] = {n: _timed(n, work) for n in threads}
    for p in Path(tmp).iterdir():
        p.unlink()
    os.rmdir(tmp)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="MiB per stage and thread (default 64)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the N of the N-thread run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = sorted({1, args.threads})
    results = measure(args.mib * MiB, counts)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"load": load, "threads": counts, "mib_s": results}, indent=2))
        return 0
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    head = " | ".join(f"{n} thread{'s' if n > 1 else ''}, MiB/s" for n in counts)
    print(f"| stage | MiB per CPU-second | {head} |")
    print("|---|---|" + "---|" * len(counts))
    for name, by in results.items():
        print(f"| {name} | {by[1][1]:,.0f} | " + " | ".join(f"{by[n][0]:,.0f}" for n in counts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
