"""vmImage domain mode without libvirt: what is asked of virsh, in which order, and what a
point records. virsh is replaced by a stand-in that answers as libvirt does; the guest agent's
path (ping, fsfreeze around the checkpoint, thaw) cannot run in the integration test (no guest
OS there), so it is pinned here.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protectctl.errors import ProviderError
from protectctl.providers.vmimage import backup, domain, libvirt
from protectctl.providers.vmimage.chunkmap import ID_SIZE, Tracked, load_tracked, save_tracked

K = 1024


class Virsh:
    """Answers virsh commands as libvirt would for a domain with (or without) a guest agent."""

    def __init__(self, *, agent: bool = True, freeze_fails: bool = False, frozen: bool = False) -> None:
        self.agent, self.freeze_fails, self.is_frozen = agent, freeze_fails, frozen
        self.calls: list[str] = []
        self.job_socket: str | None = None

    def __call__(self, *args: str, what: str) -> str:
        command = args[0]
        if command == "qemu-agent-command":
            request = args[-1]
            self.calls.append("guest-ping" if "guest-ping" in request else "fsfreeze-status")
            if not self.agent:
                raise ProviderError(f"{what}: Guest agent is not responding")
            return '{"return":"frozen"}' if self.is_frozen and "status" in request else '{"return":{}}'
        self.calls.append(command)
        if command == "domfsfreeze":
            if self.freeze_fails:
                raise ProviderError(f"{what}: unable to freeze filesystems")
            self.is_frozen = True
        elif command == "domfsthaw":
            self.is_frozen = False
        elif command == "backup-dumpxml":
            if self.job_socket is None:
                raise ProviderError(f"{what}: Domain backup job id not found: no domain backup job present")
            return f"<domainbackup mode='pull'><server transport='unix' socket='{self.job_socket}'/></domainbackup>"
        return ""


@pytest.fixture
def virsh(monkeypatch: pytest.MonkeyPatch) -> Virsh:
    fake = Virsh()
    monkeypatch.setattr(libvirt, "virsh", fake)
    return fake


def _request(tmp: Path, calls: list[str]) -> Any:
    return SimpleNamespace(state_dir=tmp, kind="sync", frozen=lambda: calls.append("frozen-callback"))


@pytest.fixture
def pulled(monkeypatch: pytest.MonkeyPatch, virsh: Virsh) -> Iterator[list[tuple[str | None, str | None]]]:
    """Pull jobs begun (incremental from, new checkpoint), recorded in virsh's call list too."""
    begun: list[tuple[str | None, str | None]] = []

    @contextlib.contextmanager
    def pull_backup(
        dom: str, disk: libvirt.Disk, *, incremental: str | None, checkpoint: str | None, owner: object
    ) -> Iterator[libvirt.PullExport]:
        virsh.calls.append("backup-begin")
        begun.append((incremental, checkpoint))
        try:
            yield libvirt.PullExport("/s", disk.target, None if incremental is None else "qemu:dirty-bitmap:backup-vda")
        finally:
            virsh.calls.append("domjobabort")

    def read_export(*args: object) -> backup.Run:
        virsh.calls.append("read")
        return backup.Run(bytearray(ID_SIZE))

    monkeypatch.setattr(libvirt, "pull_backup", pull_backup)
    monkeypatch.setattr(backup, "read_export", read_export)
    yield begun


def _read(tmp: Path, virsh: Virsh, tracked: Tracked | None = None) -> tuple[str, str]:
    disk = libvirt.Disk("vda", "/img.qcow2", "qcow2")
    info: Any = SimpleNamespace(virtual_size=64 * K)
    _run, consistency, why, _reason = domain._read(
        _request(tmp, virsh.calls), "web1", disk, ET.Element("domain"), info, 64 * K, 1, tracked, None, "cp-new"
    )
    return consistency, why


def test_the_guest_is_frozen_only_around_the_checkpoint(tmp_path: Path, virsh: Virsh, pulled: list[Any]) -> None:
    consistency, why = _read(tmp_path, virsh)
    assert consistency == "application" and "froze the filesystems" in why
    assert virsh.calls == [
        "guest-ping",
        "domfsfreeze",
        "backup-begin",  # the checkpoint and the point-in-time export, taken frozen
        "domfsthaw",  # thawed before a byte is read
        "frozen-callback",
        "read",
        "domjobabort",
    ]
    assert not virsh.is_frozen and not (tmp_path / "vmimage" / "web1.frozen").exists()


def test_without_an_agent_the_point_is_crash_consistent(tmp_path: Path, virsh: Virsh, pulled: list[Any]) -> None:
    virsh.agent = False
    consistency, why = _read(tmp_path, virsh)
    assert consistency == "crash" and "did not answer" in why
    assert "domfsfreeze" not in virsh.calls and "domfsthaw" not in virsh.calls


def test_a_freeze_that_fails_gives_a_crash_consistent_point(tmp_path: Path, virsh: Virsh, pulled: list[Any]) -> None:
    virsh.freeze_fails = True
    consistency, why = _read(tmp_path, virsh)
    assert consistency == "crash" and "could not freeze" in why and "unable to freeze" in why
    assert "backup-begin" in virsh.calls and "domfsthaw" not in virsh.calls


def test_a_guest_a_dead_run_left_frozen_is_thawed_first(tmp_path: Path, virsh: Virsh, pulled: list[Any]) -> None:
    (tmp_path / "vmimage").mkdir()
    (tmp_path / "vmimage" / "web1.frozen").touch()  # the run died between freeze and thaw
    virsh.is_frozen = True
    _read(tmp_path, virsh)
    assert virsh.calls[:4] == ["guest-ping", "fsfreeze-status", "domfsthaw", "domfsfreeze"]


def test_a_guest_someone_else_froze_is_not_thawed_by_us_first(tmp_path: Path, virsh: Virsh, pulled: list[Any]) -> None:
    virsh.is_frozen = True  # no marker of ours: not our freeze
    _read(tmp_path, virsh)
    assert virsh.calls[:2] == ["guest-ping", "domfsfreeze"]


def test_a_failed_read_ends_the_job_and_deletes_the_new_checkpoint(
    tmp_path: Path, virsh: Virsh, pulled: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> backup.Run:
        raise ProviderError("the connection to qemu-nbd failed: reset")

    monkeypatch.setattr(backup, "read_export", broken)
    with pytest.raises(ProviderError, match="qemu-nbd"):
        _read(tmp_path, virsh)
    assert virsh.calls[-2:] == ["domjobabort", "checkpoint-delete"]
    assert not virsh.is_frozen


def test_a_checkpoint_libvirt_refuses_falls_back_to_a_full_read(
    tmp_path: Path, virsh: Virsh, pulled: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = libvirt.pull_backup

    @contextlib.contextmanager
    def refusing(dom: str, disk: libvirt.Disk, *, incremental: str | None, **kw: Any) -> Iterator[libvirt.PullExport]:
        if incremental is not None:
            raise ProviderError(f"cannot begin a backup of {dom}: missing or broken bitmap 'cp-old'")
        with real(dom, disk, incremental=None, **kw) as pull:
            yield pull

    monkeypatch.setattr(libvirt, "pull_backup", refusing)
    tracked = Tracked("p1", "cp-old", "qcow2", 64 * K, 64 * K, bytes(ID_SIZE), None, "web1")
    disk = libvirt.Disk("vda", "/img.qcow2", "qcow2")
    info: Any = SimpleNamespace(virtual_size=64 * K)
    _run, _c, _w, reason = domain._read(
        _request(tmp_path, virsh.calls), "web1", disk, ET.Element("domain"), info, 64 * K, 1, tracked, None, "cp-new"
    )
    assert reason is not None and "cp-old" in reason and "every chunk was read" in reason
    assert pulled == [(None, "cp-new")]


def test_a_backup_job_left_by_a_dead_run_is_ended_and_another_one_is_refused(tmp_path: Path, virsh: Virsh) -> None:
    domain._end_leftover_job("web1")
    assert "domjobabort" not in virsh.calls  # no job
    left = tmp_path / f"{libvirt.job_prefix('web1')}abc"
    left.mkdir()
    virsh.job_socket = str(left / "nbd.sock")
    domain._end_leftover_job("web1")
    assert virsh.calls[-1] == "domjobabort" and not left.exists()
    virsh.job_socket = "/var/lib/other-tool/backup.sock"
    with pytest.raises(ProviderError, match="another backup job") as caught:
        domain._end_leftover_job("web1")
    assert "virsh domjobabort web1" in (caught.value.hint or "")


DOMAIN_XML = """<domain type='kvm' id='3'>
  <name>web1</name>
  <devices>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'><label>libvirt-x</label></seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label></seclabel>
</domain>"""


def test_the_disk_and_qemu_owner_are_found_in_the_domain_xml() -> None:
    root = ET.fromstring(DOMAIN_XML)
    assert libvirt.disk_of(root, "web1", Path("/var/lib/libvirt/images/web1.qcow2")) == libvirt.Disk(
        "vda", "/var/lib/libvirt/images/web1.qcow2", "qcow2"
    )
    assert libvirt.disk_of(root, "web1", Path("/dev/vg0/web1-data")).target == "vdb"
    with pytest.raises(ProviderError, match="has no disk /x.qcow2") as caught:
        libvirt.disk_of(root, "web1", Path("/x.qcow2"))
    assert "/dev/vg0/web1-data" in (caught.value.hint or "")
    assert libvirt.qemu_owner(root) == (64055, 994)
    assert libvirt.qemu_owner(ET.fromstring("<domain/>")) is None


def test_backup_and_checkpoint_xml() -> None:
    full = ET.fromstring(libvirt.backup_xml("vda", "/t/nbd.sock", "/t/scratch.qcow2", None))
    assert full.get("mode") == "pull" and full.find("incremental") is None
    server = full.find("server")
    assert server is not None and server.attrib == {"transport": "unix", "socket": "/t/nbd.sock"}
    inc = ET.fromstring(libvirt.backup_xml("vda", "/t/nbd.sock", "/t/scratch.qcow2", "cp1"))
    assert inc.findtext("incremental") == "cp1"
    assert inc.find("disks/disk/scratch") is not None
    cp = ET.fromstring(libvirt.checkpoint_xml("cp2", "vda"))
    assert cp.findtext("name") == "cp2"
    disk = cp.find("disks/disk")
    assert disk is not None and disk.attrib == {"name": "vda", "checkpoint": "bitmap"}


def test_a_domain_state_round_trips(tmp_path: Path) -> None:
    where = tmp_path / "web.map"
    state = Tracked("p1", "protectctl-cp-x-1", "qcow2", 64 * K, 64 * K, bytes(ID_SIZE), None, "web1")
    save_tracked(where, state)
    assert load_tracked(where) == state


def test_checkpoint_names_differ_per_repository_and_from_image_bitmaps() -> None:
    a, b = backup.checkpoint_tag("vms/web1", "r1"), backup.checkpoint_tag("vms/web1", "r2")
    assert a != b and a.startswith("protectctl-cp-")
    assert not a.startswith(backup.bitmap_tag("vms/web1", "r1"))


def test_a_pull_job_works_beside_the_image_unless_it_cannot(tmp_path: Path) -> None:
    image = tmp_path / "web1.qcow2"
    image.touch()
    assert libvirt.job_parent(str(image), "web1") == str(tmp_path)
    assert libvirt.job_parent("/dev/null", "web1") is None  # a device: the temporary directory
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    (deep / "x.qcow2").touch()
    assert libvirt.job_parent(str(deep / "x.qcow2"), "web1") is None  # the socket's path would be too long


def test_a_dead_runs_job_directories_of_this_domain_only_are_found(tmp_path: Path) -> None:
    image = tmp_path / "web1.qcow2"
    image.touch()
    mine, other = tmp_path / f"{libvirt.job_prefix('web')}x1", tmp_path / f"{libvirt.job_prefix('web-1')}x2"
    mine.mkdir()
    other.mkdir()
    assert str(mine) in libvirt.stale_job_dirs("web", str(image))
    assert str(other) not in libvirt.stale_job_dirs("web", str(image))
