"""Benchmark: validate + plan of a generated policy, and CLI start-up.

    python tests/bench/bench_plan.py [--groups 1000] [--members 3] [--files 10] [--runs 5]

Generates a policy of GROUPS protection groups with MEMBERS members each (spread over FILES
files) in a temporary directory, then reports the median of RUNS runs of:

- validate and plan in-process (`protectctl.api`, modules already imported), plan both
  against an empty state (everything to create) and against a state that matches the
  policy (no changes: what CI runs on every pull request);
- the same as CLI subprocesses (`protectctl -C DIR validate|plan`), start-up included;
- `protectctl --version` beside `python -c pass` (the interpreter's own start-up);
- a reference measured in the same run: ruamel.yaml (C loader) only reading the same files,
  which validate must beat while doing everything else too (the ratio is printed).

Targets (issue 2): validate + plan well under 2 s for 1,000 groups x 3 members;
`--version` under 0.2 s. `--check` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

PLAN_TARGET_S = 2.0
VERSION_TARGET_S = 0.2

COMMON = """apiVersion: protectctl/v1
kind: Host
metadata: {name: local}
spec: {address: local, scheduler: systemd, root: ./.protectctl/root}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {name: repo-key}
spec:
  passphrase: {file: ./.protectctl/passphrase}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {name: primary}
spec: {type: local, path: ./.protectctl/repo, encryption: {key: repo-key}}
---
apiVersion: protectctl/v1
kind: SLA
metadata: {name: tier1}
spec:
  sync: every 15m
  full: daily at 20:00
  retention: {disk: 14d}
"""

GROUP = """---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: {name}}}
spec:
  sla: {sla}
  storage: primary
  sizeHint: {size}GB
  changeRate: 5%/day
  members:
{members}"""

MEMBER = "    - {{name: {name}, host: local, filesystem: {{path: ./data/{group}/{name}, exclude: ['*.tmp']}}}}\n"


def generate_policy(directory: Path, groups: int, members: int = 3, files: int = 10) -> Path:
    """Write a valid policy of `groups` groups x `members` members into `files` files; return its dir."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "common.yaml").write_text(COMMON, encoding="utf-8")
    files = max(1, min(files, groups))
    chunks: list[list[str]] = [[] for _ in range(files)]
    for i in range(groups):
        group = f"g{i:05d}"
        body = "".join(MEMBER.format(name=f"m{j}", group=group) for j in range(members))
        chunks[i % files].append(
            GROUP.format(name=group, sla=("tier1", "gold", "silver")[i % 3], size=10 + i % 90, members=body)
        )
    width = len(str(files))
    for n, docs in enumerate(chunks):
        (directory / "groups" / f"groups-{n:0{width}d}.yaml").parent.mkdir(exist_ok=True)
        (directory / "groups" / f"groups-{n:0{width}d}.yaml").write_text("".join(docs), encoding="utf-8")
    return directory


Timing = tuple[float, float]  # (wall, cpu) seconds


def _cpu_s() -> float:
    """CPU time of this process and of its finished children: robust on a busy machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def median_s(fn: Callable[[], object], runs: int) -> Timing:
    """Median wall-clock and median CPU seconds of `runs` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), _cpu_s()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_s() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def total(*timings: Timing) -> Timing:
    return sum(t[0] for t in timings), sum(t[1] for t in timings)


def protectctl_argv() -> list[str]:
    script = shutil.which("protectctl", path=str(Path(sys.executable).parent)) or shutil.which("protectctl")
    return [script] if script else [sys.executable, "-m", "protectctl"]


def run(argv: Sequence[str], ok: Sequence[int] = (0,)) -> None:
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")


def write_matching_state(directory: Path) -> int:
    """The state an apply of the whole policy would leave, written without running the effects."""
    from protectctl import api
    from protectctl.plan.resources import inputs_hash
    from protectctl.state.model import ResourceState, State

    now = datetime.now(UTC)
    policy = api.load(directory)
    state = State()
    for res in api.resources(policy):
        state.resources[str(res.address)] = ResourceState(
            kind=res.address.kind,
            inputs=dict(res.inputs),
            inputs_hash=inputs_hash(res.inputs),
            depends_on=[str(d) for d in res.depends_on],
            host=res.host,
            holds_data=res.holds_data,
            updated_at=now,
        )
    state.serial = len(state.resources)
    api.state_backend(directory, policy).write(state)
    return len(state.resources)


Row = tuple[str, Timing, float | None]  # name, (wall, cpu), target seconds


def ruamel_read(directory: Path) -> int:
    """What the established YAML reader alone takes to read the policy files (C safe loader)."""
    from ruamel.yaml import YAML

    return sum(
        len(list(YAML(typ="safe").load_all(f.read_text(encoding="utf-8")))) for f in sorted(directory.rglob("*.yaml"))
    )


def bench(groups: int, members: int, files: int, runs: int) -> list[Row]:
    from protectctl import api

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="protectctl-bench-") as tmp:
        directory = generate_policy(Path(tmp) / "policy", groups, members, files)
        cli = [*protectctl_argv(), "-C", str(directory)]
        api.plan(directory)  # warm: imports and the shipped tiers' first read

        validate = median_s(lambda: api.validate(directory), runs)
        plan_new = median_s(lambda: api.plan(directory), runs)
        rows += [
            ("reference: ruamel.yaml reads the files", median_s(lambda: ruamel_read(directory), runs), None),
            ("validate (in-process)", validate, None),
            ("plan, all new (in-process)", plan_new, None),
            ("validate + plan (in-process)", total(validate, plan_new), PLAN_TARGET_S),
        ]
        cli_validate = median_s(lambda: run([*cli, "validate"]), runs)
        cli_plan_new = median_s(lambda: run([*cli, "plan"]), runs)
        rows += [
            ("protectctl validate", cli_validate, None),
            ("protectctl plan, all new", cli_plan_new, None),
            ("protectctl validate + plan", total(cli_validate, cli_plan_new), PLAN_TARGET_S),
        ]

        write_matching_state(directory)
        plan_same = median_s(lambda: api.plan(directory), runs)
        cli_plan_same = median_s(lambda: run([*cli, "plan", "--detailed-exitcode"]), runs)
        rows += [
            ("plan, no changes (in-process)", plan_same, None),
            ("protectctl plan, no changes", cli_plan_same, None),
        ]

    version_runs = max(runs, 7)
    rows.append(("python -c pass", median_s(lambda: run([sys.executable, "-c", "pass"]), version_runs), None))
    rows.append(
        (
            "protectctl --version",
            median_s(lambda: run([*protectctl_argv(), "--version"]), version_runs),
            VERSION_TARGET_S,
        )
    )
    return rows


def print_table(title: str, rows: Sequence[Row]) -> bool:
    """The table; a target is met when the wall-clock median is under it."""
    width = max(len(name) for name, _, _ in rows)
    print(title)
    print(f"{'measure':<{width}}  {'wall':>9}  {'cpu':>9}  {'target':>8}  ok")
    all_ok = True
    for name, (wall, cpu), target in rows:
        ok = target is None or wall < target
        all_ok &= ok
        target_text = f"< {target:.1f} s" if target is not None else ""
        mark = "" if target is None else ("yes" if ok else "NO")
        print(f"{name:<{width}}  {wall:>7.3f} s  {cpu:>7.3f} s  {target_text:>8}  {mark}")
    by_name = {name: timing for name, timing, _ in rows}
    reference = by_name.get("reference: ruamel.yaml reads the files")
    if reference is not None and "validate (in-process)" in by_name:
        wall, cpu = by_name["validate (in-process)"]
        print(f"validate / ruamel.yaml read: {wall / reference[0]:.2f} (wall), {cpu / reference[1]:.2f} (cpu)")
    return all_ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    rows = bench(args.groups, args.members, args.files, args.runs)
    from protectctl import __version__

    ok = print_table(
        f"protectctl {__version__}: {args.groups} groups x {args.members} members in "
        f"{min(args.files, args.groups)} file(s); median of {args.runs} runs; "
        f"Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPU(s)",
        rows,
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
