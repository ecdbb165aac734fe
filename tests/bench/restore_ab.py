"""Full restores alone, alternated, on a work directory a benchmark kept (`--keep`).

    python tests/bench/restore_ab.py WORKDIR --order base,new,restic,new,base --base-src /tmp/base

`--src NAME=DIR` adds more trees, each run as NAME.

WORKDIR is what `bench_backup.py --keep` or `bench_smallfiles.py --keep` left (its protectctl
and restic repositories, already backed up). `new` restores with the protectctl on PATH,
`base` with the same command but PYTHONPATH set to --base-src (e.g. an older commit unpacked
with `git archive COMMIT | tar -x -C DIR`), `restic` with restic. Each run restores into a
directory of its own under WORKDIR/restore, and the trees are deleted only after the last run:
on ext4 without a journal, creating a file skips over every inode deleted in the last
`dirty_expire` seconds (~30 s) in its block group (`recently_deleted`, a buffer lookup per
skipped inode), so a restore started right after deleting the previous one's 4,000 files spent
a third of its CPU there (perf) and the wall ratio of any two tools was pulled towards 1.
Before the first run, what an earlier call left is deleted and the script waits that long.
Wall, CPU (user + sys) and peak RSS come from the bench's own `run_measured`, with the load
average before and after. Nothing is verified here: the
benchmarks that made WORKDIR verified the restores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_backup import Protectctl, Restic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--order", default="base,new,restic,new,base")
    parser.add_argument("--base-src", type=Path, help="a source tree of protectctl for `base` runs")
    parser.add_argument(
        "--src", action="append", default=[], metavar="NAME=DIR", help="more source trees, each run as NAME in --order"
    )
    parser.add_argument(
        "--settle", type=float, default=_settle_seconds(), help="seconds to wait after deleting old trees"
    )
    args = parser.parse_args()
    work: Path = args.workdir
    source = work / "data"
    protectctl, restic = Protectctl(work, source), Restic(work, source)
    order = args.order.split(",")
    sources = {"base": args.base_src, **{k: Path(v) for k, _, v in (s.partition("=") for s in args.src)}}
    for which in order:
        if which not in ("new", "restic") and sources.get(which) is None:
            parser.error(f"`{which}` runs need a source tree (--base-src, or --src {which}=DIR)")
    if (work / "restore").exists():
        shutil.rmtree(work / "restore")
        os.sync()
        time.sleep(args.settle)
    for run, which in enumerate(order):
        target = work / "restore" / f"{run}-{which}"
        target.parent.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        if which == "restic":
            measure, _ = restic.restore(target)
        else:
            protectctl.env = {k: v for k, v in protectctl.env.items() if k != "PYTHONPATH"}
            if which != "new":
                protectctl.env["PYTHONPATH"] = str(sources[which])
            measure, _ = protectctl.restore(target)
        cpu = (measure.user_s or 0) + (measure.sys_s or 0)
        rss = (measure.max_rss_kib or 0) // 1024
        print(
            f"{which:7s} wall {measure.seconds:6.1f} s  cpu {cpu:6.1f} s (user {measure.user_s} sys {measure.sys_s})"
            f"  rss {rss} MiB  rc {measure.rc}  load {load:.1f}->{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if measure.rc:
            print(measure.stderr[-2000:])
    shutil.rmtree(work / "restore", ignore_errors=True)


def _settle_seconds() -> float:
    """How long the kernel counts a deleted inode as recently deleted (vm.dirty_expire_centisecs)."""
    try:
        return int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100 + 1
    except (OSError, ValueError):
        return 31.0


if __name__ == "__main__":
    main()
