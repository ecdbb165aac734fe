"""What vmImage asks of libvirt, through `virsh` only: a domain's state and disks, its
checkpoints, a pull-mode backup job (`backup-begin`, `backup-dumpxml`, `domjobabort`) and the
guest agent (`guest-ping`, `domfsfreeze`/`domfsthaw`).

Every command is an argument list run by qemu.run (no shell, a timeout, stderr as a one-line
ProviderError). virsh connects as it always does: `LIBVIRT_DEFAULT_URI` or the host's default
(`qemu:///system` for root). No secret is involved.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protectctl.errors import ProviderError
from protectctl.providers.vmimage import qemu

BACKUP_DIR_PREFIX = "protectctl-vmbackup-"  # a pull job whose socket lies in such a directory is ours
_AGENT_TIMEOUT_S = 5


def virsh(*args: str, what: str) -> str:
    qemu.need("virsh", "libvirt-clients")
    out: str = qemu.run(["virsh", "--quiet", *args], what)
    return out


@dataclass(frozen=True, slots=True)
class Disk:
    target: str  # "vda": the disk's name in checkpoint and backup XML, and the NBD export's name
    source: str
    driver: str  # the image format libvirt opens it as ("qcow2", "raw")


def state(domain: str) -> str:
    """ "running", "paused", "shut off", ... (a ProviderError when libvirt has no such domain)."""
    return virsh("domstate", "--", domain, what=f"cannot find the libvirt domain {domain}").strip()


def running(state_: str) -> bool:
    """A domain whose qemu process is up (a backup job can run on it)."""
    return state_ in ("running", "paused", "idle", "in shutdown", "pmsuspended", "blocked")


def live_xml(domain: str) -> ET.Element:
    text = virsh("dumpxml", "--", domain, what=f"cannot read the libvirt domain {domain}")
    try:
        return ET.fromstring(text)
    except ET.ParseError as err:
        raise ProviderError(
            f"cannot read the libvirt domain {domain}: virsh said something unexpected ({err})"
        ) from err


def disk_of(root: ET.Element, domain: str, path: Path) -> Disk:
    """The domain's disk whose source is `path` (compared as resolved paths)."""
    wanted = os.path.realpath(path)
    found: list[str] = []
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        name = None if source is None else source.get("file") or source.get("dev")
        if name is None or target is None or target.get("dev") is None:
            continue
        found.append(name)
        if os.path.realpath(name) == wanted:
            driver = disk.find("driver")
            return Disk(str(target.get("dev")), name, (driver.get("type") if driver is not None else None) or "raw")
    raise ProviderError(
        f"the libvirt domain {domain} has no disk {path}",
        hint=f"its disks: {', '.join(found) or 'none'}; `path` must name one of them",
    )


def qemu_owner(root: ET.Element) -> tuple[int, int] | None:
    """The uid and gid the domain's qemu runs as (its DAC label, "+64055:+64055"), when given."""
    for label in root.findall("./seclabel[@model='dac']/label"):
        uid, _, gid = (label.text or "").partition(":")
        with contextlib.suppress(ValueError):
            return int(uid.lstrip("+")), int(gid.lstrip("+"))
    return None


def checkpoints(domain: str) -> list[str]:
    text = virsh("checkpoint-list", "--name", "--", domain, what=f"cannot list the checkpoints of {domain}")
    return [line.strip() for line in text.splitlines() if line.strip()]


def checkpoint_delete(domain: str, name: str, *, metadata_only: bool = False) -> None:
    """Delete a checkpoint (and its bitmaps); `metadata_only`: libvirt's record of it only."""
    extra = ["--metadata"] if metadata_only else []
    virsh("checkpoint-delete", *extra, "--", domain, name, what=f"cannot delete checkpoint {name} of {domain}")


def agent_answers(domain: str) -> bool:
    """Does the guest agent answer a ping? (none configured, not running, not connected: no)"""
    try:
        virsh(
            "qemu-agent-command",
            "--timeout",
            str(_AGENT_TIMEOUT_S),
            "--",
            domain,
            '{"execute":"guest-ping"}',
            what=f"the guest agent of {domain}",
        )
    except ProviderError:
        return False
    return True


def frozen(domain: str) -> bool:
    """Are the guest's filesystems frozen (`guest-fsfreeze-status`)? False when it cannot say."""
    try:
        text = virsh(
            "qemu-agent-command",
            "--timeout",
            str(_AGENT_TIMEOUT_S),
            "--",
            domain,
            '{"execute":"guest-fsfreeze-status"}',
            what=f"the guest agent of {domain}",
        )
    except ProviderError:
        return False
    return '"frozen"' in text


def fsfreeze(domain: str) -> None:
    virsh("domfsfreeze", "--", domain, what=f"cannot freeze the filesystems of {domain}")


def fsthaw(domain: str) -> None:
    virsh("domfsthaw", "--", domain, what=f"cannot thaw the filesystems of {domain}")


def backup_socket(domain: str) -> str | None:
    """The Unix socket of the domain's pull-mode backup job; None when no backup job runs."""
    try:
        text = virsh("backup-dumpxml", "--", domain, what=f"the backup job of {domain}")
    except ProviderError as err:
        if "no domain backup job" in err.message:
            return None
        raise
    try:
        server = ET.fromstring(text).find("server")
    except ET.ParseError as err:
        raise ProviderError(f"the backup job of {domain}: virsh said something unexpected ({err})") from err
    return (server.get("socket") if server is not None else None) or ""


def job_abort(domain: str) -> None:
    """End the domain's backup job (the normal end of a pull-mode backup)."""
    virsh("domjobabort", "--", domain, what=f"cannot end the backup job of {domain}")


def backup_xml(disk: str, socket: str, scratch: str, incremental: str | None) -> str:
    root = ET.Element("domainbackup", mode="pull")
    if incremental is not None:
        ET.SubElement(root, "incremental").text = incremental
    ET.SubElement(root, "server", transport="unix", socket=socket)
    disks = ET.SubElement(root, "disks")
    entry = ET.SubElement(disks, "disk", name=disk, backup="yes", type="file")
    ET.SubElement(entry, "scratch", file=scratch)
    return ET.tostring(root, encoding="unicode")


def checkpoint_xml(name: str, disk: str) -> str:
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    disks = ET.SubElement(root, "disks")
    ET.SubElement(disks, "disk", name=disk, checkpoint="bitmap")
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True, slots=True)
class PullExport:
    socket: str
    export: str  # the disk's target name
    bitmap_context: str | None  # "qemu:dirty-bitmap:backup-vda" for an incremental

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.export}?socket={self.socket}"


_SOCKET_PATH_MAX = 107  # sun_path, less its NUL
_JOB_DIR_TAIL = 8 + len("/nbd.sock")  # mkdtemp's 8 random characters, the socket


def job_prefix(domain: str) -> str:
    """The name of a pull job's directory starts so ("@" is in no domain name the spec allows)."""
    return f"{BACKUP_DIR_PREFIX}{domain}@"


def stale_job_dirs(domain: str, source: str) -> list[str]:
    """This domain's job directories where its jobs go (beside the image, the temporary
    directory); with no job running, what a run that died left (its scratch file can be big)."""
    places = {tempfile.gettempdir(), job_parent(source, domain) or tempfile.gettempdir()}
    prefix = job_prefix(domain)
    found: list[str] = []
    for place in sorted(places):
        with contextlib.suppress(OSError):
            found += [os.path.join(place, n) for n in os.listdir(place) if n.startswith(prefix)]
    return found


def job_parent(source: str, domain: str) -> str | None:
    """Where a pull job's directory goes: beside the image file (the scratch file holds the old
    content of what the guest rewrites during the read, so it belongs on the images'
    filesystem, not on a /tmp that may be memory); the temporary directory for a block device
    or where the socket's path would be too long for a Unix socket."""
    parent = os.path.dirname(os.path.abspath(source))
    if not os.path.isfile(source) or len(parent) + 1 + len(job_prefix(domain)) + _JOB_DIR_TAIL > _SOCKET_PATH_MAX:
        return None
    return parent if os.access(parent, os.W_OK) else None


@contextlib.contextmanager
def pull_backup(
    domain: str,
    disk: Disk,
    *,
    incremental: str | None,
    checkpoint: str | None,
    owner: tuple[int, int] | None,
) -> Iterator[PullExport]:
    """`virsh backup-begin` in pull mode: the disk as it is now, exported read-only by the
    domain's qemu on a private Unix socket (writes the guest makes meanwhile go past it, their
    old content kept in a scratch file), with the dirty map since `incremental` when given; a
    new checkpoint `checkpoint` is taken at the same instant. The job is ended on leaving."""
    with tempfile.TemporaryDirectory(prefix=job_prefix(domain), dir=job_parent(disk.source, domain)) as tmp:
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            os.chown(tmp, *owner)  # qemu, running as its own user, creates the socket and scratch here
        sock, scratch = os.path.join(tmp, "nbd.sock"), os.path.join(tmp, "scratch.qcow2")
        files = [os.path.join(tmp, "backup.xml")]
        Path(files[0]).write_text(backup_xml(disk.target, sock, scratch, incremental))
        if checkpoint is not None:
            files.append(os.path.join(tmp, "checkpoint.xml"))
            Path(files[1]).write_text(checkpoint_xml(checkpoint, disk.target))
        virsh("backup-begin", "--", domain, *files, what=f"cannot begin a backup of {domain}")
        context = f"qemu:dirty-bitmap:backup-{disk.target}" if incremental is not None else None
        try:
            yield PullExport(sock, disk.target, context)
        except BaseException:
            with contextlib.suppress(ProviderError):  # never hide the error already raised
                job_abort(domain)
            raise
        job_abort(domain)
