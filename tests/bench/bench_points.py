#!/usr/bin/env python3
"""Metadata-scale benchmark: `points list`, `check` and `prune` on many points of a big source.

Issue 12, item 3: a repository holding 500 points of a 1,000,000-file source must stay
interactive. 500 real syncs of a million files would take hours, so the repository is built
through the engine's own API instead (the way the archiver writes, so `check` finds it clean):

    first point   FILES files of 64-191 bytes (one unique chunk each, with its content hash)
                  in FILES/100 leaf directories, grouped under sqrt(leaves) middle directories
    each next     one file of one leaf directory changed: a new chunk, a new leaf tree, its
                  middle tree and the root; every other tree is re-used (what a sync writes)

so the repository holds FILES + POINTS chunks and leaves + middles + 1 + 3 x (POINTS - 1)
trees. Points are one hour apart, the newest an hour ago, under a policy keeping `disk:
HOURS` with HOURS = POINTS / 2, so `prune` forgets about half of them and sweeps their data.

Then, each as the CLI command a user types (`protectctl -C POLICY ...`), with wall time,
CPU time (user+sys) and peak RSS (/usr/bin/time, else the child's rusage):

    points list          the table
    points list --json
    check                structure only (no --read-data)
    prune                forgets ~half the points, then gc
    check                again, after the prune (must stay clean)

    python tests/bench/bench_points.py                              # 1,000,000 files x 500 points
    python tests/bench/bench_points.py --files 20000 --points 50    # smoke size (~1 min)
    python tests/bench/bench_points.py --restic                     # + restic on the same shape

`--restic` also writes the first point's tree to disk and backs it up with restic, then
`--restic-points` (default 20) more snapshots after changing one file each (real `restic
backup` runs, so fewer points), and times `restic snapshots`, `restic check` and `restic
forget --keep-last N/2 --prune`. Results go to tests/bench/results/points-<timestamp>.json
(gitignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench import bench_backup as bb  # noqa: E402

RESULTS_DIR = HERE / "results"
FILES_PER_LEAF = 100
SOURCE = "bench/data"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def content(leaf: int, file: int, version: int) -> bytes:
    """A file's bytes: unique per (leaf, file, version), 64-191 bytes."""
    head = f"leaf {leaf} file {file} version {version}\n".encode()
    return head + b"x" * (64 + (leaf * 31 + file * 7 + version) % 128 - len(head))


class Shape:
    """The generated source: `files` files in leaves of FILES_PER_LEAF under middle directories."""

    def __init__(self, files: int) -> None:
        self.files = files
        self.leaves = max(1, math.ceil(files / FILES_PER_LEAF))
        self.middles = max(1, math.isqrt(self.leaves))
        self.versions: dict[tuple[int, int], int] = {}  # (leaf, file) -> version, when not 0

    def files_in(self, leaf: int) -> int:
        return min(FILES_PER_LEAF, self.files - leaf * FILES_PER_LEAF)

    def middle_of(self, leaf: int) -> int:
        return leaf % self.middles

    def leaves_of(self, middle: int) -> range:
        return range(middle, self.leaves, self.middles)

    def leaf_path(self, leaf: int) -> str:
        return f"m{self.middle_of(leaf):05d}/d{leaf:07d}"


class Builder:
    """Writes the trees of Shape's points through the engine (BlobWriter, encode_tree)."""

    def __init__(self, repo: Any, writer: Any) -> None:
        from protectctl.engine.pack import BlobKind
        from protectctl.engine.tree import HashScheme, Node, NodeType, assemble_tree, encode_node

        self.repo, self.writer = repo, writer
        self.kind = BlobKind
        self.Node, self.NodeType, self.HashScheme = Node, NodeType, HashScheme
        self.assemble, self.encode_node = assemble_tree, encode_node
        self.mtime = 1_700_000_000_000_000_000
        self.trees = 0

    def file_node(self, name: bytes, data: bytes) -> Any:
        chunk, _new = self.writer.add(self.kind.DATA, data)
        hasher = self.repo.content_hasher()
        hasher.update(data)
        return self.Node(
            name=name,
            type=self.NodeType.FILE,
            mode=0o100644,
            size=len(data),
            chunks=(chunk,),
            content_hash=hasher.digest(),
            **self.owner_and_times(),
        )

    def dir_node(self, name: bytes, subtree: Any) -> Any:
        return self.Node(
            name=name, type=self.NodeType.DIR, mode=0o40755, size=0, subtree=subtree, **self.owner_and_times()
        )

    def owner_and_times(self) -> dict[str, Any]:
        """What every generated node shares: one owner, one instant."""
        t = self.mtime
        return {"uid": 1000, "gid": 1000, "user": None, "group": None, "mtime_ns": t, "atime_ns": t, "ctime_ns": t}

    def tree(self, nodes: list[Any]) -> Any:
        """Nodes given sorted by name."""
        self.trees += 1
        blob_id, _new = self.writer.add(self.kind.TREE, self.assemble([self.encode_node(n) for n in nodes]))
        return blob_id

    def leaf(self, shape: Shape, leaf: int) -> Any:
        nodes = [
            self.file_node(f"f{i:03d}".encode(), content(leaf, i, shape.versions.get((leaf, i), 0)))
            for i in range(shape.files_in(leaf))
        ]
        return self.tree(nodes)

    def middle(self, shape: Shape, middle: int, leaf_ids: dict[int, Any]) -> Any:
        return self.tree([self.dir_node(f"d{leaf:07d}".encode(), leaf_ids[leaf]) for leaf in shape.leaves_of(middle)])

    def root(self, middle_ids: list[Any]) -> Any:
        return self.tree([self.dir_node(f"m{m:05d}".encode(), tree) for m, tree in enumerate(middle_ids)])


def build_repository(repo_path: Path, passphrase: str, files: int, points: int, newest: datetime) -> dict[str, Any]:
    """Write `points` points of a `files`-file source into the repository `apply` created."""
    from protectctl.engine.points import Point, PointStats, new_point_id
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    shape = Shape(files)
    started = time.perf_counter()
    repo = Repository.open(LocalStorage(repo_path), passphrase.encode())
    roots: list[Any] = []
    with repo.lock(exclusive=False, command="bench"):
        with repo.writer() as writer:
            build = Builder(repo, writer)
            leaf_ids: dict[int, Any] = {}
            for leaf in range(shape.leaves):
                leaf_ids[leaf] = build.leaf(shape, leaf)
                if leaf and leaf % 1000 == 0:
                    log(f"  first point: {leaf * FILES_PER_LEAF:,} files")
            middle_ids = [build.middle(shape, m, leaf_ids) for m in range(shape.middles)]
            roots.append(build.root(middle_ids))
            first_s = time.perf_counter() - started
            log(f"  first point: {files:,} files, {build.trees:,} trees in {first_s:.1f} s")
            for n in range(1, points):
                leaf = (n * 7919) % shape.leaves  # spread over the leaves, deterministic
                file = n % shape.files_in(leaf)
                shape.versions[(leaf, file)] = shape.versions.get((leaf, file), 0) + 1
                leaf_ids[leaf] = build.leaf(shape, leaf)
                middle = shape.middle_of(leaf)
                middle_ids[middle] = build.middle(shape, middle, leaf_ids)
                roots.append(build.root(middle_ids))
            trees = build.trees
        for n, root in enumerate(roots):
            repo.save_point(
                Point(
                    id=new_point_id(),
                    source=SOURCE,
                    time=newest - timedelta(hours=points - 1 - n),
                    kind="full" if n == 0 else "sync",
                    parent=None,
                    tree=root,
                    stats=PointStats(files=files, dirs=shape.leaves + shape.middles, bytes_total=files * 128),
                    complete=True,
                    host="local",
                    tags={"provider": "filesystem"},
                    extra={"requested_kind": "sync"},
                )
            )
    repo.close()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "first_point_s": round(first_s, 1),
        "trees_written": trees,
        "leaves": shape.leaves,
        "middles": shape.middles,
    }


def write_source(root: Path, files: int) -> Shape:
    """The first point's tree on disk (for restic)."""
    shape = Shape(files)
    for leaf in range(shape.leaves):
        d = root / shape.leaf_path(leaf)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(shape.files_in(leaf)):
            (d / f"f{i:03d}").write_bytes(content(leaf, i, 0))
    return shape


def policy_text(tool: bb.Protectctl, hours: int) -> str:
    text = bb.POLICY_TEMPLATE.format(
        root=tool.base / "root", passphrase=tool.base / "passphrase", repo=tool.repo, source=tool.source
    )
    return text.replace("retention: {disk: 14d}", f"retention: {{disk: {hours}h}}")


def measure(label: str, argv: list[str], env: dict[str, str], results: dict[str, Any]) -> bb.Measure:
    m = bb.run_measured(argv, env)
    cpu = m.user_s + m.sys_s
    log(f"  {label}: {m.seconds:.2f} s wall, {cpu:.2f} s CPU, {m.max_rss_kib / 1024:.0f} MiB, rc={m.rc}")
    if not m.ok:
        log(f"    stderr: {m.stderr[-1500:]}")
    results[label] = m.public() | {"cpu_s": round(cpu, 2), "max_rss_mib": round(m.max_rss_kib / 1024, 1)}
    return m


def run_protectctl(work: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    source = work / "source"
    source.mkdir()
    tool = bb.Protectctl(work, source)
    hours = max(1, args.points // 2)
    (tool.policy / "protect.yaml").write_text(policy_text(tool, hours))
    env = tool.env
    m = bb.run_measured(tool.cli("apply", "--auto-approve"), env)
    if not m.ok:
        raise SystemExit(f"apply failed: {m.stderr[-2000:]}")
    log(f"building {args.points} points of {args.files:,} files through the engine")
    newest = datetime.now(UTC) - timedelta(minutes=61)
    results["build"] = build_repository(tool.repo, bb.PASSPHRASE, args.files, args.points, newest)
    log(f"  built in {results['build']['seconds']} s: {results['build']}")
    results["repository_bytes"] = bb.tree_size(tool.repo)[0]
    if args.build_only:
        log(f"built only: protectctl -C {tool.policy} ...")
        return
    measure("points list", tool.cli("points", "list", "bench"), env, results)
    measure("points list --json", tool.cli("--json", "points", "list", "bench"), env, results)
    measure("check", tool.cli("check", "bench-store"), env, results)
    m = measure("prune", tool.cli("--json", "prune", "bench"), env, results)
    doc = bb.last_json(m.stdout)
    if isinstance(doc, dict) and doc.get("results"):
        r = doc["results"][0]
        results["prune"]["extra"] = {
            "forgotten": len(r.get("forgotten", [])),
            "kept": len(r.get("kept", [])),
            **{k: r.get(k) for k in ("packs_deleted", "bytes_deleted")},
        }
        log(f"    {results['prune']['extra']}")
    measure("check after prune", tool.cli("check", "bench-store"), env, results)
    measure("points list after prune", tool.cli("points", "list", "bench"), env, results)


def run_restic(work: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    if not shutil.which("restic"):
        log("restic not found: skipped (apt-get install restic)")
        return
    source = work / "restic-source"
    log(f"restic: writing {args.files:,} files to disk")
    shape = write_source(source, args.files)
    repo = work / "restic-repo"
    env = bb.base_env() | {"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": bb.PASSPHRASE}
    env["RESTIC_CACHE_DIR"] = str(work / "restic-cache")
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    measure("restic backup (first)", ["restic", "backup", "--quiet", str(source)], env, results)
    for n in range(1, args.restic_points):
        leaf = (n * 7919) % shape.leaves
        file = n % shape.files_in(leaf)
        shape.versions[(leaf, file)] = shape.versions.get((leaf, file), 0) + 1
        (source / shape.leaf_path(leaf) / f"f{file:03d}").write_bytes(content(leaf, file, shape.versions[(leaf, file)]))
        p = subprocess.run(["restic", "backup", "--quiet", str(source)], env=env, capture_output=True)
        if p.returncode:
            raise SystemExit(f"restic backup failed: {p.stderr[-2000:]!r}")
    log(f"  restic: {args.restic_points} snapshots")
    measure("restic snapshots", ["restic", "snapshots"], env, results)
    measure("restic snapshots --json", ["restic", "snapshots", "--json"], env, results)
    measure("restic check", ["restic", "check"], env, results)
    keep = max(1, args.restic_points // 2)
    measure("restic forget --prune", ["restic", "forget", "--keep-last", str(keep), "--prune"], env, results)


def render(results: dict[str, Any]) -> str:
    rows = ["| step | wall | CPU | peak RSS |", "|---|---|---|---|"]
    for key, m in results.items():
        if isinstance(m, dict) and "seconds" in m and "cpu_s" in m:
            rows.append(f"| {key} | {m['seconds']:.2f} s | {m['cpu_s']:.2f} s | {m['max_rss_mib']:.0f} MiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--restic", action="store_true", help="also restic on the same shape (real backups)")
    parser.add_argument("--restic-points", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--build-only", action="store_true", help="build the repository, measure nothing (implies --keep)"
    )
    args = parser.parse_args(argv)
    args.keep = args.keep or args.build_only
    if args.files < 1 or args.points < 2:
        parser.error("--files must be >= 1 and --points >= 2")
    bb.precompile_protectctl()
    work = Path(tempfile.mkdtemp(prefix="bench-points-", dir=args.workdir))
    results: dict[str, Any] = {
        "files": args.files,
        "points": args.points,
        "started": datetime.now(UTC).isoformat(),
        "load_at_start": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    try:
        run_protectctl(work, args, results)
        if args.restic:
            run_restic(work, args, results)
    finally:
        results["load_at_end"] = os.getloadavg()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"points-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    print(f"load {results['load_at_start']} -> {results['load_at_end']}; results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
