"""Capture a system's state into a staging directory (then archived with /etc).

What is read, each into its own file under `state/` (manifest.json lists them and what could
not be read): package selections and manual marks (dpkg, apt), installed versions, enabled
systemd units and timers, block devices (`lsblk -J`) and each partition table (`sfdisk -d`),
software RAID and LVM metadata where their tools are present, the boot loader's generated
config, the kernel command line, network addresses. /etc itself (fstab, crypttab, passwd,
group, shadow, network and boot config) is archived beside it, shadow stored and never printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
_TIMEOUT_S = 120


@dataclass(slots=True)
class Captured:
    files: dict[str, str] = field(default_factory=dict)  # file under state/ -> what it holds
    gaps: list[str] = field(default_factory=list)  # what is not captured here, and why
    errors: list[str] = field(default_factory=list)  # what should have been captured and could not be
    disks: list[dict[str, object]] = field(default_factory=list)  # disks whose table was dumped
    units: list[str] = field(default_factory=list)


def _run(argv: Sequence[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=_TIMEOUT_S,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        return False, lines[-1].strip() if lines else f"exit status {done.returncode}"
    return True, done.stdout


class _Capture:
    def __init__(self, root: Path, out: Path) -> None:
        self.root, self.out, self.got = root, out, Captured()

    def save(self, name: str, what: str, text: str) -> None:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(text, errors="surrogateescape")
        self.got.files[name] = what

    def command(self, name: str, what: str, argv: Sequence[str], *, needed: bool = True) -> str | None:
        """Save `argv`'s output as `name`; a failure is an error when `needed`, else a gap."""
        if shutil.which(argv[0]) is None:
            self.got.gaps.append(f"{what}: {argv[0]} is not installed")
            return None
        ok, text = _run(argv)
        if not ok:
            (self.got.errors if needed else self.got.gaps).append(f"{what}: {argv[0]}: {text}")
            return None
        self.save(name, what, text)
        return text

    def packages(self) -> None:
        if not (self.root / "var/lib/dpkg/status").is_file():
            self.got.gaps.append(f"packages: no dpkg database under {self.root} (not a Debian system?)")
            return
        admin = ["--admindir", str(self.root / "var/lib/dpkg")]
        self.command("packages/dpkg-selections.txt", "package selections", ["dpkg", *admin, "--get-selections"])
        installed = self.command(
            "packages/installed.tsv",
            "installed package versions",
            ["dpkg-query", *admin, "-W", "-f", "${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n"],
        )
        if installed is not None:  # what `apt-mark showmanual` prints, without its second of start-up
            auto = _auto_installed(self.root / "var/lib/apt/extended_states")
            names = sorted(
                {line.split("\t")[0] for line in installed.splitlines() if line.endswith("\tinstalled")} - auto
            )
            self.save("packages/apt-manual.txt", "packages marked manually installed", "".join(f"{n}\n" for n in names))

    def units(self) -> None:
        """Enabled units and timers: the symlinks in /etc/systemd/system/*.wants|*.requires (what
        `systemctl list-unit-files --state=enabled` reads, without its seconds of start-up)."""
        base = self.root / "etc/systemd/system"
        found: set[str] = set()
        try:
            for entry in base.iterdir():
                if entry.is_dir() and entry.name.endswith((".wants", ".requires")):
                    found.update(link.name for link in entry.iterdir() if link.is_symlink())
        except FileNotFoundError:  # a system without systemd: nothing missed, nothing to enable
            self.got.gaps.append(f"enabled systemd units: no {base} (not a systemd system?)")
            return
        except OSError as err:
            self.got.errors.append(f"enabled systemd units: {base}: {err.strerror}")
            return
        masked = {e.name for e in base.iterdir() if e.is_symlink() and os.readlink(e) == "/dev/null"}
        self.got.units = sorted(found - masked)
        self.save(
            "systemd/enabled-units.txt", "enabled systemd units and timers", "".join(f"{u}\n" for u in self.got.units)
        )

    def disks(self) -> None:
        text = self.command(
            "disks/lsblk.json",
            "block devices",
            ["lsblk", "-J", "-b", "-o", "NAME,PATH,TYPE,SIZE,FSTYPE,UUID,PARTUUID,LABEL,PTTYPE,MOUNTPOINT"],
        )
        if text is None:
            return
        try:
            devices = json.loads(text).get("blockdevices") or []
        except ValueError:
            self.got.errors.append("block devices: lsblk printed something that is not JSON")
            return
        for dev in devices:
            if dev.get("type") != "disk" or not dev.get("pttype"):
                continue
            name = str(dev["name"])
            if (
                self.command(dump_file(name), f"partition table of {dev['path']}", ["sfdisk", "-d", str(dev["path"])])
                is not None
            ):
                self.got.disks.append(
                    {"name": name, "path": dev["path"], "size": dev.get("size"), "pttype": dev["pttype"]}
                )
        if not self.got.disks:
            self.got.gaps.append("partition tables: no disk here has one")
        self.command(
            "raid/mdadm-detail-scan.txt", "software RAID arrays", ["mdadm", "--detail", "--scan"], needed=False
        )
        self.command("lvm/vgs.txt", "LVM volume groups", ["vgs", "--noheadings", "-o", "vg_name,vg_uuid"], needed=False)
        self.command("lvm/lvs.txt", "LVM logical volumes", ["lvs", "-a", "-o", "+devices"], needed=False)

    def live(self) -> None:
        try:
            self.save("kernel/cmdline", "kernel command line", Path("/proc/cmdline").read_text())
        except OSError as err:
            self.got.gaps.append(f"kernel command line: {err.strerror}")
        self.command("network/ip-addr.json", "network addresses", ["ip", "-j", "addr"], needed=False)
        self.command("network/ip-route.json", "network routes", ["ip", "-j", "route"], needed=False)
        self.command("boot/efibootmgr.txt", "UEFI boot entries", ["efibootmgr", "-v"], needed=False)

    def boot(self) -> None:
        found = False
        for rel in ("boot/grub/grub.cfg", "boot/grub2/grub.cfg", "boot/efi/EFI/debian/grub.cfg"):
            try:
                text = (self.root / rel).read_text(errors="surrogateescape")
            except OSError:
                continue
            self.save(f"boot/{rel.replace('/', '_')}", f"boot loader config /{rel}", text)
            found = True
        if not found:
            self.got.gaps.append("boot loader: no grub.cfg under /boot (its settings in /etc/default are in etc/)")


def dump_file(disk: str) -> str:
    """Where a disk's partition table is saved under state/ (the runbook reads it there): one
    file whatever the disk's name (`cciss/c0d0` would otherwise make a directory)."""
    return "disks/" + "".join(c for c in disk if c.isalnum() or c in "-_.") + ".sfdisk"


def _auto_installed(path: Path) -> set[str]:
    """Packages apt marks automatically installed (its extended_states file)."""
    auto: set[str] = set()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return auto
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if fields.get("Auto-Installed") == "1" and "Package" in fields:
            auto.add(fields["Package"])
    return auto


def capture(root: Path, out: Path) -> Captured:
    """Write the state of the system at `root` under `out` (emptied first)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, mode=0o700)
    run = _Capture(root, out)
    live = root == Path("/")
    run.packages()
    run.units()
    if live:
        run.disks()
        run.live()
    else:
        run.got.gaps.append(
            f"disks, partition tables, RAID, LVM, kernel command line: {root} is not the running system"
        )
    run.boot()
    got = run.got
    run.save(
        "manifest.json",
        "what was captured",
        json.dumps(
            {
                "format": FORMAT,
                "hostname": socket.gethostname() if live else None,
                "root": str(root),
                "files": got.files,
                "gaps": got.gaps,
                "errors": got.errors,
                "disks": got.disks,
                "units": got.units,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
    )
    return got
