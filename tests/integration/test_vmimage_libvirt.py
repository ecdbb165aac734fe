"""vmImage domain mode against a real libvirtd and a running qemu (TCG, no guest OS).

libvirtd runs once per module in a private mount namespace (`unshare --mount`): its config,
/run, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are this module's directories,
its socket a private Unix socket (no TCP), and qemu runs as root without a security driver;
nothing on the machine is changed. The "guest" writes its disk through the qemu monitor
(`qemu-io` on the running drive), as a guest would; a copy of the image taken with the domain
paused is what each point must restore to (`qemu-img compare`).

No guest agent answers here (no guest OS): every point is crash-consistent; the
application-consistent path (guest-ping, domfsfreeze/domfsthaw) is covered by
tests/unit/test_vmimage_domain.py with a stand-in for virsh.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protectctl.agent.jobs import BackupResult, RetentionSpec, SourceJob, list_points, restore, run_backup
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage

NEEDED = ("libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "nbdinfo", "unshare")
MISSING = [tool for tool in NEEDED if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{', '.join(MISSING)} not installed (libvirt: libvirt-daemon, libvirt-daemon-driver-qemu, "
    "libvirt-clients, qemu-system-x86; .ci/run installs them): domain mode (virsh backup-begin with "
    "checkpoints) stays untested here",
)

PASS = b"vm pass"
C = 64 << 10
SIZE = 64 << 20
DRIVE = "virtio-disk0/virtio-backend"  # the running disk's block backend, for qemu-io in the monitor

_START = """set -e
mount --make-rprivate /
mount --bind {d}/etc /etc/libvirt
mount -t tmpfs tmpfs /run
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind {d}/lib /var/lib/libvirt
mount --bind {d}/cache /var/cache/libvirt
mount --bind {d}/log /var/log/libvirt
mount --bind {d}/passwd /etc/passwd
mount --bind {d}/group /etc/group
# only qemu-system-x86_64 on PATH: libvirt probes each emulator it finds (about 4 s each)
PATH={d}/bin:/usr/sbin:/sbin exec /usr/sbin/libvirtd --config {d}/etc/libvirtd.conf --pid-file {d}/libvirtd.pid
"""


def _private_libvirtd(d: Path) -> subprocess.Popen[bytes]:
    for sub in ("etc", "lib", "cache", "log", "bin", "sock"):
        (d / sub).mkdir()
    (d / "etc" / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{d}/sock"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\nlog_outputs = "3:stderr"\n'
    )
    # no libvirt-qemu user on a machine without libvirt-daemon-system: qemu runs as root here
    (d / "etc" / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\n'
    )
    passwd, group = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
    if "\nlibvirt-qemu:" not in "\n" + passwd:  # libvirt resolves its built-in user before qemu.conf
        passwd += "libvirt-qemu:x:0:0:libvirt:/nonexistent:/usr/sbin/nologin\n"
    if "\nlibvirt-qemu:" not in "\n" + group:
        group += "libvirt-qemu:x:0:\n"
    (d / "passwd").write_text(passwd)
    (d / "group").write_text(group)
    (d / "bin" / "qemu-system-x86_64").symlink_to(str(shutil.which("qemu-system-x86_64")))
    (d / "start.sh").write_text(_START.format(d=d))
    return subprocess.Popen(
        ["unshare", "--mount", "sh", str(d / "start.sh")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "libvirtd.log", "wb"),  # noqa: SIM115 (closed with the process)
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a private mount namespace here (unshare --mount): libvirtd cannot run privately")
    d = tmp_path_factory.mktemp("libvirt")
    daemon = _private_libvirtd(d)
    uri = f"qemu:///system?socket={d}/sock/libvirt-sock"
    before = os.environ.get("LIBVIRT_DEFAULT_URI")
    os.environ["LIBVIRT_DEFAULT_URI"] = uri
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(["virsh", "version"], capture_output=True).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("libvirtd did not start: " + (d / "libvirtd.log").read_text()[-2000:])
            time.sleep(0.1)
        yield d
    finally:
        names = _virsh("list", "--all", "--name", check=False).split()
        stopping = [
            subprocess.Popen(["virsh", "-q", "destroy", n], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in names
        ]
        for stop in stopping:  # together: each takes about a second
            stop.wait()
        for name in names:
            _virsh("undefine", "--checkpoints-metadata", name, check=False)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if before is None:
            os.environ.pop("LIBVIRT_DEFAULT_URI", None)
        else:
            os.environ["LIBVIRT_DEFAULT_URI"] = before


def _virsh(*args: str, check: bool = True) -> str:
    done = subprocess.run(["virsh", "--quiet", *args], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"
    return done.stdout


_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _domain(tmp: Path, name: str) -> Path:
    """A defined, running domain on a new 64 MiB qcow2 image (no guest OS: its BIOS finds nothing to boot)."""
    image = tmp / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE)], check=True)
    (tmp / f"{name}.xml").write_text(_DOMAIN.format(name=name, image=image))
    _virsh("define", str(tmp / f"{name}.xml"))
    _virsh("start", name)
    return image


def _qmp(domain: str, command: str, **arguments: object) -> None:
    _virsh("qemu-monitor-command", domain, json.dumps({"execute": command, "arguments": arguments}))


def _write(domain: str, *commands: str) -> None:
    """Write the running disk as the guest would."""
    for command in commands:
        out = _virsh("qemu-monitor-command", domain, "--hmp", f'qemu-io -d {DRIVE} "{command}"')
        assert "error" not in out.lower(), out


def _cp(image: Path, to: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(image), str(to)], check=True)
    return to


def _copy_paused(domain: str, image: Path, to: Path) -> Path:
    _virsh("suspend", domain)
    try:
        return _cp(image, to)
    finally:
        _virsh("resume", domain)


def _job(tmp: Path, image: Path, domain: str) -> SourceJob:
    storage = LocalStorage(tmp / "repo")
    if not Repository.exists(storage):
        Repository.init(storage, PASS, kdf_n=2**10)
    return SourceJob(
        source=f"vms/{domain}",
        provider="vmImage",
        spec={"path": str(image), "domain": domain},
        storage=storage,  # type: ignore[call-arg]
        passphrase=lambda: PASS,
        state_dir=tmp / "state",
        host="kvm1",
        retention=RetentionSpec(keep_within_s=86400),
    )


def _extra(job: SourceJob, result: BackupResult) -> dict[str, object]:
    point = next(p for p in list_points(job.storage, PASS) if p.id == result.point_id)
    return dict(point.extra)


def _ours(domain: str) -> list[str]:
    return [c for c in _virsh("checkpoint-list", "--name", domain).split() if c.startswith("protectctl-")]


def _identical(a: Path, b: Path) -> None:
    done = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _restores(tmp: Path, job: SourceJob, copies: list[tuple[str, Path]]) -> None:
    points = {p.id: p for p in list_points(job.storage, PASS)}
    for n, (point_id, copy) in enumerate(copies):
        out = tmp / f"restored{n}.qcow2"
        assert restore(job, points[point_id].time, target=out).point_id == point_id
        _identical(copy, out)


def test_a_running_domain_is_read_through_checkpoints(libvirtd: Path, tmp_path: Path) -> None:
    image = _domain(tmp_path, "web1")
    _write("web1", f"write -P 0x11 0 {1 << 20}", f"write -P 0x5a {20 << 20} {C}")
    job = _job(tmp_path, image, "web1")
    copies: list[tuple[str, Path]] = []

    first = run_backup(job, "sync")
    extra = _extra(job, first)
    assert first.ok and first.bytes_read == (1 << 20) + C  # the allocated data only
    assert "first backup" in str(extra["read_all_reason"]) and extra["tracking"] == "checkpoint"
    assert extra["consistency"] == "crash" and "agent did not answer" in str(extra["consistency_reason"])
    assert _ours("web1") == [extra["checkpoint"]]
    copies.append((first.point_id, _copy_paused("web1", image, tmp_path / "at0.qcow2")))

    _write("web1", f"write -P 0x22 {3 << 20} {C}", f"write -P 0x33 {(40 << 20) + 4096} 4096", f"write -z 0 {C}")
    second = run_backup(job, "sync")
    extra = _extra(job, second)
    assert extra["read_all_reason"] is None
    assert second.bytes_read == 2 * C  # the two rewritten clusters; the zeroed one is mapped, not read
    assert _ours("web1") == [extra["checkpoint"]]  # the previous point's checkpoint is deleted
    copies.append((second.point_id, _copy_paused("web1", image, tmp_path / "at1.qcow2")))

    # the checkpoint deleted behind our back: the next sync reads everything and says why
    (gone,) = _ours("web1")
    _virsh("checkpoint-delete", "web1", gone)
    _write("web1", f"write -P 0x44 {5 << 20} {C}")
    third = run_backup(job, "sync")
    reason = str(_extra(job, third)["read_all_reason"])
    assert gone in reason and "gone from the domain" in reason
    assert third.bytes_read == (1 << 20) + 3 * C  # all allocated data: 15 + 4 clusters (cluster 0 is zero now)
    copies.append((third.point_id, _copy_paused("web1", image, tmp_path / "at2.qcow2")))

    # a run that died mid-read left its backup job and its new checkpoint: the next run ends the
    # job, deletes the checkpoint, and still reads from the last point's checkpoint
    (followed,) = _ours("web1")
    stray = tmp_path / "stray"
    stray.mkdir()
    left = Path(tempfile.gettempdir()) / f"protectctl-vmbackup-web1@test{os.getpid()}"
    left.mkdir()
    (stray / "b.xml").write_text(
        f"<domainbackup mode='pull'><incremental>{followed}</incremental>"
        f"<server transport='unix' socket='{left}/nbd.sock'/>"
        f"<disks><disk name='vda' backup='yes' type='file'><scratch file='{left}/s.qcow2'/></disk></disks>"
        "</domainbackup>"
    )
    (stray / "c.xml").write_text(
        f"<domaincheckpoint><name>{followed}-x</name><disks><disk name='vda' checkpoint='bitmap'/></disks>"
        "</domaincheckpoint>"
    )
    _virsh("backup-begin", "web1", str(stray / "b.xml"), str(stray / "c.xml"))
    _write("web1", f"write -P 0x55 {7 << 20} {C}")
    fourth = run_backup(job, "sync")
    extra = _extra(job, fourth)
    assert extra["read_all_reason"] is None and fourth.bytes_read == C
    assert _ours("web1") == [extra["checkpoint"]] and not left.exists()
    assert "Backup" not in _virsh("domjobinfo", "web1")
    copies.append((fourth.point_id, _copy_paused("web1", image, tmp_path / "at3.qcow2")))

    # the checkpoint's bitmap lost from the running disk (libvirt still lists the checkpoint, as
    # after qemu was killed and the domain restarted): libvirt refuses it, the sync reads all
    (followed,) = _ours("web1")
    blocks = json.loads(_virsh("qemu-monitor-command", "web1", '{"execute":"query-block"}'))["return"]
    node = next(b["inserted"]["node-name"] for b in blocks if b.get("qdev", "").endswith("virtio-disk0/virtio-backend"))
    _qmp("web1", "block-dirty-bitmap-remove", node=node, name=followed)
    _write("web1", f"write -P 0x66 {9 << 20} {C}")
    fifth = run_backup(job, "sync")
    reason = str(_extra(job, fifth)["read_all_reason"])
    assert "libvirt could not back up from the checkpoint" in reason and followed in reason
    assert fifth.bytes_read == (1 << 20) + 5 * C
    assert len(_ours("web1")) == 1
    copies.append((fifth.point_id, _copy_paused("web1", image, tmp_path / "at4.qcow2")))

    _restores(tmp_path, job, copies)


def test_a_shut_off_domain_falls_back_to_its_image_file(libvirtd: Path, tmp_path: Path) -> None:
    image = _domain(tmp_path, "db1")
    _write("db1", f"write -P 0x61 0 {C}")
    job = _job(tmp_path, image, "db1")
    copies: list[tuple[str, Path]] = []
    first = run_backup(job, "sync")
    copies.append((first.point_id, _copy_paused("db1", image, tmp_path / "at0.qcow2")))
    _write("db1", f"write -P 0x62 {2 << 20} {C}")
    _virsh("destroy", "db1")  # qemu stops cleanly (SIGTERM): the checkpoint's bitmap is stored in the image

    second = run_backup(job, "sync")
    extra = _extra(job, second)
    assert "db1 was shut off" in str(extra["consistency_reason"]) and extra["tracking"] == "bitmap"
    assert extra["read_all_reason"] is None and second.bytes_read == C  # from the checkpoint's own bitmap
    assert _ours("db1") == []  # its checkpoint was forgotten once the image's bitmap took over
    copies.append((second.point_id, _cp(image, tmp_path / "at1.qcow2")))

    _virsh("start", "db1")
    _write("db1", f"write -P 0x63 {4 << 20} {C}")
    third = run_backup(job, "sync")
    reason = str(_extra(job, third)["read_all_reason"])
    assert "domain was shut off" in reason and third.bytes_read == 3 * C
    copies.append((third.point_id, _copy_paused("db1", image, tmp_path / "at2.qcow2")))
    _restores(tmp_path, job, copies)
