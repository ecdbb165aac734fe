"""Block-level change tracking benchmark: one big disk image on loop-mounted XFS and btrfs,
protectctl (through its real CLI, as the timers run it) side by side with restic.

Per filesystem, on the same file:

    first backup       the image written once, random data
    no change          nothing touched
    1% rewritten       1 % of its 4 KiB blocks rewritten in place at scattered offsets

and for each: wall time of both tools, protectctl's bytes read against the bytes changed, and
what the point says of its capture (snapshot kind, blocks read and reused). On btrfs it also
times a read-only snapshot create + delete (what a sync adds), averaged over 10.

    python tests/bench/bench_tracking.py                      # 1 GiB, xfs and btrfs
    python tests/bench/bench_tracking.py --size 4GiB --fs xfs
    python tests/bench/bench_tracking.py --size 16MiB --tools protectctl --output r.json   # smoke

Needs root (loop mounts), mkfs.xfs, mkfs.btrfs and restic (apt-get install xfsprogs
btrfs-progs restic). The page cache is not dropped: both tools read what it holds alike.
Note the machine's load (`uptime`) beside the numbers: the result records it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench.bench_backup import POLICY_TEMPLATE, Protectctl, Restic  # noqa: E402
from tests.bench.dataset import parse_size  # noqa: E402

PAGE = 4096
PHASES = ("first backup", "no change", "1% rewritten")


class TrackedProtectctl(Protectctl):
    """protectctl with the member's tracking fields set (the benchmark's policy, one line more)."""

    def __init__(self, workdir: Path, source: Path, *, block_size: str, min_size: str) -> None:
        super().__init__(workdir, source)
        text = (self.policy / "protect.yaml").read_text()
        old = f"filesystem: {{path: {source}}}"
        assert old in text
        new = (
            f"filesystem: {{path: {source}, changeTrackingMinSize: {min_size}, changeTrackingBlockSize: {block_size}}}"
        )
        (self.policy / "protect.yaml").write_text(text.replace(old, new))
        assert POLICY_TEMPLATE  # the template this edits

    def last_point_extra(self) -> dict[str, object]:
        p = subprocess.run(
            self.job_cli("--json", "points", "list", "bench/data"),
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        try:
            points = json.loads(p.stdout)["points"]
        except (ValueError, KeyError):
            return {}
        return dict(points[-1]["extra"]) if points else {}


def mount_loop(kind: str, base: Path, size: int) -> Path:
    image, point = base / f"{kind}.img", base / kind
    with open(image, "wb") as handle:
        handle.truncate(size)
    point.mkdir()
    mkfs = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[kind]
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True, capture_output=True)
    return point


def unmount(point: Path) -> None:
    if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    step = 16 << 20
    with open(path, "wb") as handle:
        for offset in range(0, size, step):
            handle.write(rng.randbytes(min(step, size - offset)))
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_scattered(path: Path, fraction: float, seed: int) -> int:
    """Rewrite `fraction` of the file's 4 KiB pages at random offsets; returns the bytes changed."""
    rng = random.Random(seed)
    pages = path.stat().st_size // PAGE
    chosen = rng.sample(range(pages), max(1, int(pages * fraction)))
    fd = os.open(path, os.O_WRONLY)
    try:
        for page in chosen:
            os.pwrite(fd, rng.randbytes(PAGE), page * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(chosen) * PAGE


def snapshot_cycle(mount: Path, rounds: int = 10) -> float:
    from protectctl.agent.snapshots import btrfs_delete, btrfs_snapshot

    started = time.perf_counter()
    for i in range(rounds):
        target = mount / f".bench-snapshot-{i}"
        btrfs_snapshot(mount, target)
        btrfs_delete(target)
    return (time.perf_counter() - started) / rounds


def bench_fs(kind: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    mount = mount_loop(kind, work, max(320 << 20, int(args.size * 1.5) + (256 << 20)))
    out: dict[str, object] = {"filesystem": kind, "phases": {}}
    try:
        source = mount / "data"
        source.mkdir()
        image = source / "disk.img"
        write_random(image, args.size, seed=13)
        tools: dict[str, object] = {}
        for name in args.tools:
            base = work / f"{kind}-{name}"
            base.mkdir()
            tool = (
                TrackedProtectctl(base, source, block_size=args.block_size, min_size=args.min_size)
                if name == "protectctl"
                else Restic(base, source)
            )
            init = tool.init()
            if not init.ok:
                raise SystemExit(f"{name} init failed: {init.stderr[-2000:]}")
            tools[name] = tool
        phases: dict[str, dict[str, object]] = {}
        for phase in PHASES:
            changed = 0
            if phase == "1% rewritten":
                changed = rewrite_scattered(image, args.rewrite, seed=7)
            row: dict[str, object] = {"bytes_changed": changed}
            for name, tool in tools.items():
                m = tool.backup()  # type: ignore[attr-defined]
                if not m.ok:
                    raise SystemExit(f"{name} {phase} failed: {m.stderr[-2000:]}")
                row[f"{name}_s"] = round(m.seconds, 3)
                if m.user_s is not None and m.sys_s is not None:  # CPU: steadier than wall time under load
                    row[f"{name}_cpu_s"] = round(m.user_s + m.sys_s, 3)
                if name == "protectctl":
                    row["bytes_read"] = (m.extra or {}).get("bytes_read")
                    extra = tool.last_point_extra()  # type: ignore[attr-defined]
                    row["point"] = {
                        k: extra.get(k)
                        for k in (
                            "snapshot",
                            "tracking",
                            "tracked_files",
                            "tracked_whole",
                            "blocks_read",
                            "blocks_reused",
                            "bytes_changed",
                            "tracking_seconds",
                            "snapshot_create_s",
                            "snapshot_delete_s",
                        )
                    }
            phases[phase] = row
        out["phases"] = phases
        if kind == "btrfs":
            out["snapshot_create_delete_s"] = round(snapshot_cycle(mount), 4)
    finally:
        unmount(mount)
    return out


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| fs | measure | protectctl | restic | ratio | bytes read / changed | CPU protectctl / restic |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        phases = res["phases"]
        assert isinstance(phases, dict)
        for phase, row in phases.items():
            p, r = row.get("protectctl_s"), row.get("restic_s")
            ratio = f"{p / r:.2f}x" if isinstance(p, float) and isinstance(r, float) and r else "-"
            read, changed = row.get("bytes_read"), row.get("bytes_changed")
            amp = (
                f"{read / changed:.1f}x ({read:,} / {changed:,})"
                if isinstance(read, int) and changed
                else (f"{read:,} read" if isinstance(read, int) else "-")
            )
            restic = f"{r} s" if r is not None else "-"
            pc, rc = row.get("protectctl_cpu_s"), row.get("restic_cpu_s")
            cpu = f"{pc} / {rc} s" if pc is not None else "-"
            lines.append(f"| {res['filesystem']} | {phase} | {p} s | {restic} | {ratio} | {amp} | {cpu} |")
        if "snapshot_create_delete_s" in res:
            lines.append(f"| btrfs | snapshot create + delete | {res['snapshot_create_delete_s']} s | - | - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="image size (default 1GiB)")
    parser.add_argument("--fs", default="xfs,btrfs", help="comma-separated: xfs,btrfs")
    parser.add_argument("--tools", default="protectctl,restic", help="comma-separated: protectctl,restic")
    parser.add_argument("--rewrite", type=float, default=0.01, help="fraction of 4 KiB pages rewritten")
    parser.add_argument("--block-size", default="16KiB", help="changeTrackingBlockSize")
    parser.add_argument("--min-size", default="1MiB", help="changeTrackingMinSize")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    if os.geteuid() != 0:
        print("bench_tracking needs root for loop mounts", file=sys.stderr)
        return 2
    missing = [
        exe
        for exe in ("mkfs.xfs", "mkfs.btrfs", *(["restic"] if "restic" in args.tools else []))
        if shutil.which(exe) is None
    ]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install xfsprogs btrfs-progs restic)", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = [
        bench_fs(kind, args, work / kind) if (work / kind).mkdir() is None else {}
        for kind in args.fs.split(",")
        if kind
    ]
    doc = {
        "size": args.size,
        "block_size": args.block_size,
        "rewrite": args.rewrite,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    print(table(results))
    print(f"load average before {doc['load_before']}, after {doc['load_after']}")
    if args.output:
        args.output.write_text(json.dumps(doc, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
