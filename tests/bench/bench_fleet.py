"""Benchmark: `protectctl apply` time for 1 host vs N hosts over real sshd.

    python tests/bench/bench_fleet.py [--hosts 3]

Starts N+1 sshd servers on loopback aliases (tests/integration/sshd.py; needs root and
openssh-server), then times a fresh apply (agent install + config + schedules) on 1 host and
on N hosts, each from an empty state and empty host roots. The wheelhouse is built before
timing (it is cached per version). With the parallel walk, N hosts should cost well under N
times one host; on a 2-core machine the hosts' offline pip installs share the CPUs, so the
ratio grows with N here more than it would across real machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.sshd import keygen, sshd_available, start_fleet  # noqa: E402


def _policy(directory: Path, host_docs: list[str], data: Path) -> None:
    names = [d.split("metadata: {name: ")[1].split("}")[0] for d in host_docs]
    members = "\n".join(f"    - {{name: {n}, host: {n}, filesystem: {{path: {data}}}}}" for n in names)
    head = textwrap.dedent("""\
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {name: k}
        spec: {passphrase: {file: ./passphrase}}
        ---
        apiVersion: protectctl/v1
        kind: Storage
        metadata: {name: repo}
        spec: {type: local, path: ./repo, encryption: {key: k}}
        ---
        apiVersion: protectctl/v1
        kind: SLA
        metadata: {name: hourly}
        spec: {sync: every 1h, full: daily at 20:00, retention: {disk: 7d}}
        """)
    group = (
        "apiVersion: protectctl/v1\nkind: ProtectionGroup\nmetadata: {name: g}\n"
        "spec:\n  sla: hourly\n  storage: repo\n  members:\n" + members + "\n"
    )
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text("---\n".join([head, *host_docs, group]))


def _apply(policy: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(policy), "apply", "--auto-approve", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"apply failed: {proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    why = sshd_available()
    if why:
        raise SystemExit(f"cannot run: {why}")
    from protectctl.provision.agent_install import wheelhouse

    os.environ["PROTECTCTL_WHEELHOUSE"] = str(wheelhouse().path)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        base = Path(tmp)
        key = base / "client"
        servers = start_fleet(
            base / "hosts", [f"b{i}" for i in range(args.hosts + 1)], keygen(key, "bench"), first_octet=20
        )
        try:
            data = base / "data"
            data.mkdir()
            (data / "f").write_text("x")
            one = _apply_fleet(base / "one", servers[:1], key, data)
            many = _apply_fleet(base / "many", servers[1:], key, data)
        finally:
            for s in servers:
                s.stop()
    result = {
        "hosts_1_s": round(one, 2),
        f"hosts_{args.hosts}_s": round(many, 2),
        "ratio": round(many / one, 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


def _apply_fleet(policy: Path, servers: list, key: Path, data: Path) -> float:  # type: ignore[type-arg]
    _policy(policy, [s.host_doc(identity_file=key) for s in servers], data)
    return _apply(policy)


if __name__ == "__main__":
    main()
