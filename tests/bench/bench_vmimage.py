#!/usr/bin/env python3
"""vmImage benchmark: protectctl against restic (and a plain `qemu-img convert` copy) on one
qcow2 image, the issue's scenario (issue 17):

    first backup      protectctl run sync (a full) | restic backup IMAGE | qemu-img convert IMAGE COPY
    sync after 1 %    1 % of the clusters rewritten through qemu-nbd (random data), then the same again
    bytes read        what protectctl's sync read, against the bytes the 1 % rewrote
    restore           protectctl restore --target NEW.qcow2 | restic restore | qemu-img convert IMAGE NEW

The image is deterministic (seeded): three quarters random data, one quarter never written
(sparse). Every restore is checked with `qemu-img compare`, then deleted (an 8 GiB run peaks at
about 4 times the image's data on disk). Warm cache, like bench_backup.py.

    python tests/bench/bench_vmimage.py --size 256MiB          # quick
    python tests/bench/bench_vmimage.py --size 8GiB            # the issue's size

Targets (issue 17): sync <= 0.1x restic, bytes read <= 3x bytes changed, first backup <= 1.0x restic.
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
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from tests.bench.dataset import parse_size  # noqa: E402

PASSPHRASE = "protectctl-bench-passphrase-0123456789"
CLUSTER = 64 << 10

POLICY = """\
apiVersion: protectctl/v1
kind: Host
metadata: {{name: local}}
spec: {{address: local, scheduler: systemd, root: ./root}}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {{name: k}}
spec: {{passphrase: {{env: PROTECTCTL_PASSPHRASE}}}}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {{name: primary}}
spec: {{type: local, path: ./repo, encryption: {{key: k}}}}
---
apiVersion: protectctl/v1
kind: SLA
metadata: {{name: t}}
spec: {{sync: every 15m, full: daily at 20:00, retention: {{disk: 14d}}}}
---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: vms}}
spec:
  sla: t
  storage: primary
  members:
    - {{name: web1, host: local, vmImage: {{path: {image}}}}}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds, done.stdout


def build_image(path: Path, size: int, seed: int) -> None:
    """A qcow2 of `size`: 3/4 seeded random data in 4 MiB runs, 1/4 never written."""
    rng = random.Random(seed)
    raw = path.with_suffix(".raw")
    block = 4 << 20
    with open(raw, "wb") as out:
        out.truncate(size)
        for offset in range(0, size, block):
            if rng.random() < 0.75:
                out.seek(offset)
                out.write(rng.randbytes(min(block, size - offset)))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


def rewrite_clusters(image: Path, fraction: float, seed: int, work: Path) -> int:
    """Rewrite `fraction` of the clusters with random data through a read-write qemu-nbd export
    (the image's persistent bitmaps track the writes, as under a running guest); returns bytes written."""
    rng = random.Random(seed + 1)
    size = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image)], check=True, capture_output=True, text=True
        ).stdout
    )["virtual-size"]
    count = max(1, int(size // CLUSTER * fraction))
    clusters = sorted(rng.sample(range(size // CLUSTER), count))
    data_dir = work / "writes"
    data_dir.mkdir(exist_ok=True)
    commands: list[str] = []
    for n, cluster in enumerate(clusters):
        src = data_dir / f"{n}"
        src.write_bytes(rng.randbytes(CLUSTER))
        commands += ["-c", f"write -q -s {src} {cluster * CLUSTER} {CLUSTER}"]
    sock = work / "nbd.sock"
    server = subprocess.Popen(["qemu-nbd", "--persistent", "-f", "qcow2", "-k", str(sock), str(image)])
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        for at in range(0, len(commands), 2000):  # argv stays reasonable
            done = subprocess.run(
                ["qemu-io", "-f", "raw", *commands[at : at + 2000], f"nbd+unix:///?socket={sock}"],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"qemu-io failed: {done.stderr.strip()[-500:]}")
    finally:
        server.terminate()  # a clean exit stores the bitmaps (a killed server leaves them in use)
        server.wait()
    shutil.rmtree(data_dir)
    return count * CLUSTER


def _restic_added(out: str) -> int | None:
    for line in reversed(out.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("message_type") == "summary":
            return int(doc.get("data_added_packed") or doc.get("data_added") or 0)
    return None


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB", help="the image's virtual size (default 1GiB; the issue: 8GiB)")
    parser.add_argument("--change", type=float, default=0.01, help="fraction of clusters rewritten (default 0.01)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    for tool in ("qemu-img", "qemu-io", "qemu-nbd", "restic", "protectctl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-vmimage-", dir=args.workdir))
    env = {
        **os.environ,
        "PROTECTCTL_PASSPHRASE": PASSPHRASE,
        "RESTIC_PASSWORD": PASSPHRASE,
        "RESTIC_REPOSITORY": str(work / "restic"),
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    results: dict[str, Any] = {"size": size, "change": args.change, "load_start": os.getloadavg()}
    try:
        image = work / "web1.qcow2"
        log(f"building a {args.size} image in {work}")
        build_image(image, size, args.seed)
        (work / "policy").mkdir()
        (work / "policy" / "vms.yaml").write_text(POLICY.format(image=image))
        pctl = ["protectctl", "-C", str(work / "policy")]
        timed([*pctl, "apply", "--auto-approve"], env)
        timed(["restic", "init", "--repository-version", "2"], env)
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm the cache for all

        restic_backup = ["restic", "backup", "--json", "--quiet", "--compression", "auto", "--host", "b", str(image)]
        log("first backup")
        results["first"] = {
            "protectctl": timed([*pctl, "run", "sync", "vms"], env)[0],
            "restic": timed(restic_backup, env)[0],
            "qemu-img convert": timed(
                ["qemu-img", "convert", "-O", "qcow2", str(image), str(work / "copy.qcow2")], env
            )[0],
        }
        (work / "copy.qcow2").unlink()  # disk space: every copy goes as soon as it is measured
        log(f"first backup: {results['first']}")
        log(f"rewriting {args.change:.0%} of the clusters through qemu-nbd")
        changed = rewrite_clusters(image, args.change, args.seed, work)
        log("sync")
        seconds, out = timed([*pctl, "run", "sync", "vms", "--json"], env)
        point = json.loads(out)["results"][0]
        restic_seconds, restic_out = timed(restic_backup, env)
        results["sync"] = {"protectctl": seconds, "restic": restic_seconds}
        # stored by the sync: fixed cluster-aligned chunks (protectctl) against restic's content-defined ones
        results["bytes"] = {
            "changed": changed,
            "read": point["bytes_read"],
            "added": point["bytes_added"],
            "restic_added": _restic_added(restic_out),
        }
        log(f"sync: {results['sync']}, bytes: {results['bytes']}")
        log("restore")
        target = work / "restored.qcow2"
        restic_target = work / "restic-restore"
        restored = {
            "protectctl": timed([*pctl, "restore", "vms/web1", "--to-time", "latest", "--target", str(target)], env)[0]
        }
        identical = same(image, target)
        target.unlink()
        restored["restic"] = timed(["restic", "restore", "latest", "--quiet", "--target", str(restic_target)], env)[0]
        identical = identical and same(image, restic_target / str(image).lstrip("/"))
        shutil.rmtree(restic_target)
        restored["qemu-img convert"] = timed(
            ["qemu-img", "convert", "-O", "qcow2", str(image), str(work / "back.qcow2")], env
        )[0]
        (work / "back.qcow2").unlink()
        results["restore"] = restored
        results["restore_identical"] = identical
        results["load_end"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(render(results))
    print(json.dumps(results, indent=2))
    return 0 if results.get("restore_identical") else 1


def render(r: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}x" if b else "-"

    lines = [
        f"image {r['size'] / 2**30:.2f} GiB, {r['change']:.0%} of clusters rewritten;"
        f" load {r['load_start'][0]:.1f} -> {r.get('load_end', [0])[0]:.1f}",
        "| phase | protectctl | restic | qemu-img convert | protectctl/restic |",
        "|---|---|---|---|---|",
    ]
    for phase in ("first", "sync", "restore"):
        row = r[phase]
        convert = f"{row['qemu-img convert']:.2f} s" if "qemu-img convert" in row else "-"
        lines.append(
            f"| {phase} | {row['protectctl']:.2f} s | {row['restic']:.2f} s | {convert} |"
            f" {ratio(row['protectctl'], row['restic'])} |"
        )
    b = r["bytes"]
    lines.append(f"| bytes read / changed | {b['read']} / {b['changed']} | | | {ratio(b['read'], b['changed'])} |")
    if b.get("restic_added"):
        lines.append(
            f"| bytes stored by the sync (fixed 64 KiB chunks / restic CDC) | {b['added']} |"
            f" {b['restic_added']} | | {ratio(b['added'], b['restic_added'])} |"
        )
    lines.append(f"restores identical (qemu-img compare): {r['restore_identical']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
