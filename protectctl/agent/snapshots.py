"""Consistent captures of a directory for the moment of a sync: btrfs snapshots, reflink clones.

`snapshot: auto|btrfs|reflink|none` (the filesystem member's field) picks how a sync sees the
source; `auto` takes the best the filesystem under the path offers and the point records
which (`snapshot`) and why (`snapshot_note`):

- btrfs: a read-only snapshot of the subvolume holding the path, named
  `.protectctl-snapshot-<pid>-<tag>` at that subvolume's root (tag: a digest of the source
  name). The sync reads the path inside it: the whole point is one instant. The group's pre
  script ran before it was taken; the post script runs right after (`frozen`), not after the
  upload, so an application is quiesced for milliseconds. The snapshot is deleted once the
  walk is over, and a killed run's leftover is deleted by the next run of the source (and
  `status` names it meanwhile). Files keep the device number of the live source in the point
  (a snapshot gets its own), so the journal and directory keys stay valid across syncs. A
  nested subvolume is not in a snapshot (an empty placeholder): it is read live, and the
  point's note says how many were.
- reflink (XFS with reflink=1, btrfs): each big file is cloned (FICLONE) when the sync
  reaches it and read from the clone, so a file being written is stored as one instant
  (agent/tracking.py); the tree as a whole is not one instant.
- none (ext4 and others, or asked for): the files are read live, as always; the point says it
  is not a snapshot.

Work directories (clones of a run, block tracking's reference copies) live at the root of the
mount holding the path, so they are on the same filesystem as the files they clone. Every walk
skips entries named `.protectctl-snapshot-*` and `.protectctl-reference-*` (INTERNAL_EXCLUDES).

The btrfs snapshot is made and deleted with the kernel's ioctls (no btrfs-progs needed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.agent.archiver import SnapshotView
from protectctl.errors import ProviderError

SNAPSHOT_MODES = ("auto", "btrfs", "reflink", "none")
SNAPSHOT_PREFIX = ".protectctl-snapshot-"
REFERENCE_PREFIX = ".protectctl-reference-"
INTERNAL_EXCLUDES = (SNAPSHOT_PREFIX + "*", REFERENCE_PREFIX + "*")
REFLINK_FILESYSTEMS = ("xfs", "btrfs")  # others (ocfs2, bcachefs) are probed the same way

_BTRFS_FIRST_FREE_OBJECTID = 256  # the inode number of every btrfs subvolume's root
_BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417  # _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
_BTRFS_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
_BTRFS_SUBVOL_RDONLY = 1 << 1
_VOL_ARGS_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Mount:
    point: Path
    fstype: str


def mount_of(path: Path) -> Mount:
    """The mount holding `path` (its real path), from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    best = Mount(Path("/"), "unknown")
    best_len = -1
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split(" ")
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_len:  # later lines mount over earlier ones
            best, best_len = Mount(Path(point), fields[sep + 1]), len(point)
    return best


def _unescape(text: str) -> str:
    # mountinfo spells space, tab, newline and backslash as \040, \011, \012, \134
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def source_tag(source: str) -> str:
    """A short, name-safe digest of a source name (leftovers are found by it)."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:12]


# -- btrfs -------------------------------------------------------------------------------


def subvolume_root(path: Path, mount: Mount) -> Path | None:
    """The root of the btrfs subvolume holding `path`; None when there is none to be found."""
    current = Path(os.path.realpath(path))
    dev = os.stat(current).st_dev
    while True:
        st = os.stat(current)
        if st.st_dev != dev:
            return None
        if st.st_ino == _BTRFS_FIRST_FREE_OBJECTID:
            return current
        if current == mount.point or current.parent == current:
            return None
        current = current.parent


def btrfs_snapshot(subvolume: Path, target: Path) -> None:
    """A read-only snapshot of `subvolume` at `target` (a new name in an existing directory)."""
    name = os.fsencode(target.name)
    args = bytearray(_VOL_ARGS_SIZE)
    src = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dst = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            struct.pack_into("=qQQ", args, 0, src, 0, _BTRFS_SUBVOL_RDONLY)
            args[56 : 56 + len(name)] = name
            fcntl.ioctl(dst, _BTRFS_IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def btrfs_delete(target: Path) -> None:
    """Delete the subvolume (snapshot) at `target`."""
    name = os.fsencode(target.name)
    args = bytearray(_VOL_ARGS_SIZE)
    args[8 : 8 + len(name)] = name
    parent = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(parent, _BTRFS_IOC_SNAP_DESTROY, args)
    finally:
        os.close(parent)


def _remove(path: Path) -> None:
    """A leftover: a btrfs snapshot (subvolume root) or a directory of clones. Only what this
    user owns is deleted (a name like ours made by someone else is left alone)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, "not made by this agent (another owner)")
    if stat.S_ISDIR(st.st_mode) and st.st_ino == _BTRFS_FIRST_FREE_OBJECTID:
        btrfs_delete(path)
    elif stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def private_dir(path: Path) -> bool:
    """`path` is a real directory (not a symlink) of this user that nobody else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


# -- leftovers ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(root: Path, source: str) -> list[Path]:
    """Snapshots and clone directories of `source` left by runs that are no longer alive."""
    try:
        mount = mount_of(root)
    except OSError:
        return []
    places = {mount.point}
    with contextlib.suppress(OSError):
        if mount.fstype == "btrfs" and (subvolume := subvolume_root(root, mount)) is not None:
            places.add(subvolume)
    tag = source_tag(source)
    found = []
    for place in sorted(places):
        with contextlib.suppress(OSError):
            for entry in os.scandir(place):
                if not entry.name.startswith(SNAPSHOT_PREFIX) or not entry.name.endswith("-" + tag):
                    continue
                pid = entry.name[len(SNAPSHOT_PREFIX) :].split("-", 1)[0]
                if not pid.isdigit() or not _pid_alive(int(pid)):
                    found.append(Path(entry.path))
    return found


def capture_problems(root: Path, source: str, mode: str) -> list[str]:
    """For `status`: leftovers of killed runs, and an explicit `mode` this filesystem cannot do
    (every sync fails then). Looks, never writes; a path absent here says nothing."""
    if not os.path.isdir(root):
        return []
    problems = [
        f"a snapshot left by a killed sync: {path} (the next sync deletes it)" for path in leftovers(root, source)
    ]
    fstype = mount_of(root).fstype
    if mode == "btrfs" and fstype != "btrfs":
        problems.append(f"snapshot: btrfs, but {root} is on {fstype}: every sync fails; use snapshot: auto")
    if mode == "reflink" and fstype not in REFLINK_FILESYSTEMS:
        problems.append(
            f"snapshot: reflink, but {root} is on {fstype}, which cannot clone files: "
            "every sync fails; use snapshot: auto"
        )
    return problems


def clean_leftovers(root: Path, source: str) -> list[str]:
    """Delete what killed runs of `source` left; the notes say what was deleted (or not)."""
    notes = []
    for path in leftovers(root, source):
        try:
            _remove(path)
            notes.append(f"deleted {path}, left by a run that was killed")
        except OSError as err:
            notes.append(f"could not delete {path}, left by a killed run: {err.strerror}")
    return notes


# -- the capture of one sync ---------------------------------------------------------------


@dataclass(slots=True)
class Capture:
    """How one sync sees its source: where to read, and what to tell the point."""

    mode: str  # btrfs | reflink | none
    root: Path  # the directory to walk (inside the snapshot for btrfs)
    note: str
    mount: Mount
    started_ns: int  # before the snapshot: a change after it is racy for the next sync
    view: SnapshotView | None = None  # with a btrfs snapshot: how the archiver reads it
    work_dir: Path | None = None  # this run's clones (same filesystem as the files)
    reflink: bool = False  # files here can be cloned (FICLONE) into work_dir
    snapshot: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cleanup: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, object]:
        out: dict[str, object] = {"snapshot": self.mode, "snapshot_note": self.note, "filesystem": self.mount.fstype}
        out.update({key: round(value, 4) for key, value in self.timings.items()})
        if self.cleanup:
            out["snapshot_cleanup"] = list(self.cleanup)
        return out

    def release(self) -> None:
        """Delete this run's snapshot and clones; what fails stays for the next run to delete."""
        if self.snapshot is not None:
            started = time.monotonic()
            try:
                btrfs_delete(self.snapshot)
                self.snapshot = None
            except OSError as err:
                self.cleanup.append(f"could not delete {self.snapshot}: {err.strerror}; the next sync retries")
            self.timings["snapshot_delete_s"] = time.monotonic() - started
        if self.work_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.work_dir)


def probe_reflink(directory: Path) -> str | None:
    """None when files in `directory` can be reflink-cloned there, else why not."""
    a, b = directory / ".probe-a", directory / ".probe-b"
    try:
        fa = os.open(a, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fa, b"\0" * 4096)
            fb = os.open(b, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                from protectctl.agent.extents import clone

                clone(fa, fb)
            finally:
                os.close(fb)
        finally:
            os.close(fa)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            return "the filesystem cannot reflink-clone files"
        return f"reflink probe failed: {err.strerror}"
    finally:
        for path in (a, b):
            with contextlib.suppress(OSError):
                path.unlink()
    return None


@contextlib.contextmanager
def capture(
    root: Path, source: str, mode: str, *, frozen: Callable[[], None] | None = None, want_clones: bool = False
) -> Iterator[Capture]:
    """The view of `root` one sync reads (see the module docstring); released on exit.
    `want_clones`: a work directory for clones is wanted even without `reflink` (block tracking).
    Raises ProviderError when an explicit mode cannot be had here."""
    if mode not in SNAPSHOT_MODES:
        raise ProviderError(f"snapshot must be one of {', '.join(SNAPSHOT_MODES)}, not {mode!r}")
    started_ns = time.time_ns()
    mount = mount_of(root)
    cap = Capture("none", root, "", mount, started_ns)
    cap.cleanup += clean_leftovers(root, source)
    tag = f"{SNAPSHOT_PREFIX}{os.getpid()}-{source_tag(source)}"
    try:
        if mode in ("auto", "btrfs"):
            why = _try_btrfs(cap, root, tag)
            if why is not None and mode == "btrfs":
                raise ProviderError(
                    f"no btrfs snapshot of {root}: {why}",
                    hint="use `snapshot: reflink` or `snapshot: none` for this path",
                )
            if why is not None:
                cap.note = why
        if mode == "none":
            cap.note = "not a snapshot (snapshot: none): files are read live"
        clones_wanted = want_clones or (cap.mode == "none" and mode in ("auto", "reflink"))
        if clones_wanted and (mode == "reflink" or cap.mount.fstype in REFLINK_FILESYSTEMS):
            _try_clones(cap, mode, tag)
        elif cap.mode == "none" and mode == "auto":
            cap.note = f"{cap.mount.fstype}: not a snapshot, files are read live (no snapshots or reflinks here)"
        if frozen is not None and cap.mode == "btrfs":
            frozen()  # the post script: the instant is taken, the application may go on
        yield cap
    finally:
        cap.release()


def _try_btrfs(cap: Capture, root: Path, tag: str) -> str | None:
    if cap.mount.fstype != "btrfs":
        return f"{cap.mount.fstype} is not btrfs"
    try:
        subvolume = subvolume_root(root, cap.mount)
    except OSError as err:  # the path is missing: the walk says so, in its own words
        return f"{root} cannot be read: {err.strerror}"
    if subvolume is None:
        return "no btrfs subvolume found above the path"
    target = subvolume / tag
    started = time.monotonic()
    try:
        btrfs_snapshot(subvolume, target)
    except OSError as err:
        return f"btrfs snapshot of {subvolume} failed: {err.strerror}"
    cap.timings["snapshot_create_s"] = time.monotonic() - started
    cap.snapshot = target
    real = os.path.realpath(root)
    cap.root = target / os.path.relpath(real, subvolume)
    try:
        cap.view = SnapshotView(
            os.stat(cap.root).st_dev, os.stat(real).st_dev, os.fsencode(real), os.fsencode(cap.root)
        )
    except OSError as err:
        return f"the snapshot {target} cannot be read: {err.strerror}"
    cap.mode = "btrfs"
    cap.note = f"read-only btrfs snapshot of subvolume {subvolume}, deleted after the sync"
    return None


def _try_clones(cap: Capture, mode: str, tag: str) -> None:
    pid, _, source = tag.removeprefix(SNAPSHOT_PREFIX).partition("-")
    work = cap.mount.point / f"{SNAPSHOT_PREFIX}{pid}-clones-{source}"  # beside a snapshot named `tag`
    try:
        work.mkdir(mode=0o700)
    except OSError as err:
        why = f"no work directory at {cap.mount.point}: {err.strerror}"
        if mode == "reflink":
            raise ProviderError(f"no reflink clones for {cap.root}: {why}") from err
        cap.note = cap.note or why
        return
    cap.work_dir = work
    refused = probe_reflink(work)
    if refused is None:
        cap.reflink = True
        if cap.mode == "none" and mode != "none":
            cap.mode = "reflink"
            cap.note = f"{cap.mount.fstype}: big files are reflink-cloned and read from the clone (each one instant)"
        return
    if mode == "reflink":
        raise ProviderError(
            f"no reflink clones for {cap.root} ({cap.mount.fstype}): {refused}",
            hint="use `snapshot: none` for this path",
        )
    if cap.mode == "none" and mode != "none":
        cap.note = f"{cap.mount.fstype}: not a snapshot, files are read live ({refused})"
