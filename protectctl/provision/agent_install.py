"""Agent install on SSH hosts: a wheelhouse built on the control machine, a venv on the host.

Hosts need no internet: the control machine makes wheels of protectctl and every dependency,
for its own platform and Python (the host must match them, which `install` checks first):
from a source tree, `pip wheel` builds them; from a normal install (a wheel, as pip and pipx
do), each installed distribution is packed back into its wheel, needing no index at all. It
uploads them, creates `ROOT/opt/protectctl` with `python3 -m venv --without-pip`, and installs
offline with the pip wheel shipped in the wheelhouse (`python pip.whl/pip install --no-index
--find-links`). A marker file in the venv records
version, source digest and wheelhouse digest: the same marker means nothing to do, another
means upgrade in place, and uninstall removes exactly the venv and the uploaded wheelhouse.

The wheelhouse is cached per (version, source digest) under the user cache directory
(`$PROTECTCTL_WHEELHOUSE` overrides it with a ready-made directory), built into a temporary
directory and renamed, so concurrent applies never see half a wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from protectctl import __version__
from protectctl.errors import ProtectctlError, RemoteError
from protectctl.provision.host import HostConnection

MARKER = ".protectctl-install.json"
WHEELHOUSE_DIR = "wheelhouse"  # inside the venv, so uninstall removes it with the venv
_SOURCE_PARTS = ("protectctl", "providers", "policies")
_SOURCE_SUFFIXES = (".py", ".j2", ".yaml", ".typed")
_build_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    path: Path
    digest: str  # sha256 over the wheels' names and contents

    def wheels(self) -> list[Path]:
        return sorted(self.path.glob("*.whl"))


def project_dir() -> Path | None:
    """The source tree this protectctl runs from, if it runs from one (editable install)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() and (here / "protectctl").is_dir() else None


@cache
def source_digest() -> str:
    """Digest of the protectctl source the agent is built from: changes whenever the code does,
    even when the version does not (development trees), so apply upgrades the agents."""
    given = os.environ.get("PROTECTCTL_WHEELHOUSE")
    if given:  # a ready-made wheelhouse: what gets installed is its protectctl wheel
        wheels = sorted(Path(given).glob("protectctl-*.whl"))
        return hashlib.sha256(wheels[-1].read_bytes()).hexdigest()[:16] if wheels else "none"
    root = project_dir()
    if root is None:  # installed: its RECORD lists every file with its hash
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            record = distribution("protectctl").read_text("RECORD") or ""
        except PackageNotFoundError:
            record = ""
        return hashlib.sha256(record.encode()).hexdigest()[:16] if record else f"release-{__version__}"
    h = hashlib.sha256()
    for part in _SOURCE_PARTS:
        for path in sorted((root / part).rglob("*")):
            if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protectctl" / "wheelhouse"


def _digest_of(directory: Path) -> str:
    h = hashlib.sha256()
    for wheel in sorted(directory.glob("*.whl")):
        h.update(wheel.name.encode() + b"\0")
        with wheel.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def wheelhouse() -> Wheelhouse:
    """The wheelhouse for this version of protectctl, built once and cached."""
    given = os.environ.get("PROTECTCTL_WHEELHOUSE")
    if given:
        path = Path(given)
        if not any(path.glob("protectctl-*.whl")):
            raise ProtectctlError(f"PROTECTCTL_WHEELHOUSE={given} holds no protectctl wheel")
        return Wheelhouse(path, _digest_of(path))
    target = _cache_root() / f"{__version__}-{source_digest()}"
    with _build_lock:
        if not (target / ".complete").exists():
            _build(target)
        digest = (target / ".complete").read_text().strip()
    return Wheelhouse(target, digest)


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out = Path(tmp) / "wheels"
        root = project_dir()
        if root is not None:
            _build_from_source(root, Path(tmp), out)
        else:
            _build_from_installed(Path(tmp), out)
        (out / ".complete").write_text(_digest_of(out) + "\n")
        try:
            os.rename(out, target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race with another apply: theirs is as good
                raise


def _build_from_source(root: Path, tmp: Path, out: Path) -> None:
    """A development tree: protectctl built from its source, dependencies from the index/cache."""
    src = tmp / "src"
    # a copy, so that building never writes build/ or egg-info into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, src / name)
    for part in _SOURCE_PARTS:
        shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip(["wheel", "--quiet", "--wheel-dir", str(out), str(src), "pip"])


# What an installed distribution adds that its wheel did not hold (RECORD is written anew).
_INSTALL_ONLY = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def _build_from_installed(tmp: Path, out: Path) -> None:
    """protectctl installed the normal way (a wheel: pip, pipx): every wheel of the agent is packed
    again from the installed files of protectctl, each dependency and pip itself, so a control
    machine without a source tree or a package index still provisions hosts. A distribution that
    was not installed from a wheel (no WHEEL file, or editable) comes from the index/cache instead."""
    from importlib.metadata import PackageNotFoundError, distribution

    out.mkdir()
    dists = []
    for name in sorted(_closure("protectctl") | {"pip"}):
        try:
            dists.append(distribution(name))
        except PackageNotFoundError:
            continue  # an optional dependency not installed here: its marker excluded it
    # one `wheel pack` process per distribution (~40), four at a time
    with ThreadPoolExecutor(max_workers=4) as pool:
        packed = list(pool.map(lambda d: _repack(d, tmp / "unpacked" / d.metadata["Name"], out), dists))
    fetch = [f"{d.metadata['Name']}=={d.version}" for d, ok in zip(dists, packed, strict=True) if not ok]
    if fetch:
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *fetch])


def _editable(direct_url: str | None) -> bool:
    try:
        return bool(json.loads(direct_url or "{}").get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def _closure(root: str) -> set[str]:
    """`root` and every distribution it requires here (markers evaluated, extras not taken)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for text in requires:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _repack(dist: object, unpacked: Path, out: Path) -> bool:
    """Pack `dist`'s installed files back into its wheel (`wheel pack`); False when it cannot be."""
    from importlib.metadata import Distribution

    assert isinstance(dist, Distribution)
    if dist.read_text("WHEEL") is None or _editable(dist.read_text("direct_url.json")):
        return False
    for file in dist.files or ():
        rel = Path(str(file))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue  # scripts (made again from entry points at install) and caches
        if rel.parent.name.endswith(".dist-info") and rel.name in _INSTALL_ONLY:
            continue
        source = Path(str(dist.locate_file(file)))
        if not source.is_file():
            return False  # an installed file went missing: do not ship a wheel without it
        dest = unpacked / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    # `wheel pack` through its command line: its Python API is private (it moved in wheel 0.46)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wheel", "pack", "--dest-dir", str(out), str(unpacked)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProtectctlError(f"packing the agent wheel of {dist.metadata['Name']}: {err}") from err
    if proc.returncode != 0:
        raise ProtectctlError(
            f"packing the agent wheel of {dist.metadata['Name']} failed: {proc.stderr.strip()[-400:]}"
        )
    return True


def _pip(args: list[str]) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProtectctlError(f"building the agent wheelhouse: {err}") from err
    if proc.returncode != 0:
        raise ProtectctlError(
            f"building the agent wheelhouse failed: {proc.stderr.strip()[-600:]}",
            hint="the control machine needs a package index (or a pip cache) once per version",
        )


def python_version() -> tuple[int, int]:
    return sys.version_info[0], sys.version_info[1]


def check_python(conn: HostConnection) -> str:
    """The host's python3; raises RemoteError unless its version matches the control machine's
    (the wheelhouse holds binary wheels for that version)."""
    status, out, err = conn.exec_bytes(("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"))
    want = "{}.{}".format(*python_version())
    if status != 0:
        raise RemoteError(
            f"host {conn.name}: no python3 ({err.decode(errors='replace').strip()[-200:]})",
            hint=f"install Python {want} on the host",
        )
    have = out.decode().strip()
    if have != want:
        raise RemoteError(
            f"host {conn.name}: python3 is {have}; the agent needs {want} (the control machine's)",
            hint=f"install python{want} on the host, or run protectctl under Python {have}",
        )
    return have


def marker_path(venv: str) -> str:
    return posixpath.join(venv, MARKER)


def read_marker(conn: HostConnection, venv: str) -> dict[str, str] | None:
    data = conn.read_file(marker_path(venv))
    if data is None:
        return None
    try:
        found = json.loads(data)
    except ValueError:
        return {"version": "?", "digest": "?", "wheelhouse": "?"}
    return found if isinstance(found, dict) else None


def install(conn: HostConnection, venv: str, *, digest: str) -> dict[str, str]:
    """Install or upgrade the agent in `venv`; returns the marker (nothing done when it matches)."""
    house = wheelhouse()
    want = {"version": __version__, "digest": digest, "wheelhouse": house.digest}
    have = read_marker(conn, venv)
    if have == want and conn.read_file(posixpath.join(venv, "bin", "protectctl")) is not None:
        return want
    check_python(conn)
    remote_house = posixpath.join(venv, WHEELHOUSE_DIR)
    conn.remove_tree(remote_house)
    for wheel in house.wheels():
        conn.upload(str(wheel), posixpath.join(remote_house, wheel.name))
    python = posixpath.join(venv, "bin", "python")
    if conn.read_file(python) is None:
        _run(conn, ("python3", "-m", "venv", "--without-pip", venv), "creating the agent venv")
    pip = next((w.name for w in house.wheels() if w.name.startswith("pip-")), None)
    if pip is None:
        raise ProtectctlError(f"the wheelhouse {house.path} has no pip wheel")
    # --no-compile: byte-compiling every dependency doubled the install time (docs/fleet.md)
    _run(
        conn,
        (
            python,
            posixpath.join(remote_house, pip, "pip"),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            remote_house,
            "--no-compile",
            "--upgrade",
            "--force-reinstall",
            "--no-deps",
            *[posixpath.join(remote_house, w.name) for w in house.wheels() if not w.name.startswith("pip-")],
        ),
        "installing the agent",
        timeout_s=600,
    )
    conn.write_file(marker_path(venv), json.dumps(want, sort_keys=True).encode() + b"\n", mode=0o644)
    return want


def uninstall(conn: HostConnection, venv: str) -> None:
    """Remove exactly what install made: the venv (wheelhouse and marker inside it)."""
    if read_marker(conn, venv) is None and conn.read_file(posixpath.join(venv, "bin", "protectctl")) is None:
        return  # not ours (or already gone): never remove what we did not install
    conn.remove_tree(venv)


def _run(conn: HostConnection, argv: tuple[str, ...], what: str, *, timeout_s: float = 120) -> None:
    status, _, err = conn.exec_bytes(argv, timeout_s=timeout_s)
    if status != 0:
        raise RemoteError(
            f"host {conn.name}: {what} failed (exit {status}): {err.decode(errors='replace').strip()[-400:]}"
        )
