"""Child process for test_kill: writes points in rounds, printing a marker after each step.

Usage: python kill_writer.py REPO_PATH PASSPHRASE. The parent SIGKILLs it at a marker.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.local import LocalStorage
from protectctl.engine.tree import Node, NodeType, Tree

ROUNDS = 3
CHUNKS = 40


def main() -> None:
    repo = Repository.open(LocalStorage(Path(sys.argv[1])), sys.argv[2].encode())
    print("open", flush=True)
    for round_no in range(ROUNDS):
        with repo.writer() as writer:
            chunks = []
            for i in range(CHUNKS):
                chunks.append(writer.add(BlobKind.DATA, os.urandom(20_000))[0])
                print(f"add {round_no} {i}", flush=True)
            node = Node(
                f"f{round_no}".encode(),
                NodeType.FILE,
                0o644,
                0,
                0,
                None,
                None,
                0,
                0,
                0,
                20_000 * CHUNKS,
                tuple(chunks),
            )
            tree = repo.save_tree(writer, Tree((node,)))
        print(f"committed {round_no}", flush=True)
        point = Point(new_point_id(), "kill/test", datetime.now(UTC), "sync", None, tree, PointStats(), True)
        repo.save_point(point)
        print(f"saved {round_no}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
