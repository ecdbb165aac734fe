"""vmImage end to end with real qemu tools: a small qcow2 written with qemu-io between syncs.

Each sync must read exactly the clusters written since the last point (the dirty bitmap),
a bitmap removed behind the provider's back makes the next sync read everything and say why,
a full finds changes the bitmap missed, and every point restores to an image that
`qemu-img compare` finds identical to a copy taken at that point. libvirt domain mode:
test_vmimage_libvirt.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from protectctl.agent.jobs import BackupResult, RetentionSpec, SourceJob, list_points, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import ProviderError, RestoreError

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")),
    reason="needs qemu-utils and libnbd-bin (.ci/run installs them)",
)

PASS = b"vm pass"
C = 64 << 10  # the qcow2 cluster and chunk size
SIZE = 32 << 20


def _job(tmp: Path, image: Path, source: str = "vms/web1") -> SourceJob:
    storage = LocalStorage(tmp / "repo")
    if not Repository.exists(storage):
        Repository.init(storage, PASS, kdf_n=2**10)
    return SourceJob(
        source=source,
        provider="vmImage",
        spec={"path": str(image)},
        storage=storage,  # type: ignore[call-arg]
        passphrase=lambda: PASS,
        state_dir=tmp / "state",
        host="kvm1",
        retention=RetentionSpec(keep_within_s=86400),
    )


def _io(image: Path | str, *commands: str, fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


def _bitmaps(image: Path) -> list[str]:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image)], check=True, capture_output=True, text=True
        ).stdout
    )
    return [b["name"] for b in info["format-specific"]["data"].get("bitmaps", [])]


def _copy(image: Path, to: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(image), str(to)], check=True)
    return to


def _identical(a: Path, b: Path) -> None:
    done = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _extra(job: SourceJob, result: BackupResult) -> dict[str, object]:
    point = next(p for p in list_points(job.storage, PASS) if p.id == result.point_id)
    return dict(point.extra)


def test_qcow2_syncs_read_only_dirty_clusters_and_every_point_restores(tmp_path: Path) -> None:
    image = tmp_path / "web1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE)], check=True)
    _io(image, f"write -P 0x11 0 {2 << 20}", f"write -P 0x5a {20 << 20} {C}")
    image.chmod(0o640)
    job = _job(tmp_path, image)
    copies: list[tuple[str, Path]] = []

    first = run_backup(job, "sync")
    assert first.ok and first.bytes_read == (2 << 20) + C  # allocated data only: the zeros are never read
    assert "first backup" in str(_extra(job, first)["read_all_reason"])
    copies.append((first.point_id, _copy(image, tmp_path / "at0.qcow2")))

    rng = random.Random(17)  # "the guest": random clusters rewritten, one zeroed
    written = sorted(rng.sample(range(SIZE // C), 12))
    _io(image, *(f"write -P {0x20 + i} {n * C} {C}" for i, n in enumerate(written)), f"write -z {20 << 20} {C}")
    second = run_backup(job, "sync")
    extra = _extra(job, second)
    assert extra["read_all_reason"] is None and extra["tracking"] == "bitmap"
    dirty_data = [n for n in written if n != (20 << 20) // C]
    assert second.bytes_read == len(dirty_data) * C  # exactly the rewritten clusters (the zeroed one is mapped)
    assert len([b for b in _bitmaps(image) if b.startswith("protectctl-")]) == 1  # rotated, old one removed
    copies.append((second.point_id, _copy(image, tmp_path / "at1.qcow2")))

    # a bitmap removed behind the provider's back: the next sync reads all and says why
    (ours,) = [b for b in _bitmaps(image) if b.startswith("protectctl-")]
    subprocess.run(["qemu-img", "bitmap", "--remove", str(image), ours], check=True)
    _io(image, f"write -P 0x77 {(8 << 20) + C} {C}")
    third = run_backup(job, "sync")
    reason = str(_extra(job, third)["read_all_reason"])
    assert "gone from the image" in reason and ours in reason
    assert third.bytes_read > 2 << 20  # everything allocated was read
    copies.append((third.point_id, _copy(image, tmp_path / "at2.qcow2")))

    # writes the bitmap did not see (tracking disabled meanwhile): a sync trusts it, a full finds them
    (ours,) = [b for b in _bitmaps(image) if b.startswith("protectctl-")]
    subprocess.run(["qemu-img", "bitmap", "--disable", str(image), ours], check=True)
    _io(image, f"write -P 0x66 {3 << 20} {C}")
    subprocess.run(["qemu-img", "bitmap", "--enable", str(image), ours], check=True)
    full = run_backup(job, "full")
    assert _extra(job, full)["silent_changes"] == 1
    copies.append((full.point_id, _copy(image, tmp_path / "at3.qcow2")))

    points = {p.id: p for p in list_points(job.storage, PASS)}
    for n, (point_id, copy) in enumerate(copies):
        out = tmp_path / f"restored{n}.qcow2"
        result = restore(job, points[point_id].time, target=out)
        assert result.point_id == point_id
        _identical(copy, out)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)], check=True, capture_output=True, text=True
        ).stdout
    )
    assert info["actual-size"] < SIZE // 2 and info["cluster-size"] == C  # sparse stays sparse in qcow2 too
    assert out.stat().st_mode & 0o777 == 0o640  # the image's mode (and owner) come back
    raw = tmp_path / "restored.raw"
    restore(job, "latest", target=raw)
    _identical(image, raw)
    assert raw.stat().st_blocks * 512 < SIZE // 2  # sparse stays sparse

    with pytest.raises(RestoreError, match="exists"):
        restore(job, "latest", target=raw)
    with pytest.raises(RestoreError, match="--path inside an image"):
        restore(job, "latest", target=tmp_path / "x.qcow2", subpaths=["etc/hosts"])


def _wait_listening(sock: Path) -> None:
    for _ in range(1000):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(sock))
            return
        time.sleep(0.01)
    raise AssertionError(f"qemu-nbd never listened on {sock}")


class _Guest:
    """A writer through a read-write qemu-nbd export, as a running guest writes its disk: qemu
    keeps the image's persistent bitmaps while it runs and stores them when it exits cleanly."""

    def __init__(self, image: Path, sock: Path) -> None:
        self.sock = sock
        self.server = subprocess.Popen(
            ["qemu-nbd", "--persistent", "-f", "qcow2", "-k", str(sock), str(image)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(sock)
        except BaseException:
            self.stop(crash=True)
            raise

    def __enter__(self) -> _Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server.poll() is None:  # a failed step: never leave qemu-nbd holding the image
            self.stop(crash=True)

    def write(self, *commands: str) -> None:
        _io(f"nbd+unix:///?socket={self.sock}", *commands, fmt="raw")

    def stop(self, *, crash: bool) -> None:
        if crash:
            self.server.kill()
        else:
            self.server.terminate()
        self.server.wait()


def test_writes_through_qemu_nbd_are_tracked_and_a_crashed_writer_is_detected(tmp_path: Path) -> None:
    image = tmp_path / "app1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(8 << 20)], check=True)
    _io(image, f"write -P 0x31 0 {1 << 20}")
    job = _job(tmp_path, image, "vms/app1")
    assert run_backup(job, "sync").ok

    with _Guest(image, tmp_path / "g1") as guest:
        guest.write(f"write -P 0x41 {2 << 20} {C}", f"write -P 0x42 {5 << 20} {2 * C}")
        guest.stop(crash=False)
    clean = run_backup(job, "sync")
    assert _extra(job, clean)["read_all_reason"] is None and clean.bytes_read == 3 * C
    at_clean = _copy(image, tmp_path / "clean.qcow2")

    with _Guest(image, tmp_path / "g2") as guest:
        guest.write(f"write -P 0x43 {7 << 20} {C}")
        guest.stop(crash=True)  # the bitmap is left "in-use": what it holds cannot be trusted
    after_crash = run_backup(job, "sync")
    reason = str(_extra(job, after_crash)["read_all_reason"])
    assert "in-use" in reason and after_crash.bytes_read == (1 << 20) + 4 * C
    restore(job, "latest", target=tmp_path / "crash.qcow2")
    _identical(image, tmp_path / "crash.qcow2")
    points = list_points(job.storage, PASS)
    restore(job, next(p for p in points if p.id == clean.point_id).time, target=tmp_path / "r-clean.qcow2")
    _identical(at_clean, tmp_path / "r-clean.qcow2")
    # and the sync after that trusts its fresh bitmap again
    _io(image, f"write -P 0x44 {6 << 20} {C}")
    again = run_backup(job, "sync")
    assert _extra(job, again)["read_all_reason"] is None and again.bytes_read == C


def test_a_run_that_saved_its_point_but_not_its_state_loses_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "db2.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(8 << 20)], check=True)
    _io(image, f"write -P 0x51 0 {C}")
    job = _job(tmp_path, image, "vms/db2")
    assert run_backup(job, "sync").ok
    _io(image, f"write -P 0x52 {2 << 20} {C}")
    with monkeypatch.context() as patch:  # the point is saved, then the agent dies: no state, no rotation
        patch.setattr("protectctl.providers.vmimage.backup._finish", lambda *args: None)
        assert run_backup(job, "sync").ok
    assert len([b for b in _bitmaps(image) if b.startswith("protectctl-")]) == 2
    _io(image, f"write -P 0x53 {4 << 20} {C}")
    after = run_backup(job, "sync")
    assert _extra(job, after)["read_all_reason"] is None
    assert after.bytes_read == 2 * C  # what the recorded bitmap holds: both writes since the state's point
    assert len([b for b in _bitmaps(image) if b.startswith("protectctl-")]) == 1  # the leftover is gone
    restore(job, "latest", target=tmp_path / "db2-restored.qcow2")
    _identical(image, tmp_path / "db2-restored.qcow2")


def test_raw_images_stay_sparse_and_store_only_new_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "db1.img"
    with open(image, "wb") as f:
        f.truncate(SIZE)
        f.seek(C)
        f.write(b"\x01" * (3 * C))
        f.seek(SIZE - 100)
        f.write(b"tail")
    job = _job(tmp_path, image, "vms/db1")
    first = run_backup(job, "sync")
    assert first.ok and first.bytes_read <= 5 * C  # holes are not read
    with open(image, "r+b") as f:
        f.seek(2 * C)
        f.write(b"\x02" * 10)
    second = run_backup(job, "sync")
    extra = _extra(job, second)
    assert extra["tracking"] == "identity" and "raw image" in str(extra["read_all_reason"])
    assert extra["chunks_new"] == 1
    # an image untouched since the last read is not read again (no settling delay here: the
    # test's writes and reads share a second)
    monkeypatch.setattr("protectctl.providers.vmimage.backup._SETTLED_NS", 0)
    untouched = run_backup(job, "sync")
    assert untouched.bytes_read == 0 and _extra(job, untouched)["read_all_reason"] is None
    out = tmp_path / "restored.img"
    restore(job, "latest", target=out)
    assert out.read_bytes() == image.read_bytes()
    assert out.stat().st_blocks * 512 <= 8 * C

    # the guest writes a qcow2 header at the start of its raw disk: the image is not taken for one
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "hdr.qcow2"), "1M"], check=True)
    with open(image, "r+b") as f:
        f.write((tmp_path / "hdr.qcow2").read_bytes()[:512])
    with pytest.raises(ProviderError, match="was a raw image at the last backup and now reads as qcow2") as caught:
        run_backup(job, "sync")
    assert "format: raw" in (caught.value.hint or "")
    pinned = dataclasses.replace(job, spec={"path": str(image), "format": "raw"})
    assert run_backup(pinned, "sync").ok


def test_an_image_in_use_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    image = tmp_path / "busy.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "4M"], check=True)
    sock = tmp_path / "s"
    server = subprocess.Popen(
        ["qemu-nbd", "--persistent", "-f", "qcow2", "-k", str(sock), str(image)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(sock)
        with pytest.raises(ProviderError, match="another process|lock") as caught:
            run_backup(_job(tmp_path, image, "vms/busy"), "sync")
        assert "in use" in (caught.value.hint or "")
    finally:
        server.terminate()
        server.wait()


def test_the_cli_end_to_end(tmp_path: Path) -> None:
    """apply, run sync, restore --target NEW.qcow2 (a file, not a directory) through the real CLI."""
    import os

    from tests.bench.bench_vmimage import POLICY

    image = tmp_path / "web1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(8 << 20)], check=True)
    _io(image, f"write -P 0x61 0 {C}")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "vms.yaml").write_text(POLICY.format(image="../web1.qcow2"))
    env = {**os.environ, "PROTECTCTL_PASSPHRASE": "cli passphrase"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            ["protectctl", "-C", str(tmp_path / "policy"), *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    cli("apply", "--auto-approve")
    (result,) = json.loads(cli("run", "sync", "vms", "--json"))["results"]
    assert result["ok"] and result["bytes_read"] == C
    cli("restore", "vms/web1", "--to-time", "latest", "--target", str(tmp_path / "restored.qcow2"))
    _identical(image, tmp_path / "restored.qcow2")
    refused = subprocess.run(
        [
            "protectctl",
            "-C",
            str(tmp_path / "policy"),
            "restore",
            "vms/web1",
            "--to-time",
            "latest",
            "--target",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "give the path of the new image file" in refused.stderr
    assert "Traceback" not in refused.stderr
