"""The archiver's side of a "10 changed" journal sync, in process: no CLI, no watcher, no root.

A tree of `--dirs` directories of 1,000 small files (bench_watch.py's shape), a first backup,
then syncs that each append to one file in ten directories and walk them as a change journal's
walk does (agent/changes.py: the root, the ten directories and their parent; every other
directory reused unwalked, the journal changed in place). Prints the CPU seconds of each sync
(the archiver, the writer's commit and the journal's) and the least of them: on a shared
machine CPU time varies far less than wall time.

    python tests/bench/bench_journal_walk.py --dirs 20 --runs 5
    python tests/bench/bench_journal_walk.py --profile     # cProfile of one sync, by CPU time
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from protectctl.agent.archiver import ArchiveOptions, Archiver  # noqa: E402
from protectctl.agent.changes import Changes, JournalWalk  # noqa: E402
from protectctl.agent.journal import Journal  # noqa: E402
from protectctl.agent.patterns import PathFilter  # noqa: E402
from protectctl.engine.repository import Repository  # noqa: E402
from tests.unit.engine.conftest import make_repo  # noqa: E402

PER_DIR = 1000
# The walk, not racily clean files: the tree is written right before the first backup.
os.environ.setdefault("PROTECTCTL_RACY_SLACK_NS", "0")


def make_tree(src: Path, dirs: int) -> list[bytes]:
    found = []
    for d in range(dirs):
        path = src / "a000" / f"b{d:05d}"
        path.mkdir(parents=True)
        for i in range(PER_DIR):
            (path / f"f{i:04d}").write_bytes(b"x" * (64 + i % 192) + str(d * PER_DIR + i).encode())
        found.append(f"a000/b{d:05d}".encode())
    return found


def sync(repo: Repository, src: Path, journal: Path, changed: set[bytes], point: str) -> float:
    """CPU seconds of one journal walk of `changed` (and their ancestors)."""
    start = time.process_time()
    book = Journal(journal, repo_id=repo.id)
    out = book.begin(in_place=True)
    dirty = {b"", b"a000", *changed}
    walk = JournalWalk(Changes(set(changed), set(), set(), dirty=dirty), book, out, repo)
    with repo.writer() as writer:
        result = Archiver(repo, writer, book, out, ArchiveOptions(root=src, filter=PathFilter(), unchanged=walk)).run()
    out.commit({"point_id": point})
    book.close()
    assert result.files_read == len(changed) and walk.walked == dirty, (result.files_read, walk.walked)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dirs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-walk-") as tmp:
        base = Path(tmp)
        src = base / "src"
        dirs = make_tree(src, args.dirs)
        repo = make_repo(base / "repo")
        journal = base / "journal"
        book = Journal(journal, repo_id=repo.id)
        out = book.begin()
        with repo.writer() as writer:
            Archiver(repo, writer, book, out, ArchiveOptions(root=src, filter=PathFilter())).run()
        book.close()
        out.commit({"point_id": "p0"})
        rng = random.Random(7)
        time.sleep(0.05)
        cpu = []
        prof = cProfile.Profile(time.process_time)
        for run in range(args.runs):
            changed = set(rng.sample(dirs, min(10, len(dirs))))
            for rel in changed:
                with open(src / rel.decode() / "f0000", "ab") as handle:
                    handle.write(b"more")
            profiled = args.profile and run == args.runs - 1
            if profiled:
                prof.enable()
            cpu.append(sync(repo, src, journal, changed, f"p{run + 1}"))
            if profiled:
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
            print(f"sync {run + 1}: {cpu[-1]:.3f} s CPU", flush=True)
        print(f"{args.dirs} directories of {PER_DIR} files, 10 changed: least {min(cpu):.3f} s CPU per sync")


if __name__ == "__main__":
    main()
