#!/usr/bin/env python3
"""Many-small-files benchmark: protectctl against restic (and borg) on N files of 1-3 KiB.

A file server is millions of small files; there the cost per file, not the throughput,
decides. One run builds N files of 1-3 KiB (text-like, so zstd has work to do) in N/100
directories, gives every tool a fresh encrypted repository and measures, side by side:

    first backup       everything new
    no-change sync     the same again
    sync after 0.1 %   0.1 % of the files appended to (a line each)
    full restore       into an empty directory, then verified (size + sha256 of every file)

with wall time, CPU time (user+sys) and peak RSS of every command (tests/bench/bench_backup.py
measures the same way and provides the tools). On a loaded machine compare CPU seconds.

    python tests/bench/bench_smallfiles.py                       # 200,000 files, protectctl + restic
    python tests/bench/bench_smallfiles.py --files 2000          # smoke size (seconds)
    python tests/bench/bench_smallfiles.py --files 1000000 --tools protectctl,restic,borg

Results go to tests/bench/results/smallfiles-<timestamp>.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench import bench_backup as bb  # noqa: E402
from tests.bench import dataset  # noqa: E402

PHASES = [
    ("first", "first backup"),
    ("nochange", "no-change sync"),
    ("change", "sync after 0.1 % appended"),
    ("restore", "full restore"),
]


SETTINGS = "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {{name: bench}}\nspec:\n  parallelism: {parallelism}\n"


def build(root: Path, files: int, seed: int) -> dict[str, int]:
    """`files` files of 1-3 KiB in files/100 directories (at least one); deterministic."""
    rnd = random.Random(f"protectctl-smallfiles:{seed}")
    dirs = max(1, files // 100)
    pool = dataset._line_pool(seed)
    total = 0
    for d in range(dirs):
        (root / f"d{d:05d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        size = rnd.randint(1024, 3072)
        lines = b"".join(pool[rnd.randrange(len(pool))] for _ in range(size // 60 + 2))
        path = root / f"d{i % dirs:05d}" / f"f{i:07d}.txt"
        with open(path, "wb") as f:
            f.write(lines[:size])
        total += size
    return {"files": files, "dirs": dirs, "bytes": total}


def append(root: Path, fraction: float, seed: int) -> int:
    """Append a line to `fraction` of the files (at least one); returns how many."""
    paths = sorted(str(p) for p in root.rglob("*.txt"))
    rnd = random.Random(f"protectctl-smallfiles:{seed}:append")
    chosen = rnd.sample(paths, max(1, int(len(paths) * fraction)))
    for p in chosen:
        with open(p, "ab") as f:
            f.write(b"appended %d\n" % rnd.randrange(1 << 30))
    return len(chosen)


def cpu(m: dict[str, Any] | None) -> float | None:
    if not m or not m["ok"] or m.get("user_s") is None:
        return None
    return float(m["user_s"] or 0) + float(m["sys_s"] or 0)


def render(results: dict[str, Any]) -> str:
    cols = list(results["tools"])
    header = ["step", *cols]
    if "protectctl" in cols and "restic" in cols:
        header += ["protectctl/restic (wall)", "(CPU)"]
    rows = []
    for key, label in PHASES:
        per = {t: results["phases"].get(key, {}).get(t) for t in cols}
        row = [label]
        for t in cols:
            m = per[t]
            if not m:
                row.append("-")
            elif not m["ok"]:
                row.append("FAILED")
            else:
                row.append(f"{m['seconds']:.1f} s ({cpu(m) or 0:.1f} s CPU, {m['max_rss_kib'] / 1024:.0f} MiB)")
        if len(header) > len(cols) + 1:
            p, r = per["protectctl"], per["restic"]
            row.append(bb.fmt_ratio(bb.secs(p), bb.secs(r)))
            row.append(bb.fmt_ratio(cpu(p), cpu(r)))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="many small files: protectctl vs restic (vs borg)")
    ap.add_argument("--files", type=int, default=200_000, help="number of files (default 200000)")
    ap.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED)
    ap.add_argument("--tools", default="protectctl,restic", help="comma-separated subset of protectctl,restic,borg")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the work directory (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument(
        "--parallelism", type=int, default=None, help="protectctl's Settings `parallelism` (default: not set)"
    )
    args = ap.parse_args(argv)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in bb.TOOLS]
    if unknown:
        ap.error(f"unknown tool(s): {', '.join(unknown)}")
    tools_wanted = [t for t in wanted if t == "protectctl" or bb.TOOLS[t].find() is not None]
    parent = args.workdir or Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="protectctl-smallfiles-", dir=parent))
    source = workdir / "data"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or bb.RESULTS_DIR / f"smallfiles-{stamp}.json"
    results: dict[str, Any] = {
        "format": "protectctl-bench-smallfiles/1",
        "started": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "settings": {"files": args.files, "seed": args.seed, "tools": tools_wanted, "parallelism": args.parallelism},
        "tools": {},
        "dataset": {},
        "phases": {},
        "verify": {},
    }
    code = 0
    try:
        t0 = time.perf_counter()
        results["dataset"] = build(source, args.files, args.seed)
        bb.log(f"dataset: {args.files} files in {results['dataset']['dirs']} dirs, {time.perf_counter() - t0:.1f} s")
        bb.warm(source)
        tools = {name: bb.TOOLS[name](workdir, source) for name in tools_wanted}
        if "protectctl" in tools and args.parallelism is not None:
            policy = tools["protectctl"].base / "policy" / "protect.yaml"
            with open(policy, "a", encoding="utf-8") as out:
                out.write(f"---\n{SETTINGS.format(parallelism=args.parallelism)}")
        if "protectctl" in tools:
            bb.precompile_protectctl()
        for name, tool in tools.items():
            results["tools"][name] = {"version": tool.version()}
            init = tool.init()
            if not init.ok:
                raise SystemExit(f"{name} init failed: {init.stderr[-600:]}")
        expected: dict[str, tuple[int, str]] = {}

        def phase(key: str, fn: Callable[[bb.Tool], Any]) -> None:
            results["phases"][key] = {}
            for name, tool in tools.items():
                m = fn(tool)
                restored = None
                if isinstance(m, tuple):
                    m, restored = m
                results["phases"][key][name] = m.public()
                c = (m.user_s or 0) + (m.sys_s or 0)
                state = f"{m.seconds:.1f} s, {c:.1f} s CPU, {(m.max_rss_kib or 0) / 1024:.0f} MiB"
                bb.log(f"{key:9s} {name:10s} {state if m.ok else 'FAILED ' + m.stderr[-600:]}")
                if restored is not None and m.ok:
                    results["verify"][name] = bb.verify(expected, restored)
                    bb.log(f"{'':9s} {name:10s} restore verified: {results['verify'][name]['ok']}")

        phase("first", lambda t: t.backup())
        phase("nochange", lambda t: t.backup())
        results["dataset"]["appended"] = append(source, 0.001, args.seed)
        phase("change", lambda t: t.backup())
        expected = dataset.manifest(source)
        dests = {name: workdir / "restore" / name for name in tools}
        for d in dests.values():
            d.mkdir(parents=True)
        phase("restore", lambda t: t.restore(dests[t.name]))
    finally:
        results["machine"]["loadavg_end"] = os.getloadavg()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            bb.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results["phases"]:
        la = results["machine"]
        print(
            f"\n{args.files} files of 1-3 KiB in {results['dataset'].get('dirs')} dirs; {os.cpu_count()} CPUs; "
            f"load {la['loadavg_start'][0]:.1f} at start, {la['loadavg_end'][0]:.1f} at end"
        )
        print(render(results))
        print(f"\nresults: {output}")
    for name in tools_wanted:
        ok = all(results["phases"].get(k, {}).get(name, {}).get("ok") for k, _ in PHASES)
        if not ok or not results["verify"].get(name, {}).get("ok"):
            code = 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
