"""The `recover.sh` runbook written beside a restored system state.

It partitions (only with --partition), installs the captured package selections, restores
/etc (users, groups, network, boot and mount config with it), checks users and groups,
enables the captured units and refreshes the boot loader, in that order, each step safe to
run again. `--dry-run` prints every step and the commands it would run, and changes nothing;
`--root DIR` recovers a system mounted at DIR (commands run chrooted there). Nothing runs
unless the operator runs it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from protectctl.providers.systemstate.capture import dump_file

STEPS = ("partition tables", "packages", "restore /etc", "users and groups", "systemd units", "boot loader")

_HEAD = r"""#!/bin/bash
# Recovery runbook for {host}, written by `protectctl restore` from point {point}.
# Review it before running it. Each step checks or overwrites, so running it again is safe.
# Usage: recover.sh [--dry-run] [--root DIR] [--partition]
#   --dry-run    print every step and the commands it would run; change nothing
#   --root DIR   recover the system mounted at DIR (default /); commands run chrooted there
#   --partition  also write the captured partition tables (destroys what is on those disks)
set -euo pipefail

HERE=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
ROOT=/
DRY_RUN=0
PARTITION=0

usage() {{
  sed -n '4,7s/^# \{{0,1\}}//p' "${{BASH_SOURCE[0]}}"
}}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --partition) PARTITION=1 ;;
    --root)
      [ $# -ge 2 ] || {{ echo "recover.sh: --root needs a directory" >&2; exit 2; }}
      ROOT=$2
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "recover.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

STEP=0
step() {{
  STEP=$((STEP + 1))
  printf '== step %d: %s\n' "$STEP" "$1"
}}

# run COMMAND...: run it, or under --dry-run print it
run() {{
  if [ "$DRY_RUN" = 1 ]; then
    printf '   would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}}

# in_root COMMAND...: run it in the system being recovered
in_root() {{
  if [ "$ROOT" = / ]; then
    run "$@"
  else
    run chroot "$ROOT" "$@"
  fi
}}

partition_disk() {{
  local device=$1 dump=$2
  if [ "$PARTITION" != 1 ]; then
    echo "   skipped $device: pass --partition to write its table (this destroys what is on it)"
  elif [ -b "$device" ] && sfdisk -d "$device" 2>/dev/null | diff -q - "$dump" >/dev/null; then
    echo "   $device already has the captured table"
  else
    run sfdisk --wipe always "$device" <"$dump"
  fi
}}

if [ "$DRY_RUN" != 1 ] && [ "$(id -u)" != 0 ]; then
  echo "recover.sh: run it as root (or with --dry-run)" >&2
  exit 1
fi
"""

_TAIL = r"""
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: $STEP steps listed, nothing was changed"
else
  echo "done: $STEP steps; reboot into the recovered system when the boot loader step succeeded"
fi
"""


def render(manifest: Mapping[str, object], *, point: str) -> str:
    """The runbook for the state described by `manifest` (state/manifest.json)."""
    q = shlex.quote
    files = manifest.get("files")
    files = files if isinstance(files, Mapping) else {}
    listed = manifest.get("disks")
    disks = [d for d in listed if isinstance(d, Mapping)] if isinstance(listed, list) else []
    named = manifest.get("units")
    units = [u for u in named if isinstance(u, str)] if isinstance(named, list) else []
    out = [_HEAD.format(host=manifest.get("hostname") or "this system", point=point)]

    out.append('\nstep "partition tables"\n')
    for disk in disks:
        name = str(disk.get("name"))
        out.append(f'partition_disk {q(str(disk.get("path")))} "$HERE/state/{dump_file(name)}"\n')
    if not disks:
        out.append('echo "   none captured (no disk had a partition table)"\n')

    out.append('\nstep "packages"\n')
    if "packages/dpkg-selections.txt" in files:
        out.append(
            'if [ -d "$HERE/etc/apt" ]; then  # the captured sources and keys, so the same packages are found\n'
            '  run cp -a --remove-destination "$HERE/etc/apt/." "$ROOT/etc/apt/"\n'
            "fi\n"
            'in_root dpkg --set-selections <"$HERE/state/packages/dpkg-selections.txt"\n'
            "in_root apt-get update\n"
            "in_root apt-get -y -o Dpkg::Options::=--force-confold dselect-upgrade\n"
        )
        if "packages/apt-manual.txt" in files:
            out.append('in_root xargs -r apt-mark manual <"$HERE/state/packages/apt-manual.txt"\n')
    else:
        out.append('echo "   no package selections were captured"\n')

    out.append('\nstep "restore /etc"\nrun cp -a --remove-destination "$HERE/etc/." "$ROOT/etc/"\n')

    out.append(
        '\nstep "users and groups"\n'
        "for file in passwd group shadow gshadow; do\n"
        '  if [ -e "$HERE/etc/$file" ]; then\n'
        '    run cp -p "$HERE/etc/$file" "$ROOT/etc/$file"\n'
        "  fi\n"
        "done\n"
        'in_root pwck -r -q || echo "   pwck reported problems (above)"\n'
    )

    out.append('\nstep "systemd units"\n')
    if units:
        out.append('run systemctl --root="$ROOT" enable -- \\\n')
        out.append(" \\\n".join(f"  {q(u)}" for u in units) + "\n")
    else:
        out.append('echo "   no enabled units were captured"\n')

    out.append(
        '\nstep "boot loader"\n'
        'if [ -x "$ROOT/usr/sbin/update-initramfs" ]; then\n'
        "  in_root update-initramfs -u -k all\n"
        "fi\n"
        'if [ -x "$ROOT/usr/sbin/update-grub" ]; then\n'
        "  in_root update-grub\n"
        "fi\n"
    )
    if "kernel/cmdline" in files:
        out.append(
            'echo "   the captured kernel command line (compare with /etc/default/grub):"\n'
            'sed "s/^/     /" "$HERE/state/kernel/cmdline"\n'
        )
    for disk in disks:
        path = q(str(disk.get("path")))
        out.append(f'echo "   if {path} is the boot disk: grub-install {path}"\n')
    out.append(_TAIL)
    return "".join(out)
