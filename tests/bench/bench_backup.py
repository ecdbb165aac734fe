#!/usr/bin/env python3
"""Backup benchmark: protectctl against restic and borg on the same deterministic dataset.

One run builds a dataset (tests/bench/dataset.py), gives every tool a fresh, encrypted
repository under a temporary work directory and measures, phase by phase:

    init             protectctl apply --auto-approve | restic init | borg init
    first backup     protectctl run sync | restic backup | borg create
    no-change sync   the same again, nothing changed
    sync after 1 %   after dataset.mutate(0.01)
    sync after 10 %  after dataset.mutate(0.10)
    full restore     into an empty directory, then verified (size + sha256 of every file)

plus the repository size (apparent bytes, like `du -sb`) and the peak RSS of every command
(`/usr/bin/time -f %M`, else the rusage of the waited child).

Within a phase the tools run back to back on the same tree. The page cache cannot be dropped
reliably (containers, other users), so every figure is warm-cache: the dataset is read once
before the first phase so that no tool pays for cold reads the others do not.

    python tests/bench/bench_backup.py                        # 1 GiB, all three tools
    python tests/bench/bench_backup.py --size 64MiB --tools protectctl,restic
    python tests/bench/bench_backup.py --workdir /var/tmp --keep

restic and borg come from Debian: `apt-get install restic borgbackup` (and `time` for
/usr/bin/time). Results go to tests/bench/results/backup-<timestamp>.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench import dataset  # noqa: E402

RESULTS_DIR = HERE / "results"
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PASSPHRASE = "protectctl-bench-passphrase-0123456789"
ALL_TOOLS = ("protectctl", "restic", "borg")
INSTALL_HINT = {
    "restic": "apt-get install restic",
    "borg": "apt-get install borgbackup",
}

PHASES = [
    ("init", "init (apply / init)"),
    ("first", "first backup"),
    ("nochange", "no-change sync"),
    ("change1", "sync after 1 % change"),
    ("change10", "sync after 10 % change"),
    ("restore", "full restore"),
]
STARTUP = ("startup", "process startup (version)")


# ---------------------------------------------------------------- measuring commands


@dataclass
class Measure:
    argv: list[str]
    seconds: float
    rc: int
    max_rss_kib: int | None = None
    user_s: float | None = None
    sys_s: float | None = None
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["stdout"] = self.stdout[-2000:] if not self.ok else ""
        d["stderr"] = self.stderr[-4000:] if not self.ok else self.stderr[-500:]
        return d


def run_measured(argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 3600) -> Measure:
    """Run argv, return wall time, exit code, peak RSS (KiB) and CPU times of that command."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out_path, err_path, time_path = (Path(tmp, n) for n in ("out", "err", "time"))
        full = [GNU_TIME, "-f", "%M %U %S", "-o", str(time_path), *argv] if GNU_TIME else argv
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
            try:
                # wait4 gives this child's own rusage (what /usr/bin/time reports) without racing
                # against other children of this process.
                deadline = start + timeout
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() > deadline:
                        proc.kill()
                        pid, status, usage = os.wait4(proc.pid, 0)
                        break
                    time.sleep(0.002)
            finally:
                elapsed = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
        m = Measure(
            argv=argv,
            seconds=elapsed,
            rc=proc.returncode,
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
        )
        m.max_rss_kib, m.user_s, m.sys_s = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
        if GNU_TIME and time_path.exists():
            lines = [ln for ln in time_path.read_text().splitlines() if ln.strip()]
            try:  # on failure GNU time writes "Command exited with non-zero status N" first
                rss, user, sys_ = lines[-1].split()
                m.max_rss_kib, m.user_s, m.sys_s = int(rss), float(user), float(sys_)
            except (IndexError, ValueError):
                pass
    return m


def tree_size(path: Path) -> tuple[int, int]:
    """(apparent bytes like `du -sb`, allocated bytes like `du -s`) of a directory."""
    apparent = allocated = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if name in filenames:
                apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("RESTIC_", "BORG_", "PROTECTCTL_")):
            del env[k]
    # Real installs have bytecode (pip and dpkg compile on install); a development shell that
    # sets PYTHONDONTWRITEBYTECODE would make every Python tool (protectctl, borg) recompile
    # its modules on each start. Unset it for all tools alike.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "LC_ALL": "C.UTF-8"})
    return env


def last_json(text: str) -> Any:
    """The last JSON document of a tool's stdout (a single pretty document or JSON lines)."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------- tools


class Tool:
    name = ""
    binary = ""

    def __init__(self, workdir: Path, source: Path) -> None:
        self.base = workdir / self.name
        self.base.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.env = base_env()
        self.count = 0

    @classmethod
    def find(cls) -> str | None:
        return shutil.which(cls.binary)

    def version(self) -> str:
        raise NotImplementedError

    def startup(self) -> Measure:
        raise NotImplementedError

    def init(self) -> Measure:
        raise NotImplementedError

    def backup(self) -> Measure:
        raise NotImplementedError

    def restore(self, target: Path) -> tuple[Measure, Path]:
        """Restore the newest backup into target; returns the measure and where the tree landed."""
        raise NotImplementedError

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    def local_state(self) -> list[Path]:
        """Client-side caches and state that are not part of the repository."""
        return []


class Protectctl(Tool):
    name = binary = "protectctl"

    def __init__(self, workdir: Path, source: Path) -> None:
        super().__init__(workdir, source)
        self.policy = self.base / "policy"
        self.policy.mkdir(exist_ok=True)
        self.exe = self.find() or ""
        self.argv0 = [self.exe] if self.exe else [sys.executable, "-m", "protectctl"]
        key = self.base / "passphrase"
        key.write_text(PASSPHRASE + "\n")
        key.chmod(0o600)
        (self.policy / "protect.yaml").write_text(
            POLICY_TEMPLATE.format(root=self.base / "root", passphrase=key, repo=self.repo, source=source)
        )

    @classmethod
    def find(cls) -> str | None:
        return shutil.which("protectctl", path=str(Path(sys.executable).parent)) or shutil.which("protectctl")

    # How `run sync` and `restore` are invoked: "agent" = with the agent config that apply
    # wrote, exactly as the systemd timers run them (the production path); "policy" = -C with
    # the policy directory, as a user types by hand (also loads and validates the policy).
    entry = "agent"

    def cli(self, *args: str) -> list[str]:
        return [*self.argv0, "-C", str(self.policy), *args]

    def job_cli(self, *args: str) -> list[str]:
        if self.entry == "policy":
            return self.cli(*args)
        agent_config = self.base / "root" / "etc" / "protectctl" / "agent.yaml"
        return [*self.argv0, "--agent-config", str(agent_config), *args]

    def version(self) -> str:
        p = subprocess.run([*self.argv0, "--version"], capture_output=True, text=True, env=self.env)
        return p.stdout.strip() or p.stderr.strip()

    def startup(self) -> Measure:
        return run_measured([*self.argv0, "--version"], self.env)

    def init(self) -> Measure:
        return run_measured(self.cli("apply", "--auto-approve"), self.env)

    def backup(self) -> Measure:
        m = run_measured(self.job_cli("--json", "run", "sync", "bench", "--member", "data"), self.env)
        doc = last_json(m.stdout)
        if isinstance(doc, dict) and doc.get("results"):
            r = doc["results"][0]
            m.extra = {
                k: r.get(k)
                for k in (
                    "kind",
                    "point_id",
                    "files",
                    "bytes_total",
                    "bytes_read",
                    "bytes_added",
                    "chunks_new",
                    "duration_s",
                    "complete",
                )
            }
        return m

    def restore(self, target: Path) -> tuple[Measure, Path]:
        m = run_measured(
            self.job_cli("--json", "restore", "bench/data", "--to-time", "latest", "--target", str(target)),
            self.env,
        )
        doc = last_json(m.stdout)
        if isinstance(doc, dict):
            m.extra = {k: doc.get(k) for k in ("point_id", "files", "bytes_total", "verified")}
        return m, target

    def local_state(self) -> list[Path]:
        return [self.base / "root", self.policy / ".protectctl"]


POLICY_TEMPLATE = """\
# generated by tests/bench/bench_backup.py
apiVersion: protectctl/v1
kind: Host
metadata: {{name: local}}
spec:
  address: local
  scheduler: systemd
  root: {root}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {{name: bench-key}}
spec:
  passphrase: {{file: {passphrase}}}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {{name: bench-store}}
spec:
  type: local
  path: {repo}
  encryption: {{key: bench-key}}
---
apiVersion: protectctl/v1
kind: SLA
metadata: {{name: bench-sla}}
spec:
  sync: every 15m
  full: daily at 20:00
  retention: {{disk: 14d}}
---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: bench}}
spec:
  sla: bench-sla
  storage: bench-store
  members:
    - name: data
      host: local
      filesystem: {{path: {source}}}
"""


class Restic(Tool):
    name = binary = "restic"

    def __init__(self, workdir: Path, source: Path) -> None:
        super().__init__(workdir, source)
        self.exe = self.find() or "restic"
        self.env.update(
            {
                "RESTIC_PASSWORD": PASSPHRASE,
                "RESTIC_REPOSITORY": str(self.repo),
                "RESTIC_CACHE_DIR": str(self.base / "cache"),
            }
        )

    def version(self) -> str:
        return subprocess.run([self.exe, "version"], capture_output=True, text=True, env=self.env).stdout.strip()

    def startup(self) -> Measure:
        return run_measured([self.exe, "version"], self.env)

    def init(self) -> Measure:
        # default encryption (AES-256-CTR + Poly1305); repository v2 so that compression exists
        return run_measured([self.exe, "init", "--repository-version", "2"], self.env)

    def backup(self) -> Measure:
        m = run_measured(
            [
                self.exe,
                "backup",
                "--json",
                "--quiet",
                "--compression",
                "auto",
                "--host",
                "bench",
                str(self.source),
            ],
            self.env,
        )
        for line in reversed(m.stdout.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("message_type") == "summary":
                m.extra = {
                    k: doc.get(k)
                    for k in (
                        "snapshot_id",
                        "files_new",
                        "files_changed",
                        "files_unmodified",
                        "data_added",
                        "total_files_processed",
                        "total_bytes_processed",
                        "total_duration",
                    )
                }
                break
        return m

    def restore(self, target: Path) -> tuple[Measure, Path]:
        m = run_measured([self.exe, "restore", "latest", "--quiet", "--target", str(target)], self.env)
        return m, target / str(self.source).lstrip("/")

    def local_state(self) -> list[Path]:
        return [self.base / "cache"]


class Borg(Tool):
    name = binary = "borg"

    def __init__(self, workdir: Path, source: Path) -> None:
        super().__init__(workdir, source)
        self.exe = self.find() or "borg"
        self.env.update(
            {
                "BORG_PASSPHRASE": PASSPHRASE,
                "BORG_REPO": str(self.repo),
                "BORG_BASE_DIR": str(self.base / "home"),
                "BORG_DISPLAY_PASSPHRASE": "no",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            }
        )
        self.last = ""

    def version(self) -> str:
        return subprocess.run([self.exe, "--version"], capture_output=True, text=True, env=self.env).stdout.strip()

    def startup(self) -> Measure:
        return run_measured([self.exe, "--version"], self.env)

    def init(self) -> Measure:
        return run_measured([self.exe, "init", "--encryption", "repokey-blake2"], self.env)

    def backup(self) -> Measure:
        self.count += 1
        name = f"bench-{self.count}"
        m = run_measured(
            [self.exe, "create", "--json", "--compression", "zstd", f"::{name}", str(self.source)], self.env
        )
        doc = last_json(m.stdout)
        if m.ok:
            self.last = name
        if isinstance(doc, dict) and "archive" in doc:
            a = doc["archive"]
            stats = a.get("stats", {})
            m.extra = {"archive": a.get("name"), "duration": a.get("duration"), **stats}
        return m

    def restore(self, target: Path) -> tuple[Measure, Path]:
        m = run_measured([self.exe, "extract", f"::{self.last}"], self.env, cwd=target)
        return m, target / str(self.source).lstrip("/")

    def local_state(self) -> list[Path]:
        return [self.base / "home"]


TOOLS: dict[str, type[Tool]] = {"protectctl": Protectctl, "restic": Restic, "borg": Borg}


# ---------------------------------------------------------------- the run


def precompile_protectctl() -> None:
    """Byte-compile protectctl like `pip install` does, so start-up is measured as installed."""
    roots = [REPO_ROOT / "protectctl", REPO_ROOT / "providers"]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *[str(r) for r in roots if r.is_dir()]],
        env=base_env(),
        stdout=subprocess.DEVNULL,
        check=False,
    )


def warm(root: Path) -> float:
    """Read every file once so that the first tool does not pay for cold reads alone."""
    start = time.perf_counter()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.read(8 << 20):
                    pass
    return time.perf_counter() - start


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_s(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{m['seconds']:.2f} s" if m["ok"] else "FAILED"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def secs(m: dict[str, Any] | None) -> float | None:
    return m["seconds"] if m and m["ok"] else None


def render_table(results: dict[str, Any]) -> str:
    tools = results["tools"]
    phases = results["phases"]
    cols = list(tools)
    ratio_cols = [t for t in ("restic", "borg") if t in cols and "protectctl" in cols]
    header = ["phase", *cols, *[f"protectctl/{t}" for t in ratio_cols]]
    rows: list[list[str]] = []
    for key, label in [STARTUP, *PHASES]:
        per = {t: phases.get(key, {}).get(t) for t in cols}
        row = [label, *[fmt_s(per[t]) for t in cols]]
        row += [fmt_ratio(secs(per["protectctl"]), secs(per[t])) for t in ratio_cols]
        rows.append(row)
    # repository size
    sizes = {t: results["repository"].get(t, {}).get("apparent_bytes") for t in cols}
    rows.append(
        [
            "repository size (du -sb)",
            *[dataset.human(sizes[t]) if sizes[t] else "-" for t in cols],
            *[fmt_ratio(sizes["protectctl"], sizes[t]) for t in ratio_cols],
        ]
    )
    # peak RSS over every phase
    peak: dict[str, float | None] = {}
    for t in cols:
        vals = [
            phases[k][t]["max_rss_kib"]
            for k, _ in PHASES
            if phases.get(k, {}).get(t) and phases[k][t]["max_rss_kib"] is not None
        ]
        peak[t] = max(vals) * 1024 if vals else None
    rows.append(
        [
            "peak RSS (max over phases)",
            *[f"{(peak[t] or 0) / 1e6:.0f} MB" if peak[t] else "-" for t in cols],
            *[fmt_ratio(peak["protectctl"], peak[t]) for t in ratio_cols],
        ]
    )
    restore_ok = {t: results["verify"].get(t, {}).get("ok") for t in cols}
    rows.append(
        [
            "restore verified",
            *["yes" if restore_ok[t] else ("NO" if restore_ok[t] is False else "-") for t in cols],
            *["" for _ in ratio_cols],
        ]
    )

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]

    # detail: peak RSS and CPU per phase
    out += ["", "per phase: peak RSS MB / CPU s (user+sys)"]
    header2 = ["phase", *cols]
    rows2 = []
    for key, label in PHASES:
        r = [label]
        for t in cols:
            m = phases.get(key, {}).get(t)
            if not m or m["max_rss_kib"] is None:
                r.append("-")
            else:
                r.append(f"{m['max_rss_kib'] * 1024 / 1e6:.0f} MB / {(m['user_s'] or 0) + (m['sys_s'] or 0):.2f} s")
        rows2.append(r)
    widths2 = [max(len(r[i]) for r in [header2, *rows2]) for i in range(len(header2))]
    out += [
        "  ".join(c.ljust(widths2[0]) if i == 0 else c.rjust(widths2[i]) for i, c in enumerate(r))
        for r in [header2, *rows2]
    ]
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's performance targets, each with its verdict (None when a figure is missing)."""
    p = results["phases"]

    def t(key: str, tool: str) -> float | None:
        return secs(p.get(key, {}).get(tool))

    checks = []
    for key, label in PHASES[1:]:
        if key == "nochange":
            a, b, other = t(key, "protectctl"), t(key, "borg"), "borg"
        else:
            a, b, other = t(key, "protectctl"), t(key, "restic"), "restic"
        checks.append(
            {
                "target": f"{label}: faster than {other}",
                "protectctl": a,
                other: b,
                "met": None if a is None or b is None else a < b,
            }
        )
    rp = results["repository"].get("protectctl", {}).get("apparent_bytes")
    rr = results["repository"].get("restic", {}).get("apparent_bytes")
    checks.append(
        {
            "target": "repository no larger than restic's",
            "protectctl": rp,
            "restic": rr,
            "met": None if rp is None or rr is None else rp <= rr,
        }
    )
    rss = [
        p[k]["protectctl"]["max_rss_kib"]
        for k, _ in PHASES
        if p.get(k, {}).get("protectctl") and p[k]["protectctl"]["max_rss_kib"] is not None
    ]
    peak = max(rss) * 1024 if rss else None
    checks.append(
        {"target": "peak RSS under 150 MB", "protectctl": peak, "met": None if peak is None else peak < 150e6}
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="protectctl vs restic vs borg backup benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--size", default="1GiB", help="dataset size, e.g. 1GiB, 64MiB (default 1GiB)")
    ap.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temporary work directory (default: /tmp)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of protectctl,restic,borg")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (dataset, repositories)")
    ap.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON results file (default tests/bench/results/backup-<timestamp>.json)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="per-command timeout in seconds")
    ap.add_argument(
        "--protectctl-entry",
        choices=("agent", "policy"),
        default="agent",
        help="run protectctl's syncs and restore with the agent config apply wrote, as its timers "
        "do (agent, default), or with -C POLICY_DIR as by hand (policy)",
    )
    args = ap.parse_args(argv)
    Protectctl.entry = args.protectctl_entry

    size = dataset.parse_size(args.size)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tool(s): {', '.join(unknown)} (choose from {', '.join(ALL_TOOLS)})")
    missing = [t for t in wanted if TOOLS[t].find() is None and t != "protectctl"]
    for t in missing:
        log(f"{t} is not installed: skipping it (install with `{INSTALL_HINT[t]}`)")
    tools_wanted = [t for t in wanted if t not in missing]
    if not tools_wanted:
        log("no tool to run")
        return 2
    if GNU_TIME is None:
        log("/usr/bin/time not found (apt-get install time): peak RSS comes from wait4() rusage instead")

    parent = args.workdir or Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="protectctl-bench-", dir=parent))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"backup-{stamp}.json"
    source = workdir / "data"
    results: dict[str, Any] = {
        "format": "protectctl-bench-backup/1",
        "started": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": _cpu_model(),
            "mem_total_kib": _mem_total(),
            "loadavg_start": os.getloadavg(),
        },
        "settings": {
            "size": size,
            "seed": args.seed,
            "workdir": str(workdir),
            "tools": tools_wanted,
            "rss_source": "/usr/bin/time %M" if GNU_TIME else "wait4 ru_maxrss",
            "protectctl_entry": args.protectctl_entry,
        },
        "notes": [
            "warm page cache: the cache cannot be dropped reliably, so the dataset is read once before "
            "the first phase and the tools run back to back within each phase, in the order listed",
            f"protectctl jobs run via the {args.protectctl_entry} entry ("
            + (
                "--agent-config, as the systemd timers apply wrote run them"
                if args.protectctl_entry == "agent"
                else "-C POLICY_DIR, as typed by hand"
            )
            + ")",
            "times are wall-clock times of the whole command, process start-up included",
            "restic: default encryption, repository v2, --compression auto; borg: repokey-blake2, "
            "--compression zstd; protectctl: local Storage with an EncryptionKey passphrase file",
            "PYTHONDONTWRITEBYTECODE is unset for every tool and protectctl is byte-compiled first, "
            "as an installed package would be",
        ],
        "skipped": {t: INSTALL_HINT[t] for t in missing},
        "tools": {},
        "dataset": {},
        "mutations": [],
        "phases": {},
        "repository": {},
        "local_state": {},
        "verify": {},
    }
    failed: set[str] = set()
    exit_code = 0
    try:
        log(f"work directory {workdir}")
        t0 = time.perf_counter()
        results["dataset"] = dataset.build(source, size, args.seed)
        results["dataset"]["build_seconds"] = round(time.perf_counter() - t0, 2)
        log(
            f"dataset: {results['dataset']['files']} files, {dataset.human(results['dataset']['bytes'])} "
            f"in {results['dataset']['build_seconds']} s"
        )
        results["dataset"]["warm_seconds"] = round(warm(source), 2)

        tools = {name: TOOLS[name](workdir, source) for name in tools_wanted}
        if "protectctl" in tools:
            precompile_protectctl()
        for name, tool in tools.items():
            results["tools"][name] = {"version": tool.version()}

        def phase(key: str, fn: Callable[[Tool], Any]) -> None:
            results["phases"][key] = {}
            for name, tool in tools.items():
                if name in failed:
                    continue
                m = fn(tool)
                restored = None
                if isinstance(m, tuple):
                    m, restored = m
                results["phases"][key][name] = m.public()
                status = (
                    f"{m.seconds:.2f} s, {(m.max_rss_kib or 0) * 1024 / 1e6:.0f} MB"
                    if m.ok
                    else f"FAILED rc={m.rc}: {(m.stderr.strip() or m.stdout.strip())[-600:]}"
                )
                log(f"{key:9s} {name:10s} {status}")
                if not m.ok and key in ("init", "first"):
                    failed.add(name)
                if restored is not None and m.ok:
                    results["verify"][name] = verify(expected, restored)
                    v = results["verify"][name]
                    log(
                        f"{'':9s} {name:10s} restore verification: {'ok' if v['ok'] else 'FAILED'} "
                        f"({v['files']} files{'; ' + '; '.join(v['problems'][:3]) if v['problems'] else ''})"
                    )

        expected: dict[str, tuple[int, str]] = {}
        phase("startup", lambda t: t.startup())
        phase("init", lambda t: t.init())
        phase("first", lambda t: t.backup())
        phase("nochange", lambda t: t.backup())
        rep = dataset.mutate(source, 0.01, 1, args.seed)
        results["mutations"].append(rep.summary())
        log(f"mutate 1 %: {dataset.human(rep.changed_bytes)} changed")
        phase("change1", lambda t: t.backup())
        rep = dataset.mutate(source, 0.10, 2, args.seed)
        results["mutations"].append(rep.summary())
        log(f"mutate 10 %: {dataset.human(rep.changed_bytes)} changed")
        phase("change10", lambda t: t.backup())
        for name, tool in tools.items():
            a, b = tree_size(tool.repo)
            results["repository"][name] = {
                "apparent_bytes": a,
                "allocated_bytes": b,
                "files": sum(len(f) for _, _, f in os.walk(tool.repo)),
            }
            results["local_state"][name] = sum(tree_size(p)[0] for p in tool.local_state() if p.exists())
        expected = dataset.manifest(source)
        targets_dirs = {}
        for name in tools:
            targets_dirs[name] = workdir / "restore" / name
            targets_dirs[name].mkdir(parents=True)
        phase("restore", lambda t: t.restore(targets_dirs[t.name]))
        for name in tools:
            shutil.rmtree(targets_dirs[name], ignore_errors=True)
    except KeyboardInterrupt:
        log("interrupted")
        exit_code = 130
    finally:
        results["finished"] = datetime.now(UTC).isoformat()
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["targets"] = targets(results) if results["phases"] else []
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if results["phases"]:
        print()
        print(
            f"dataset {dataset.human(results['dataset'].get('bytes', 0))}, {results['dataset'].get('files')} "
            f"files (seed {args.seed}); {os.cpu_count()} CPUs; warm page cache; load average "
            f"{results['machine']['loadavg_start'][0]:.1f} at start, "
            f"{results['machine']['loadavg_end'][0]:.1f} at end"
        )
        print(render_table(results))
        print()
        for c in results["targets"]:
            verdict = {True: "met", False: "NOT met", None: "n/a"}[c["met"]]
            print(f"target: {c['target']:45s} {verdict}")
        print(f"\nresults: {output}")
    for name in tools_wanted:
        phases_ok = all(results["phases"].get(k, {}).get(name, {}).get("ok") for k, _ in PHASES)
        if not phases_ok or not results["verify"].get(name, {}).get("ok"):
            exit_code = exit_code or 1
    return exit_code


def verify(expected: dict[str, tuple[int, str]], restored: Path) -> dict[str, Any]:
    if not restored.is_dir():
        return {"ok": False, "files": 0, "problems": [f"restored tree not found at {restored}"]}
    actual = dataset.manifest(restored)
    problems = dataset.compare(expected, actual)
    return {
        "ok": not problems,
        "files": len(actual),
        "bytes": sum(s for s, _ in actual.values()),
        "method": "size + sha256 of every file",
        "problems": problems,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    raise SystemExit(main())
