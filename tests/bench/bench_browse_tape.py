#!/usr/bin/env python3
"""Browsing tape copies (issue 15, `--from tape`): what `ls`, `find`, `versions` and `cat` read
of the cartridges, against a whole-point restore from tape.

A filesystem source of --files small files in directories of 100 plus --big files of --big-size
each (random: nothing deduplicates), backed up --points times (a few small files change between
points) and each point copied to a virtual cartridge (tape format 2). Then, in-process, with the
disk repository moved away: `ls` of the top level, `find '*17.txt'` over every copy, `versions` of
a file, `cat` of a big file, and a whole `restore --from tape` of the newest point. For each: the
seconds and the tape records read (records located through the index, or spooled by a whole read).

    python tests/bench/bench_browse_tape.py                      # 20,000 files, 8 x 16 MiB, 3 points
    python tests/bench/bench_browse_tape.py --files 2000 --big 2 --points 2

Note the load (`uptime`) beside the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--big", type=int, default=8)
    parser.add_argument("--big-size", type=int, default=16 << 20)
    parser.add_argument("--points", type=int, default=3)
    args = parser.parse_args()

    from protectctl import api
    from protectctl.browse import tape as browse_tape
    from protectctl.tape import reader as tape_reader
    from tests.conftest import write_policy
    from tests.integration.test_browse import fast_repository
    from tests.integration.test_tape import POLICY

    reads: list[tuple[int, int]] = []
    close = tape_reader.TapePointReader.close

    def counted(self: tape_reader.TapePointReader) -> None:
        reads.append((self.records_read, len(self._records)))
        close(self)

    tape_reader.TapePointReader.close = counted  # type: ignore[method-assign]

    base = Path(tempfile.mkdtemp(prefix="bench-browse-tape-"))
    try:
        policy = write_policy(base / "site", POLICY.format(capacity="100GB"))
        fast_repository(policy)
        data = policy / "data"
        for i in range(args.files):
            d = data / f"d{i // 100:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}.txt").write_text(f"file {i}\n")
        for i in range(args.big):
            (data / f"big{i}.bin").write_bytes(os.urandom(args.big_size))
        api.apply(policy, confirm=lambda _plan: True)
        api.tape_label(policy, 1, "monthly")
        started = time.perf_counter()
        for n in range(args.points):
            if n:
                for i in range(0, args.files, max(1, args.files // 5)):
                    (data / f"d{i // 100:04d}" / f"f{i}.txt").write_text(f"file {i} changed in point {n}\n")
            (result,) = api.run_backup(policy, "full", "docs", None, agent_config=None, progress=None)
            assert result.ok
            api.run_tape(policy, "docs", None)
        made = time.perf_counter() - started
        shutil.move(policy / ".protectctl" / "repo", base / "repo-away")
        (source,) = api.browse_sources(policy, "docs/home", agent_config=None)

        def timed(name: str, work: Callable[[object], object]) -> None:
            reads.clear()
            with api.tape_session(policy, f"bench {name}") as service:
                t = time.perf_counter()
                work(service)
                seconds = time.perf_counter() - t
            located = sum(r for r, _ in reads)
            spooled = sum(s for _, s in reads)
            print(f"| {name} | {seconds:.2f} s | {located} | {spooled} | {len(reads)} |")

        copy = max(api.tape_service(policy).copies_of("docs/home"), key=lambda c: c.point_time)
        print(
            f"site: {args.files:,} files + {args.big} x {args.big_size >> 20} MiB, {args.points} copies ({made:.0f} s)"
        )
        print(f"newest copy: {copy.bytes_plain / 2**20:.0f} MiB, {copy.blobs:,} blobs")
        print(f"load: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
        print("| command | time | records located | records spooled | copies opened |")
        print("|---|---|---|---|---|")
        timed("ls (top level)", lambda s: browse_tape.ls(s, source, "", "latest"))  # type: ignore[arg-type]
        timed(
            "find '*17.txt', every copy",
            lambda s: browse_tape.find(s, [source], "docs", "*17.txt", since=None, until=None),  # type: ignore[arg-type]
        )
        timed("versions d0000/f0.txt", lambda s: browse_tape.versions(s, source, "d0000/f0.txt"))  # type: ignore[arg-type]
        timed("cat big0.bin", lambda s: browse_tape.cat(s, source, "big0.bin", "latest", lambda _b: None))  # type: ignore[arg-type]
        reads.clear()
        t = time.perf_counter()
        api.restore(
            policy,
            "docs/home",
            "latest",
            agent_config=None,
            target=str(base / "restored"),
            subpaths=[],
            dry_run=False,
            overwrite=False,
            progress=None,
            from_tape=True,
        )
        print(
            f"| restore --from tape (whole point) | {time.perf_counter() - t:.2f} s | "
            f"{sum(r for r, _ in reads)} | {sum(s for _, s in reads)} | {len(reads)} |"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
