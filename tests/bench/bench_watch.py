"""Change journal benchmark: a tree of many small files on a loop-mounted XFS, the watcher
running (`protectctl agent watch`, started as its service runs it), protectctl's sync (through
its real CLI, as the timers run it) side by side with restic on the same tree.

    first backup        every file read once
    no change           nothing touched
    no change, again    nothing touched (the steady state: a sync after a first backup walks what
                        the first backup left without subtotals, docs/change-tracking.md)
    10 changed          ten files appended to, in ten directories
    10 changed, no watcher   the same without the watcher: protectctl walks every file

Then the watcher's overhead: small files (16 KiB) written at three rates, each twice (watcher
stopped, watcher running); extra CPU = (writer + watcher CPU with it) / (writer CPU without) - 1.

    python tests/bench/bench_watch.py --files 1000000            # the issue's size
    python tests/bench/bench_watch.py --files 20000 --overhead 32MiB --output r.json   # smoke

Needs root (loop mount, fanotify), mkfs.xfs and restic. Note the load (`uptime`): it is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench.bench_backup import Protectctl, Restic  # noqa: E402
from tests.bench.bench_tracking import mount_loop, unmount  # noqa: E402
from tests.bench.dataset import parse_size  # noqa: E402

PER_DIR = 1000
SMALL = 16 << 10
RATES_MIB = (4, 16, 0)  # MiB/s of small files; 0: as fast as the writer goes


class WatchedProtectctl(Protectctl):
    """protectctl with `changeJournal: watch` on the member, and its watcher service."""

    def __init__(self, workdir: Path, source: Path) -> None:
        super().__init__(workdir, source)
        text = (self.policy / "protect.yaml").read_text()
        old = f"filesystem: {{path: {source}}}"
        assert old in text
        (self.policy / "protect.yaml").write_text(
            text.replace(old, f"filesystem: {{path: {source}, changeJournal: watch}}")
        )
        self.watcher: subprocess.Popen[bytes] | None = None

    def start_watcher(self) -> None:
        self.watcher = subprocess.Popen(
            self.job_cli("agent", "watch", "bench", "--member", "data"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**self.env, "INVOCATION_ID": "bench"},  # as systemd runs it: no supervisor process
        )
        deadline = time.monotonic() + 120
        while not any((self.base / "root").rglob("watch/*/log")):
            if self.watcher.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the watcher did not start")
            time.sleep(0.05)
        time.sleep(0.5)  # its log is published once its marks are in place; let it settle

    def stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.send_signal(signal.SIGTERM)
            self.watcher.wait(60)
            self.watcher = None
            for log in (self.base / "root").rglob("watch/*/log"):
                log.unlink()

    def watcher_cpu(self) -> float:
        """User + system CPU seconds the watcher used so far."""
        assert self.watcher is not None
        fields = Path(f"/proc/{self.watcher.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def last_point_extra(self) -> dict[str, object]:
        p = subprocess.run(
            self.job_cli("--json", "points", "list", "bench/data"), capture_output=True, text=True, env=self.env
        )
        try:
            points = json.loads(p.stdout)["points"]
        except (ValueError, KeyError):
            return {}
        return dict(points[-1]["extra"]) if points else {}


def make_tree(source: Path, files: int, seed: int) -> list[Path]:
    """`files` small files, PER_DIR to a directory, two levels deep; returns the directories."""
    rng = random.Random(seed)
    dirs = []
    for n in range(0, files, PER_DIR):
        d = source / f"a{n // (PER_DIR * 100):03d}" / f"b{n // PER_DIR:05d}"
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(d)
        payload = rng.randbytes(256)
        for i in range(min(PER_DIR, files - n)):
            fd = os.open(d / f"f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, payload[: 64 + (i % 192)] + str(n + i).encode())
            os.close(fd)
    return dirs


def change_ten(dirs: list[Path], seed: int) -> None:
    rng = random.Random(seed)
    for d in rng.sample(dirs, min(10, len(dirs))):
        with open(d / "f0000", "ab") as handle:
            handle.write(rng.randbytes(100))


WRITER = """
import os, sys, time
target, total, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs(target, exist_ok=True)
data = os.urandom(16 << 10)
start = time.monotonic()
for n in range(total // len(data)):
    d = os.path.join(target, f"d{n // 500}")
    if n % 500 == 0:
        os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, f"f{n}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
    if rate:
        ahead = (n + 1) * len(data) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
"""


def write_small_files(target: Path, total: int, rate_bps: float) -> tuple[float, float]:
    """(writer CPU seconds, wall seconds) of writing `total` bytes of 16 KiB files."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(total), str(rate_bps)])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the small-file writer failed")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started


def overhead(tool: WatchedProtectctl, source: Path, total: int) -> list[dict[str, object]]:
    rows = []
    for rate in RATES_MIB:
        row: dict[str, object] = {"rate_mib_s": rate or "max"}
        for watched in (False, True):
            target = source / f"small-{rate}-{int(watched)}"
            if watched:
                tool.start_watcher()
                before = tool.watcher_cpu()
            cpu, wall = write_small_files(target, total, rate * (1 << 20))
            if watched:
                time.sleep(1.5)  # the watcher drains what is queued
                row["watcher_cpu_s"] = round(tool.watcher_cpu() - before, 3)
                row["writer_cpu_watched_s"] = round(cpu, 3)
                row["wall_watched_s"] = round(wall, 2)
                tool.stop_watcher()
            else:
                row["writer_cpu_s"] = round(cpu, 3)
                row["wall_s"] = round(wall, 2)
            shutil.rmtree(target)
        base = float(row["writer_cpu_s"])  # type: ignore[arg-type]
        extra = float(row["writer_cpu_watched_s"]) + float(row["watcher_cpu_s"])  # type: ignore[arg-type]
        row["extra_cpu"] = round(extra / base - 1, 4) if base else None
        row["watcher_share"] = round(float(row["watcher_cpu_s"]) / base, 4) if base else None  # type: ignore[arg-type]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--overhead", default="64MiB", help="bytes of small files written per rate (0: skip)")
    parser.add_argument("--tools", nargs="+", default=["protectctl", "restic"])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: a loop mount and fanotify")
    work = Path(tempfile.mkdtemp(prefix="bench-watch-", dir=args.workdir))
    overhead_bytes = parse_size(args.overhead)
    size = max(512 << 20, args.files * 6144 + 3 * overhead_bytes * 2 + (512 << 20))
    mount = mount_loop("xfs", work, size)
    result: dict[str, object] = {"files": args.files, "load_before": os.getloadavg()}
    tools: dict[str, object] = {}
    try:
        source = mount / "data"
        source.mkdir()
        t = time.perf_counter()
        dirs = make_tree(source, args.files, seed=13)
        result["make_tree_s"] = round(time.perf_counter() - t, 1)
        pc = WatchedProtectctl(work / "protectctl", source)
        tools["protectctl"] = pc
        if "restic" in args.tools:
            tools["restic"] = Restic(work / "restic", source)
        for name, tool in tools.items():
            m = tool.init()  # type: ignore[attr-defined]
            if not m.ok:
                raise SystemExit(f"{name} init failed: {m.stderr[-2000:]}")
        pc.start_watcher()
        phases: dict[str, dict[str, object]] = {}
        for phase in ("first backup", "no change", "no change, again", "10 changed", "10 changed, no watcher"):
            if phase == "10 changed":
                change_ten(dirs, seed=7)
            if phase == "10 changed, no watcher":
                pc.stop_watcher()
                change_ten(dirs, seed=8)
            row: dict[str, object] = {"load": round(os.getloadavg()[0], 1)}
            for name, tool in tools.items():
                m = tool.backup()  # type: ignore[attr-defined]
                if not m.ok:
                    raise SystemExit(f"{name} {phase} failed: {m.stderr[-2000:]}")
                row[f"{name}_s"] = round(m.seconds, 3)
                if name == "protectctl":
                    extra = pc.last_point_extra()
                    row["walk"] = f"{extra.get('walk')} ({extra.get('walk_note')})"
                    row["walk_dirs"] = extra.get("walk_dirs")
                    row["duration_s"] = (m.extra or {}).get("duration_s")
            phases[phase] = row
            print(phase, row, flush=True)
        result["phases"] = phases
        if overhead_bytes:
            result["overhead"] = overhead(pc, source, overhead_bytes)
            print("overhead", result["overhead"], flush=True)
    finally:
        pc_tool = tools.get("protectctl")
        if isinstance(pc_tool, WatchedProtectctl):
            pc_tool.stop_watcher()
        unmount(mount)
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    print(table(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


def table(result: dict[str, object]) -> str:
    lines = [
        f"{result['files']:,} files (load {result['load_before']})",  # type: ignore[str-format]
        "| measure | protectctl | (in-process) | restic | ratio | walk |",
        "|---|---|---|---|---|---|",
    ]
    phases = result.get("phases") or {}
    assert isinstance(phases, dict)
    for phase, row in phases.items():
        p, r = row.get("protectctl_s"), row.get("restic_s")
        ratio = f"{p / r:.3f}x" if isinstance(p, float) and isinstance(r, float) and r else "-"
        lines.append(f"| {phase} | {p} s | {row.get('duration_s')} s | {r} s | {ratio} | {row.get('walk')} |")
    rows = result.get("overhead") or []
    if rows:
        lines += [
            "",
            "| small files MiB/s | writer CPU | writer CPU, watched | watcher CPU | watcher / writer | "
            "watcher, % of a core | extra CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:  # type: ignore[union-attr]
            extra, share = row.get("extra_cpu"), row.get("watcher_share")
            core = float(row["watcher_cpu_s"]) / float(row["wall_watched_s"]) if row.get("wall_watched_s") else 0.0
            lines.append(
                f"| {row['rate_mib_s']} | {row['writer_cpu_s']} s | {row['writer_cpu_watched_s']} s "
                f"| {row['watcher_cpu_s']} s | {share * 100:.1f} % | {core * 100:.1f} % | {extra * 100:.1f} % |"
                if isinstance(extra, float) and isinstance(share, float)
                else f"| {row['rate_mib_s']} | - | - | - | - | - | - |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
