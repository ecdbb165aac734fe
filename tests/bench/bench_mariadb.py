"""MariaDB full backups and restore-to-time: protectctl against mariadb-backup alone, same server, same run.

    python -m tests.bench.bench_mariadb [--size-mib 1024] [--tables 4] [--change-pct 1] [--json] [--keep]

One real mariadbd (tests/integration/mariadb_server.py) filled with sysbench-like tables
(`sbtest1..N`: id, k, c CHAR(120), pad CHAR(60), random content) until the InnoDB files hold
about --size-mib, then InnoDB's dirty pages written out (as before each full measured, so
neither side pays for the other's background flushing). Measured, in this order:

  full            protectctl `run full` (mariadb-backup's mbstream through the engine: chunked,
                  deduplicated, zstd, AES-256-GCM) vs `mariadb-backup --backup --stream=mbstream
                  | zstd -q` (level 3) into a file
  second full     the same again, nothing changed: an express full (only the pages changed since
                  the first: `--incremental-lsn`)
  1% changed      after UPDATEs of --change-pct % of the rows, in 64 runs scattered over each
                  table: the same two commands (protectctl's an express full on the second); then a
                  few marker rows around T, a `sync`, and the same full as a real one (`--no-express`:
                  the whole copy through the engine's dedup), for comparison
  restore         protectctl `restore --to-time T` (from the express chain: extract the first full,
                  --prepare, extract and --prepare --incremental-dir each express delta, start a
                  server on a port, replay the binlogs to T) vs `zstd -d | mbstream -x`,
                  `mariadb-backup --prepare`, `mariadb-backup --copy-back` of their last full (no
                  server start, no roll-forward)

protectctl runs through its job API (the CLI adds ~0.3 s of interpreter start). The restore
is checked: the marker rows committed before T, none after. Prints a table (with the load
average before, between and after, and at the end of each step; "CPU s": protectctl's CPU seconds,
every thread and its waited-for children, then the baseline pipeline's); `--json` for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tests.integration import mariadb_server
from tests.integration.mariadb_server import OS_USER, MariadbServer, stop_restored

PASS = b"bench passphrase"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cpu_s() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children (mariadb-backup, zstd)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def timed_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    cpu = cpu_s()
    elapsed, _ = timed(fn)
    return elapsed, cpu_s() - cpu


def shell_as_user(script: str) -> None:
    """A pipeline run as the server's OS user (the baseline's commands, as an operator would type them)."""
    result = subprocess.run(
        ["runuser", "-u", OS_USER, "--", "bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script[:80]}: {result.stderr[-2000:]}")


def fill(server: MariadbServer, size_mib: int, tables: int) -> int:
    """sysbench-like tables of random rows until ~size_mib of InnoDB data; returns rows per table."""
    rows = max(1000, size_mib * (1 << 20) // 260 // tables)  # ~260 bytes a row on disk, measured at 64 MiB
    for i in range(1, tables + 1):
        server.sql(
            f"CREATE TABLE shop.sbtest{i} (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, "
            "pad CHAR(60) NOT NULL, KEY k (k)) ENGINE=InnoDB"
        )
        done = 0
        while done < rows:  # batches keep each transaction (and the binlog event) bounded
            n = min(200_000, rows - done)
            server.sql(
                f"INSERT INTO shop.sbtest{i} SELECT seq, FLOOR(RAND() * {rows}), "
                "LEFT(CONCAT(SHA2(RAND(), 512), SHA2(RAND(), 512)), 120), LEFT(SHA2(RAND(), 256), 60) "
                f"FROM seq_{done + 1}_to_{done + n}",
                database="shop",
            )
            done += n
    return rows


def quiesce(server: MariadbServer, timeout_s: float = 180) -> float:
    """Let InnoDB write its dirty pages out before a step is timed (else the first step measured,
    protectctl's, pays for the fill's background flushing and the baseline after it does not);
    returns the seconds waited."""
    start = time.perf_counter()
    server.sql("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001; SET GLOBAL innodb_max_dirty_pages_pct = 0")
    while time.perf_counter() - start < timeout_s:
        dirty = server.sql(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
            "WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'"
        )
        if int(dirty or 0) == 0:
            break
        time.sleep(0.5)
    return time.perf_counter() - start


def scatter_change(server: MariadbServer, tables: int, rows: int, pct: float) -> None:
    per_table = int(rows * pct / 100)
    runs = 64
    length = max(1, per_table // runs)
    for i in range(1, tables + 1):
        for r in range(runs):
            first = 1 + (r * rows) // runs + (r * 7919) % max(1, rows // runs - length)
            server.sql(
                f"UPDATE shop.sbtest{i} SET c = LEFT(SHA2(RAND(), 512), 120), k = k + 1 "
                f"WHERE id BETWEEN {first} AND {first + length - 1}"
            )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--change-pct", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    reason = mariadb_server.available()
    if reason:
        raise SystemExit(reason)
    if shutil.which("zstd") is None:
        raise SystemExit("zstd not found (apt-get install zstd)")

    from protectctl.agent.jobs import RetentionSpec, SourceJob, restore, run_backup
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    server = MariadbServer()
    base = server.base
    results: dict[str, object] = {"size_mib": args.size_mib, "tables": args.tables, "change_pct": args.change_pct}
    loads = [os.getloadavg()[0]]
    try:
        server.init().start("--innodb-buffer-pool-size=256M", "--innodb-log-file-size=512M", "--max-binlog-size=256M")
        server.sql("CREATE DATABASE shop; CREATE TABLE shop.marker (id INT PRIMARY KEY)")
        t_fill, rows = timed(lambda: fill(server, args.size_mib, args.tables))
        results["fill_s"] = round(t_fill, 1)
        results["rows_per_table"] = rows
        results["innodb_bytes"] = du(server.data / "shop")
        storage = LocalStorage(base / "repo")
        Repository.init(storage, PASS)
        state_dir = base / "state"
        job = SourceJob(
            source="bench/db",
            provider="mariadb",
            spec=server.spec(),
            storage=storage,
            passphrase=lambda: PASS,
            state_dir=state_dir,
            host="local",
            retention=RetentionSpec(keep_within_s=86400),
        )
        theirs_dir = base / "theirs"
        theirs_dir.mkdir()
        os.chown(theirs_dir, *server.data.stat()[4:6])
        n = [0]

        def theirs_full() -> None:
            n[0] += 1
            scratch = theirs_dir / f"scratch{n[0]}"
            shell_as_user(
                f"mkdir -p {scratch} && mariadb-backup --no-defaults --backup --stream=mbstream "
                f"--socket={server.sock} --datadir={server.data} --target-dir={scratch} 2>/dev/null "
                f"| zstd -q > {theirs_dir}/full{n[0]}.mbs.zst && rm -rf {scratch}"
            )

        table: dict[str, dict[str, object]] = {}

        def step(name: str, ours: Callable[[], object], baseline: Callable[[], object] | None) -> None:
            before = du(base / "repo")
            t_ours, cpu_ours = timed_cpu(ours)
            row: dict[str, object] = {
                "protectctl_s": round(t_ours, 2),
                "protectctl_cpu_s": round(cpu_ours, 2),
                "stored_bytes": du(base / "repo") - before,
                "load": round(os.getloadavg()[0], 1),
            }
            if baseline is not None:
                t_theirs, cpu_theirs = timed_cpu(baseline)
                row["mariadb_backup_s"] = round(t_theirs, 2)
                row["mariadb_backup_cpu_s"] = round(cpu_theirs, 2)
                row["mariadb_backup_bytes"] = (theirs_dir / f"full{n[0]}.mbs.zst").stat().st_size
            table[name] = row

        real = replace(job, spec={**job.spec, "express_fulls": 0})  # what `run full --no-express` takes
        results["quiesce_s"] = round(quiesce(server), 1)
        step("full", lambda: run_backup(job, "full"), theirs_full)
        step("second full (no change, express)", lambda: run_backup(job, "full"), theirs_full)
        loads.append(os.getloadavg()[0])
        scatter_change(server, args.tables, rows, args.change_pct)
        quiesce(server)
        step(f"full after {args.change_pct:g}% changed (express)", lambda: run_backup(job, "full"), theirs_full)
        # T after the express full, as the baseline restores its last full: a roll-forward of a few transactions
        server.sql("INSERT INTO shop.marker VALUES (1), (2)")
        time.sleep(1.1)  # binlog times are whole seconds
        target = datetime.now(UTC)
        server.sql("INSERT INTO shop.marker VALUES (3)")
        step("sync (binlogs)", lambda: run_backup(job, "sync"), None)
        # the same change as a real full (after T: the restore below still starts from the express chain)
        step(f"full after {args.change_pct:g}% changed (--no-express)", lambda: run_backup(real, "full"), None)
        loads.append(os.getloadavg()[0])

        restored = base / "restored"
        port = mariadb_server.free_port(35000)
        t_ours, res = timed(lambda: restore(job, target, target=restored, options={"port": port}))
        got = server.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM shop.marker", sock=restored / "mysqld.sock")
        assert got == "1,2", f"protectctl restored markers {got!r}"
        stop_restored(restored)
        shutil.rmtree(restored)
        their_restore = theirs_dir / "restore"

        def theirs_restore() -> None:
            shell_as_user(
                f"mkdir -p {their_restore}/x {their_restore}/data && zstd -dc {theirs_dir}/full{n[0]}.mbs.zst"
                f" | mbstream -x -C {their_restore}/x && mariadb-backup --no-defaults --prepare "
                f"--target-dir={their_restore}/x 2>/dev/null && mariadb-backup --no-defaults --copy-back "
                f"--target-dir={their_restore}/x --datadir={their_restore}/data 2>/dev/null"
            )

        t_theirs, _ = timed(theirs_restore)
        table["restore to time (express chain)"] = {
            "protectctl_s": round(t_ours, 2),
            "mariadb_backup_s": round(t_theirs, 2),
            "detail": "protectctl: extract the real full + prepare, extract + prepare each express delta, "
            "start + binlog replay; "
            "mariadb-backup: zstd -d | mbstream -x + prepare + copy-back",
        }
        results["protectctl_restore_details"] = dict(getattr(res, "details", {}))
        loads.append(os.getloadavg()[0])
        results["rows"] = table
        results["load_average"] = loads
    finally:
        for target_dir in (base / "restored",):
            stop_restored(target_dir)
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results, indent=2, default=str) if args.json else render(results))
    return results


def render(results: dict[str, object]) -> str:
    def mib(n: object) -> str:
        return f"{n / 2**20:,.1f} MiB" if isinstance(n, int) else "-"

    lines = [
        f"{results['tables']} sysbench-like tables, {mib(results.get('innodb_bytes'))} of InnoDB files "
        f"(filled in {results.get('fill_s')} s); load average {results.get('load_average')}",
        f"{'step':<40} {'protectctl':>11} {'mariadb-backup':>15} {'ratio':>6} {'CPU s':>12} {'stored':>12} "
        f"{'their file':>12} {'load':>5}",
    ]
    rows = results.get("rows", {})
    assert isinstance(rows, dict)
    for name, row in rows.items():
        ours, theirs = row.get("protectctl_s"), row.get("mariadb_backup_s")
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        cpu = f"{row.get('protectctl_cpu_s', '-')}/{row.get('mariadb_backup_cpu_s', '-')}"
        lines.append(
            f"{name:<40} {ours!s:>9} s {theirs!s:>13} s {ratio:>6} {cpu:>12} {mib(row.get('stored_bytes')):>12} "
            f"{mib(row.get('mariadb_backup_bytes')):>12} {row.get('load', '-')!s:>5}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
