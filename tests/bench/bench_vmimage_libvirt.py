#!/usr/bin/env python3
"""vmImage domain mode, one run: a running libvirt domain (TCG, no guest OS) on a qcow2 image,
read through `virsh backup-begin` in pull mode with checkpoints (docs/vm-images.md).

    first backup      the first sync (a full pull export: the allocated data)
    sync after 1 %    1 % of the data clusters rewritten in the running disk (qemu-io in the
                      qemu monitor, as the guest would), then a sync from the last checkpoint
    bytes read        what the sync read, against the bytes rewritten
    restore           protectctl's restore to a new qcow2, compared with a copy taken paused

libvirtd runs privately as in tests/integration/test_vmimage_libvirt.py (root, a mount
namespace). The image: three quarters random data (seeded), one quarter never written.

    python tests/bench/bench_vmimage_libvirt.py --size 64MiB     # quick
    python tests/bench/bench_vmimage_libvirt.py --size 1GiB
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

from protectctl.agent.jobs import restore, run_backup  # noqa: E402
from tests.bench.dataset import parse_size  # noqa: E402
from tests.integration import test_vmimage_libvirt as lv  # noqa: E402

C = 64 << 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64MiB", help="the image's virtual size (default 64MiB)")
    parser.add_argument("--change", type=float, default=0.01, help="fraction of clusters rewritten (default 0.01)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if lv.MISSING:
        print(f"needs {', '.join(lv.MISSING)}", file=sys.stderr)
        return 2
    size = parse_size(args.size) // C * C
    work = Path(tempfile.mkdtemp(prefix="bench-vmlibvirt-", dir="/var/tmp"))
    daemon = lv._private_libvirtd(work)
    os.environ["LIBVIRT_DEFAULT_URI"] = f"qemu:///system?socket={work}/sock/libvirt-sock"
    try:
        while subprocess.run(["virsh", "version"], capture_output=True).returncode != 0:
            if daemon.poll() is not None:
                print((work / "libvirtd.log").read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.1)
        tmp = work / "w"
        tmp.mkdir()
        image = _image(tmp, size, args.seed)
        (tmp / "vm1.xml").write_text(lv._DOMAIN.format(name="vm1", image=image))
        lv._virsh("define", str(tmp / "vm1.xml"))
        lv._virsh("start", "vm1")
        job = lv._job(tmp, image, "vm1")
        started = time.monotonic()
        first = run_backup(job, "sync")
        print(f"first backup: {time.monotonic() - started:.1f} s, read {first.bytes_read / 1e6:.1f} MB")
        rng = random.Random(args.seed)
        data_clusters = size * 3 // 4 // C
        rewritten = rng.sample(range(data_clusters), max(1, int(data_clusters * args.change)))
        for at in range(0, len(rewritten), 50):
            lv._write("vm1", *(f"write -P {rng.randrange(1, 256)} {n * C} {C}" for n in rewritten[at : at + 50]))
        started = time.monotonic()
        second = run_backup(job, "sync")
        changed = len(rewritten) * C
        print(
            f"sync after {len(rewritten)} clusters ({changed / 1e6:.1f} MB) rewritten: "
            f"{time.monotonic() - started:.1f} s, read {second.bytes_read / 1e6:.1f} MB "
            f"({second.bytes_read / changed:.2f}x the bytes rewritten)"
        )
        copy = lv._copy_paused("vm1", image, tmp / "copy.qcow2")
        started = time.monotonic()
        restore(job, "latest", target=tmp / "restored.qcow2")
        print(f"restore to qcow2: {time.monotonic() - started:.1f} s")
        lv._identical(copy, tmp / "restored.qcow2")
        print("restored image identical (qemu-img compare)")
        return 0
    finally:
        lv._virsh("destroy", "vm1", check=False)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


def _image(tmp: Path, size: int, seed: int) -> Path:
    """A qcow2 of `size`: its first three quarters random data (seeded), the rest never written."""
    seed_file = tmp / "seed.raw"
    rng = random.Random(seed)
    with open(seed_file, "wb") as out:
        for _ in range(size * 3 // 4 // (1 << 20)):
            out.write(rng.randbytes(1 << 20))
    image = tmp / "vm1.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(seed_file), str(image)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(image), str(size)], check=True)
    seed_file.unlink()
    return image


if __name__ == "__main__":
    raise SystemExit(main())
