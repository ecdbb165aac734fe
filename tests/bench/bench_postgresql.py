"""PostgreSQL backup and restore-to-time: protectctl against pgBackRest, same cluster, same run.

    python -m tests.bench.bench_postgresql [--scale 50] [--transactions 10000] [--repeat 3]

One real PostgreSQL 15 cluster filled by `pgbench -i -s SCALE`; archive_command hands every
segment to both tools (pgBackRest's archive-push, then protectctl's spool), so both see the
same WAL. Measured, in this order:

  full          pgBackRest `backup --type=full` (zst, aes-256-cbc, process-max 2, start-fast)
                protectctl `run full` (zstd, AES-256-GCM, low-level backup API); the first
                backup, so it also stores the ~620 MiB of WAL `pgbench -i` wrote, which
                pgBackRest's archive-push compressed inside archive_command (unmeasured)
  incremental   after `pgbench -n -t N`: pgBackRest `--type=incr`; protectctl an express
                `full` (only files changed since the last full are read, only new chunks
                stored) and a `sync` (WAL shipping: protectctl's incremental)
  restore       to a time after the pgbench run, until the restored cluster is promoted;
                `--repeat N`: N restores of each tool, alternating, the median reported
  repository    bytes on disk after each step

Both restores are checked: the marker rows committed before the target time, and none after.
protectctl runs through its job API (the CLI adds ~0.3 s of interpreter start); pgBackRest
through its binary. Prints a table; `--json` for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.integration import pgcluster
from tests.integration.pgcluster import OS_USER, PG_BIN, PgCluster

PASS = b"bench passphrase"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_user(argv: list[str]) -> str:
    result = pgcluster.as_user(argv)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}: {result.stderr[-2000:]}")
    return result.stdout


class PgBackRest:
    def __init__(self, base: Path, cluster: PgCluster) -> None:
        self.base = base / "pgbr"
        self.base.mkdir()
        for sub in ("repo", "log", "lock", "spool"):
            (self.base / sub).mkdir()
        self.conf = self.base / "pgbackrest.conf"
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.base / 'repo'}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchbenchbench\n"
            "repo1-retention-full=10\ncompress-type=zst\nprocess-max=2\nstart-fast=y\nlog-level-console=warn\n"
            f"log-path={self.base / 'log'}\nlock-path={self.base / 'lock'}\nspool-path={self.base / 'spool'}\n"
            "[bench]\n"
            f"pg1-path={cluster.data}\npg1-port={cluster.port}\npg1-socket-path={cluster.sock}\n"
        )
        subprocess.run(["chown", "-R", f"{OS_USER}:", str(self.base)], check=True)
        self.cluster = cluster

    def cmd(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", "--stanza=bench", *args]

    def archive_command(self) -> str:
        return " ".join(self.cmd("archive-push", "%p"))

    def run(self, *args: str) -> str:
        return run_user(self.cmd(*args))


def start_and_promote(data: Path, sock: Path, port: int, log: Path) -> None:
    run_user(
        [
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-W",
            "-s",
            "-o",
            f"-c port={port} -c archive_mode=off -c unix_socket_directories='{sock}'",
            "start",
        ]
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        r = pgcluster.as_user(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-At",
                "-h",
                str(sock),
                "-p",
                str(port),
                "-d",
                "postgres",
                "-c",
                "SELECT pg_is_in_recovery()",
            ]
        )
        if r.returncode == 0 and r.stdout.strip() == "f":
            return
        time.sleep(0.05)
    raise TimeoutError(f"cluster in {data} not promoted")


def pgbackrest_restore(pgbr: PgBackRest, cluster: PgCluster, base: Path, target: datetime) -> tuple[float, float]:
    """pgBackRest's restore to `target`, then start until promoted: (restore s, promote s)."""
    pgbr_target = base / "pgbr-restored"
    pgbr_target.mkdir(mode=0o700)
    os.chown(pgbr_target, cluster.uid, cluster.gid)
    when = target.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"
    t_restore, _ = timed(
        lambda: pgbr.run(
            "restore", "--type=time", f"--target={when}", "--target-action=promote", f"--pg1-path={pgbr_target}"
        )
    )
    port = pgcluster.free_port(28000)
    t_promote, _ = timed(lambda: start_and_promote(pgbr_target, cluster.sock, port, cluster.sock / "pgbr-restored.log"))
    got = cluster.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker", port=port)
    assert got == "0,1,2", f"pgBackRest restored markers {got!r}"
    pgcluster.stop_dir(pgbr_target)
    shutil.rmtree(pgbr_target)
    return t_restore, t_promote


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--transactions", type=int, default=10000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-pgbackrest", action="store_true", help="protectctl only (the smoke test)")
    parser.add_argument("--repeat", type=int, default=1, help="restores per tool (median reported)")
    args = parser.parse_args(argv)
    reason = pgcluster.available()
    if reason:
        raise SystemExit(reason)
    have_pgbr = shutil.which("pgbackrest") is not None and not args.no_pgbackrest

    from protectctl.agent.jobs import RetentionSpec, SourceJob, restore, run_backup
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage
    from protectctl.providers.postgresql.cluster import Cluster
    from protectctl.providers.postgresql.spool import archive_command, install_spool, spool_dir

    base = pgcluster.base_dir("protectctl-bench-pg-")
    cluster = PgCluster(base).init(max_wal_size="'2GB'", checkpoint_timeout="'30min'", fsync="on").start()
    results: dict[str, object] = {"scale": args.scale, "transactions": args.transactions}
    try:
        state_dir = base / "state"
        source = "bench/pg"
        spec = cluster.spec()
        spool = spool_dir(spec, source, state_dir)
        install_spool(Cluster.from_spec(spec), spool)
        ours = archive_command(spool, 64 << 30)
        pgbr = PgBackRest(base, cluster) if have_pgbr else None
        command = f"{pgbr.archive_command()} && {ours}" if pgbr else ours
        cluster.sql("ALTER SYSTEM SET archive_mode = 'on'")
        quoted = command.replace("'", "''")
        cluster.sql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
        cluster.stop()
        cluster.start()
        if pgbr:
            # before any WAL is archived: archive-push fails without a stanza, and three failures
            # make PostgreSQL's archiver pause for a minute
            pgbr.run("stanza-create")
        t_init, _ = timed(lambda: cluster.pgbench("-i", "-q", "-s", str(args.scale)))
        cluster.sql("CREATE TABLE marker (id int, at timestamptz DEFAULT clock_timestamp())")
        cluster.sql("CHECKPOINT")
        results["data_dir_bytes"] = du(cluster.data) - du(cluster.data / "pg_wal")
        results["pgbench_init_s"] = round(t_init, 1)
        storage = LocalStorage(base / "repo")
        Repository.init(storage, PASS)
        job = SourceJob(
            source=source,
            provider="postgresql",
            spec=spec,
            storage=storage,
            passphrase=lambda: PASS,
            state_dir=state_dir,
            host="local",
            retention=RetentionSpec(keep_within_s=86400),
        )
        cluster.sql("SELECT pg_switch_wal()")
        rows: dict[str, dict[str, object]] = {}
        loads = [os.getloadavg()[0]]

        # -- full -------------------------------------------------------------------------
        t, r = timed(lambda: run_backup(job, "full"))
        rows["full"] = {"protectctl_s": round(t, 2), "protectctl_repo": du(base / "repo")}
        if pgbr:
            t, _ = timed(lambda: pgbr.run("backup", "--type=full"))
            rows["full"].update(pgbackrest_s=round(t, 2), pgbackrest_repo=du(pgbr.base / "repo"))

        # -- incremental after a pgbench run ---------------------------------------------
        t_bench, _ = timed(lambda: cluster.pgbench("-n", "-c", "2", "-j", "2", "-t", str(args.transactions // 2)))
        results["pgbench_run_s"] = round(t_bench, 1)
        for i in range(3):
            cluster.sql(f"INSERT INTO marker (id) VALUES ({i})")
        time.sleep(0.2)
        target = datetime.now(UTC)
        time.sleep(0.2)
        for i in range(3, 6):
            cluster.sql(f"INSERT INTO marker (id) VALUES ({i})")
        t, _ = timed(lambda: run_backup(job, "sync"))
        rows["incremental (sync: WAL)"] = {"protectctl_s": round(t, 2), "protectctl_repo": du(base / "repo")}
        t, _ = timed(lambda: run_backup(job, "full"))
        rows["incremental (express full)"] = {"protectctl_s": round(t, 2), "protectctl_repo": du(base / "repo")}
        if pgbr:
            t, _ = timed(lambda: pgbr.run("backup", "--type=incr"))
            for key in ("incremental (sync: WAL)", "incremental (express full)"):
                rows[key].update(pgbackrest_s=round(t, 2), pgbackrest_repo=du(pgbr.base / "repo"))
        cluster.sql("SELECT pg_switch_wal()")
        run_backup(job, "sync")  # ships the WAL after the target too

        # -- restore to a time, until promoted -------------------------------------------
        loads.append(os.getloadavg()[0])
        ours_s: list[float] = []
        theirs: list[tuple[float, float]] = []
        res: object = None
        for _ in range(max(1, args.repeat)):
            port = pgcluster.free_port(27000)
            options = {"port": port}
            t, res = timed(lambda: restore(job, target, target=base / "restored", options=options))  # noqa: B023
            got = cluster.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marker", port=port)
            assert got == "0,1,2", f"protectctl restored markers {got!r}"
            ours_s.append(t)
            pgcluster.stop_dir(base / "restored")
            shutil.rmtree(base / "restored")
            if pgbr:
                theirs.append(pgbackrest_restore(pgbr, cluster, base, target))
        rows["restore to time + promote"] = {"protectctl_s": round(statistics.median(ours_s), 2)}
        if theirs:
            t_restore = statistics.median(r for r, _ in theirs)
            t_promote = statistics.median(p for _, p in theirs)
            rows["restore to time + promote"].update(
                pgbackrest_s=round(statistics.median(r + p for r, p in theirs), 2),
                pgbackrest_detail=f"restore {t_restore:.2f} s + promote {t_promote:.2f} s (medians)",
            )
        if len(ours_s) > 1:
            rows["restore to time + promote"]["runs"] = {
                "protectctl": [round(x, 2) for x in ours_s],
                "pgbackrest": [round(r + p, 2) for r, p in theirs],
            }
        loads.append(os.getloadavg()[0])
        results["rows"] = rows
        results["load_average"] = loads
        results["protectctl_restore_details"] = dict(getattr(res, "details", {}))
    finally:
        for data in (base / "data", base / "restored", base / "pgbr-restored"):
            pgcluster.stop_dir(data)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(render(results))
    return results


def render(results: dict[str, object]) -> str:
    def mib(n: object) -> str:
        return f"{n / 2**20:,.1f} MiB" if isinstance(n, int) else "-"

    lines = [
        f"pgbench scale {results['scale']}: {mib(results['data_dir_bytes'])} of cluster files; "
        f"{results['transactions']} transactions between the fulls ({results.get('pgbench_run_s')} s); "
        f"load average {results.get('load_average')}",
        f"{'step':<30} {'protectctl':>11} {'pgBackRest':>11} {'ratio':>6} {'repo protectctl':>16} "
        f"{'repo pgBackRest':>16}",
    ]
    rows = results.get("rows", {})
    assert isinstance(rows, dict)
    for name, row in rows.items():
        ours, theirs = row.get("protectctl_s"), row.get("pgbackrest_s")
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        lines.append(
            f"{name:<30} {ours!s:>9} s {theirs!s:>9} s {ratio:>6} {mib(row.get('protectctl_repo')):>16} "
            f"{mib(row.get('pgbackrest_repo')):>16}"
        )
        if row.get("pgbackrest_detail"):
            lines.append(f"{'':<30} pgBackRest: {row['pgbackrest_detail']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
