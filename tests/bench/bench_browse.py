#!/usr/bin/env python3
"""Browsing benchmark (issue 15): `find` over many points, and reading through `protectctl mount`
against `restic mount` on the same file.

find      a repository of P points of an F-file source (D directories), each point changing
          a few files in a few directories (so most trees are shared, as in real use); the
          timed work is what `protectctl find GROUP PATTERN` does after start-up: open the
          repository, read every point, search them all (target: 100 x 100k in <= 2 s).
          The repository is made directly with the engine (trees and points; every file
          refers to one small stored chunk), which takes a while at full size.
mount     one random file of --file-size backed up by protectctl (engine) and by restic into
          repositories on the same disk; each mounted in its own process (protectctl's FUSE
          filesystem; `restic mount`), then: time to first byte (open + first 64 KiB read,
          at offset 0, and the median over 5 random offsets) and sequential read MiB/s
          (1 MiB reads, cold: each mount reads the file once), and the mount process's CPU
          seconds per GiB read (independent of the machine's load). Ratios are protectctl/restic
          (for time to first byte and CPU lower is better, for MiB/s higher).

    python tests/bench/bench_browse.py                                  # 100 x 100k, 1 GiB
    python tests/bench/bench_browse.py --points 10 --files 10000 --file-size 64MiB
    python tests/bench/bench_browse.py --skip-mount

Note the load (`uptime`) beside the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = HERE / "results"
PASS = b"protectctl-bench-passphrase"
FILES_PER_DIR = 100


def _size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "": 1}
    for unit, factor in units.items():
        if unit and text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


# -- find ----------------------------------------------------------------------------------


def build_points(repo_dir: Path, points: int, files: int, changes: int = 10) -> None:
    """`points` points of a source of `files` files in directories of FILES_PER_DIR."""
    from protectctl.engine.points import Point, PointStats, new_point_id
    from protectctl.engine.repository import BlobKind, Repository
    from protectctl.engine.storage.local import LocalStorage
    from protectctl.engine.tree import Node, NodeType, Tree

    rng = random.Random(15)
    dirs = max(1, files // FILES_PER_DIR)
    repo = Repository.init(LocalStorage(repo_dir), PASS, kdf_n=2**10)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with repo:
        with repo.writer() as writer:
            blob, _ = writer.add(BlobKind.DATA, b"bench file content\n")

            def file_node(d: int, i: int, version: int) -> Node:
                return Node(
                    f"f{d:05d}-{i:03d}.dat".encode(),
                    NodeType.FILE,
                    0o644,
                    1000,
                    1000,
                    None,
                    None,
                    1_700_000_000_000_000_000 + version,
                    0,
                    0,
                    19 + version,
                    chunks=(blob,),
                )

            versions = [[0] * FILES_PER_DIR for _ in range(dirs)]
            dir_trees = [
                repo.save_tree(writer, Tree(tuple(file_node(d, i, 0) for i in range(FILES_PER_DIR))))
                for d in range(dirs)
            ]
            roots = []
            for p in range(points):
                if p:
                    for _ in range(changes):
                        d, i = rng.randrange(dirs), rng.randrange(FILES_PER_DIR)
                        versions[d][i] = p
                        dir_trees[d] = repo.save_tree(
                            writer, Tree(tuple(file_node(d, j, versions[d][j]) for j in range(FILES_PER_DIR)))
                        )
                top = Tree(
                    tuple(
                        Node(
                            f"d{d:05d}".encode(),
                            NodeType.DIR,
                            0o755,
                            1000,
                            1000,
                            None,
                            None,
                            0,
                            0,
                            0,
                            0,
                            subtree=dir_trees[d],
                        )
                        for d in range(dirs)
                    )
                )
                roots.append(repo.save_tree(writer, top))
        for p, root in enumerate(roots):
            repo.save_point(
                Point(
                    new_point_id(),
                    "bench/data",
                    t0 + timedelta(hours=p),
                    "sync",
                    None,
                    root,
                    PointStats(files=files),
                    True,
                )
            )


def time_find(repo_dir: Path, pattern: str) -> tuple[float, float, int, int]:
    """Open + scan + search of every point: (wall seconds, CPU seconds, matches, points). The CPU
    time is what a quiet machine's wall time would be (the search is one thread)."""
    from protectctl.browse import ops
    from protectctl.browse.paths import Pattern
    from protectctl.browse.view import PointTrees
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    started, cpu = time.perf_counter(), time.process_time()
    with Repository.open(LocalStorage(repo_dir), PASS) as repo:
        scan = repo.scan_points("bench/data")
        finder = ops.Finder(PointTrees(repo), Pattern.parse(pattern))
        matches = ops.find(finder, scan.points)
    return time.perf_counter() - started, time.process_time() - cpu, len(matches), len(scan.points)


# -- mount ---------------------------------------------------------------------------------


def serve(repo_dir: str, mountpoint: str) -> None:
    """Mount `repo_dir`'s bench/data points on `mountpoint` (run as a child process)."""
    from protectctl.browse.mount import serve as run
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    # a signal unmounts and ends the loop: not a failure here
    with Repository.open(LocalStorage(Path(repo_dir)), PASS) as repo, contextlib.suppress(KeyboardInterrupt):
        run(repo, ["bench/data"], mountpoint, allow_other=False)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until `path` shows in the mount, then a moment for the mount process to settle (both are
    measured as a user meets them: a mount that is up, a file not read yet)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the mount process exited ({proc.returncode}); see mount-pc.log in the workdir")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)
    time.sleep(1.0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (a load-independent cost of serving reads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_figures(path: Path, size: int, pid: int) -> dict[str, float]:
    rng = random.Random(7)
    started = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        first = f.read(65536)
        ttfb = time.perf_counter() - started
        assert first
        seeks = []
        for _ in range(5):
            offset = rng.randrange(0, max(1, size - 65536))
            began = time.perf_counter()
            f.seek(offset)
            f.read(65536)
            seeks.append(time.perf_counter() - began)
    # sequential, from the start, 1 MiB reads: a fresh open (the first 64 KiB and the seeks above
    # warmed a few chunks, about 1% of a 1 GiB file)
    began, cpu = time.perf_counter(), _cpu_s(pid)
    total = 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    seconds = time.perf_counter() - began
    assert total == size, (total, size)
    return {
        "ttfb_ms": ttfb * 1000,
        "seek_ttfb_ms": statistics.median(seeks) * 1000,
        "mib_per_s": size / (1 << 20) / seconds,
        "cpu_s_per_gib": (_cpu_s(pid) - cpu) / (size / (1 << 30)),
    }


def _unmount(mountpoint: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


def bench_mount(workdir: Path, size: int) -> dict[str, dict[str, float]]:
    from protectctl.agent.jobs import RetentionSpec, SourceJob, run_backup
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    src = workdir / "src"
    src.mkdir()
    big = src / "big.bin"
    with big.open("wb") as f:
        left = size
        while left:
            step = min(left, 16 << 20)
            f.write(os.urandom(step))
            left -= step
    storage = LocalStorage(workdir / "pc-repo")
    Repository.init(storage, PASS, kdf_n=2**10)
    job = SourceJob(
        source="bench/data",
        provider="filesystem",
        spec={"path": str(src)},
        storage=storage,
        passphrase=lambda: PASS,
        state_dir=workdir / "state",
        host="bench",
        retention=RetentionSpec(keep_within_s=86400),
    )
    run_backup(job, "full")
    env = {**os.environ, "RESTIC_PASSWORD": PASS.decode(), "RESTIC_CACHE_DIR": str(workdir / "restic-cache")}
    restic_repo = str(workdir / "restic-repo")
    subprocess.run(["restic", "-q", "-r", restic_repo, "init"], env=env, check=True, capture_output=True)
    subprocess.run(["restic", "-q", "-r", restic_repo, "backup", str(src)], env=env, check=True, capture_output=True)
    subprocess.run(["sync"], check=False)
    out: dict[str, dict[str, float]] = {}

    mp = workdir / "mnt-pc"
    mp.mkdir()
    log = (workdir / "mount-pc.log").open("wb")  # a file, not a pipe nobody reads (it would fill and block)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(workdir / "pc-repo"), str(mp)],
        stdout=log,
        stderr=log,
    )
    try:
        _wait_for(mp / "bench" / "data" / "latest", proc)
        out["protectctl"] = _read_figures(mp / "bench" / "data" / "latest" / "big.bin", size, proc.pid)
    finally:
        _unmount(mp, proc)

    mr = workdir / "mnt-restic"
    mr.mkdir()
    proc = subprocess.Popen(["restic", "-r", restic_repo, "mount", str(mr)], env=env, stdout=log, stderr=log)
    try:
        latest = mr / "snapshots" / "latest"
        _wait_for(latest, proc)
        path = latest / str(big).lstrip("/")
        out["restic"] = _read_figures(path, size, proc.pid)
    finally:
        _unmount(mr, proc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--pattern", default="*-042.dat", help="find pattern (default matches 1 file per dir)")
    parser.add_argument("--file-size", default="1GiB")
    parser.add_argument("--skip-mount", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("REPO", "MOUNTPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-browse-", dir=args.workdir))
    try:
        started = time.perf_counter()
        build_points(workdir / "find-repo", args.points, args.files)
        build_s = time.perf_counter() - started
        find_s, find_cpu_s, matches, points = time_find(workdir / "find-repo", args.pattern)
        result: dict[str, object] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "load": os.getloadavg(),
            "find": {
                "points": points,
                "files": args.files,
                "pattern": args.pattern,
                "matches": matches,
                "seconds": round(find_s, 3),
                "cpu_seconds": round(find_cpu_s, 3),
                "build_seconds": round(build_s, 1),
            },
        }
        print(
            f"find: {points} points x {args.files:,} files, {matches:,} matching paths: {find_s:.2f} s "
            f"({find_cpu_s:.2f} s of CPU; repository built in {build_s:.0f} s)"
        )
        if not args.skip_mount:
            if shutil.which("restic") is None or not os.path.exists("/dev/fuse"):
                print("mount: skipped (needs restic and /dev/fuse)")
            else:
                figures = bench_mount(workdir, _size(args.file_size))
                pc, rs = figures["protectctl"], figures["restic"]
                result["mount"] = {
                    "file_size": args.file_size,
                    **figures,
                    "ratio": {k: round(pc[k] / rs[k], 2) for k in pc},
                }
                for k in pc:
                    print(f"mount {k:<13} protectctl {pc[k]:9.1f}   restic {rs[k]:9.1f}   ratio {pc[k] / rs[k]:.2f}")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        out = args.out or RESULTS_DIR / f"browse-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {out}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
