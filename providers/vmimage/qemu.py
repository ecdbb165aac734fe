"""What vmImage asks of qemu-utils and libnbd-bin: image facts (`qemu-img info`), persistent
dirty bitmaps (`qemu-img bitmap`), a read-only export (`qemu-nbd`) and its maps (`nbdinfo --map`).

Every command runs with an argument list (no shell), a timeout, and its stderr turned into
a one-line ProviderError.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from protectctl.errors import ProviderError

BITMAP_PREFIX = "protectctl-"
EXPORT = "img"
_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class Bitmap:
    name: str
    flags: tuple[str, ...]  # "auto": enabled (tracks writes); "in-use": left inconsistent by a crash
    granularity: int

    @property
    def consistent(self) -> bool:
        return "in-use" not in self.flags and "auto" in self.flags


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # "qcow2" or "raw"
    virtual_size: int
    cluster_size: int  # qcow2's; 0 for raw
    bitmaps: tuple[Bitmap, ...]
    backing: str | None

    def bitmap(self, name: str) -> Bitmap | None:
        return next((b for b in self.bitmaps if b.name == name), None)


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ProviderError(f"{tool} is not installed on this host", hint=f"install {package}")
    return found


def run(argv: Sequence[str], what: str) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise ProviderError(f"{what}: {argv[0]} did not finish in {_TIMEOUT_S} s") from err
    except OSError as err:
        raise ProviderError(f"{what}: cannot run {argv[0]}: {err.strerror}") from err
    if done.returncode != 0:
        reason, hint = _failure(done.stderr, done.returncode)
        raise ProviderError(f"{what}: {reason}", hint=hint)
    return done.stdout


def _failure(stderr: str | None, returncode: int | None) -> tuple[str, str | None]:
    """A qemu tool's failure as (its last stderr line, a hint when the image is locked by another user)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"exit status {returncode}"
    in_use = "lock" in reason.lower() or "another process" in reason.lower()
    return reason, "the image is in use (a running VM?): stop it first" if in_use else None


def image_info(path: Path, fmt: str | None = None, *, shared: bool = False) -> ImageInfo:
    """Facts of the image (its format probed unless `fmt`); without `shared` (`-U`) an image open
    for writing elsewhere fails here (a running domain's image is read with it: its size and
    clusters, never its data)."""
    need("qemu-img", "qemu-utils")
    given = ["-f", fmt] if fmt else []
    if shared:
        given.append("-U")
    text = run(["qemu-img", "info", "--output=json", *given, "--", str(path)], f"cannot inspect {path}")
    try:
        info = json.loads(text)
        fmt = str(info["format"])
        data = (info.get("format-specific") or {}).get("data") or {}
        bitmaps = tuple(
            Bitmap(str(b["name"]), tuple(str(f) for f in b.get("flags", ())), int(b.get("granularity", 0)))
            for b in data.get("bitmaps") or ()
        )
        return ImageInfo(
            fmt,
            int(info["virtual-size"]),
            int(info.get("cluster-size") or 0),
            bitmaps,
            info.get("full-backing-filename") or info.get("backing-filename"),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ProviderError(f"cannot inspect {path}: qemu-img said something unexpected ({err})") from err


def bitmap_add(path: Path, name: str) -> None:
    run(["qemu-img", "bitmap", "--add", "-f", "qcow2", "--", str(path), name], f"cannot add bitmap {name} to {path}")


def bitmap_remove(path: Path, name: str) -> None:
    run(
        ["qemu-img", "bitmap", "--remove", "-f", "qcow2", "--", str(path), name],
        f"cannot remove bitmap {name} from {path}",
    )


@dataclass(frozen=True, slots=True)
class Export:
    socket: str
    uri: str


@contextlib.contextmanager
def export(path: Path, fmt: str, bitmap: str | None, *, writable: bool = False) -> Iterator[Export]:
    """A read-only `qemu-nbd` export of the image (with `bitmap`'s dirty map), on a private socket;
    `writable`: read-write, for a restore writing a new image (stopped cleanly, so qemu stores it).

    qemu-nbd runs as our child (not --fork), so stopping it reaps it at once."""
    need("qemu-nbd", "qemu-utils")
    with tempfile.TemporaryDirectory(prefix="protectctl-nbd-") as tmp:
        sock = os.path.join(tmp, "s")
        argv = [
            "qemu-nbd",
            "--persistent",
            "--shared=4",
            f"--format={fmt}",
            f"--export-name={EXPORT}",
            f"--socket={sock}",
        ]
        if not writable:
            argv.append("--read-only")
        if bitmap is not None:
            argv.append(f"--bitmap={bitmap}")
        try:
            server = subprocess.Popen(
                [*argv, "--", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as err:
            raise ProviderError(f"cannot export {path} through qemu-nbd: {err.strerror}") from err
        failed = True
        try:
            _wait_ready(server, sock, path)
            yield Export(sock, f"nbd+unix:///{EXPORT}?socket={sock}")
            failed = False
        finally:
            if server.poll() is None:
                server.terminate()
            try:
                _out, said = server.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                _out, said = server.communicate()
            # an unclean exit spoils what was written; but never hide the error already raised
            if writable and not failed and server.returncode not in (0, -15):
                raise ProviderError(f"qemu-nbd did not close {path} cleanly: {(said or '').strip()[-300:]}")


def _wait_ready(server: subprocess.Popen[str], sock: str, path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            _out, err = server.communicate()
            reason, hint = _failure(err, server.returncode)
            raise ProviderError(f"cannot export {path} through qemu-nbd: {reason}", hint=hint)
        if os.path.exists(sock):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(sock)  # listening (bound is not enough)
                return
        time.sleep(0.005)
    raise ProviderError(f"qemu-nbd did not start serving {path} within 30 s")


def extent_map(uri: str, context: str | None = None) -> list[tuple[int, int, int]]:
    """(offset, length, type) of the export's `context` (default base:allocation: type bit 1 a
    hole, bit 2 reads as zeros; qemu:dirty-bitmap:NAME: type 1 dirty)."""
    need("nbdinfo", "libnbd-bin")
    argv = ["nbdinfo", "--json", "--map" if context is None else f"--map={context}", uri]
    text = run(argv, f"cannot map the image ({context or 'base:allocation'})")
    try:
        return [(int(e["offset"]), int(e["length"]), int(e["type"])) for e in json.loads(text)]
    except (ValueError, KeyError, TypeError) as err:
        raise ProviderError(f"cannot map the image: nbdinfo said something unexpected ({err})") from err
