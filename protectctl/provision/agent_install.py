"""Agent install on SSH hosts: a wheelhouse built on the control machine, a venv on the host.

Hosts need no internet: the control machine makes wheels of protectctl and every dependency,
for its own platform and Python (the host must match them, which `install` checks first):
from a source tree, `pip wheel` builds them; from a normal install (a wheel, as pip and pipx
do), each installed distribution is packed back into its wheel, needing no index at all.

An agent gets only what it needs: the closure of `protectctl[EXTRAS]` read from the wheels'
own metadata (Requires-Dist), EXTRAS chosen by the plan from what the host's sources use
(`s3`: boto3, botocore and s3transfer, ~17 MB of the ~45, only for hosts protecting into an
s3 Storage). The host keeps its wheelhouse in the venv (`opt/protectctl/wheelhouse`): one
probe lists the sha256 of the wheels it has, only the missing ones are uploaded (one stream,
each written to a temporary name, fsynced and renamed), and one pip run installs (offline,
with the pip wheel shipped in the wheelhouse: `python pip.whl/pip install --no-index`) only
the wheels the venv does not hold yet, as `wheelhouse/.installed.json` records.

A marker file in the venv records version, source digest, the selected wheels' digest and
the extras: the same marker means nothing to do, another means upgrade in place (an agent
later given an s3 storage gets the S3 libraries then), and uninstall removes exactly the venv
(wheelhouse and marker inside it). Crash-safe: the uploaded files are complete or absent,
`.installed.json` is narrowed to the untouched wheels before pip runs and the marker is
written last, so a killed install leaves the next apply able to finish it.

The wheelhouse is cached per (version, source digest, extras) under the user cache directory
(`$PROTECTCTL_WHEELHOUSE` overrides it with a ready-made directory, which may hold more than
an agent needs), built into a temporary directory and renamed, so concurrent applies never see
half a wheelhouse.
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
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

from protectctl import __version__
from protectctl.errors import ProtectctlError, RemoteError
from protectctl.provision.host import HostConnection

MARKER = ".protectctl-install.json"
WHEELHOUSE_DIR = "wheelhouse"  # inside the venv, so uninstall removes it with the venv
INSTALLED = ".installed.json"  # in the host's wheelhouse: the wheels the venv holds (name -> sha256)
AGENT_EXTRAS = ("s3",)  # protectctl's extras an agent may need (pyproject.toml)
_SOURCE_PARTS = ("protectctl", "providers", "policies")
_SOURCE_SUFFIXES = (".py", ".j2", ".yaml", ".typed")
_build_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    path: Path
    hashes: Mapping[str, str]  # wheel file name -> sha256 (hex)

    @property
    def digest(self) -> str:
        """sha256 over the wheels' names and contents."""
        return _digest_of_hashes(self.hashes)

    def wheels(self) -> list[Path]:
        return [self.path / name for name in sorted(self.hashes)]


def _digest_of_hashes(hashes: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(name.encode() + b"\0" + hashes[name].encode() + b"\0")
    return h.hexdigest()[:16]


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@cache
def _hashes_of(directory: Path, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, str]:
    return {name: _sha256_file(directory / name) for name, _, _ in stamp}


def _wheel_hashes(directory: Path) -> dict[str, str]:
    """sha256 of each wheel in `directory` (cached per process while names, sizes and times hold)."""
    stamp = tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in sorted(directory.glob("*.whl")))
    return dict(_hashes_of(directory, stamp))


def _normalise_extras(extras: Iterable[str]) -> tuple[str, ...]:
    found = tuple(sorted(set(extras)))
    unknown = [e for e in found if e not in AGENT_EXTRAS]
    if unknown:
        raise ProtectctlError(f"unknown agent extra(s) {', '.join(unknown)} (known: {', '.join(AGENT_EXTRAS)})")
    return found


def wheelhouse(extras: Iterable[str] = ()) -> Wheelhouse:
    """The wheelhouse for this version of protectctl with `extras`, built once and cached."""
    chosen = _normalise_extras(extras)
    given = os.environ.get("PROTECTCTL_WHEELHOUSE")
    if given:
        path = Path(given)
        if not any(path.glob("protectctl-*.whl")):
            raise ProtectctlError(f"PROTECTCTL_WHEELHOUSE={given} holds no protectctl wheel")
        return Wheelhouse(path, _wheel_hashes(path))
    name = f"{__version__}-{source_digest()}" + "".join(f"+{e}" for e in chosen)
    target = _cache_root() / name
    with _build_lock:
        if not (target / ".complete").exists():
            _build(target, chosen)
        hashes = _read_complete(target)
    return Wheelhouse(target, hashes)


def _read_complete(target: Path) -> dict[str, str]:
    """The wheels' hashes `_build` recorded (computed again for a wheelhouse of an older build)."""
    try:
        found = json.loads((target / ".complete").read_text())
    except ValueError:
        found = None
    if isinstance(found, dict) and found and all(isinstance(v, str) for v in found.values()):
        return {str(k): v for k, v in found.items()}
    return _wheel_hashes(target)


def _build(target: Path, extras: tuple[str, ...]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out = Path(tmp) / "wheels"
        root = project_dir()
        if root is not None:
            _build_from_source(root, Path(tmp), out, extras)
        else:
            _build_from_installed(Path(tmp), out, extras)
        hashes = {p.name: _sha256_file(p) for p in sorted(out.glob("*.whl"))}
        (out / ".complete").write_text(json.dumps(hashes, sort_keys=True, indent=0) + "\n")
        try:
            os.rename(out, target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race with another apply: theirs is as good
                raise


def _build_from_source(root: Path, tmp: Path, out: Path, extras: tuple[str, ...] = ()) -> None:
    """A development tree: protectctl built from its source, dependencies from the index/cache.

    Every change of the source makes a new wheelhouse, but the dependencies change only with
    pyproject.toml's requirements: their wheels are kept apart, per requirement set, Python and
    platform (`deps-KEY` beside the wheelhouses), and a later build makes protectctl's wheel
    alone (~5 s instead of a `pip wheel` of ~40 distributions against the index)."""
    src = tmp / "src"
    # a copy, so that building never writes build/ or egg-info into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, src / name)
    for part in _SOURCE_PARTS:
        shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    deps = _cache_root() / f"deps-{_requirements_key(root / 'pyproject.toml', extras)}"
    if (deps / ".complete").exists():
        _pip(["wheel", "--quiet", "--no-deps", *_no_build_isolation(), "--wheel-dir", str(out), str(src)])
        for wheel in deps.glob("*.whl"):
            _link_or_copy(wheel, out / wheel.name)
        return
    project = f"{src}[{','.join(extras)}]" if extras else str(src)
    _pip(["wheel", "--quiet", "--wheel-dir", str(out), project, "pip"])
    kept = tmp / "deps"
    kept.mkdir()
    for wheel in out.glob("*.whl"):
        if not wheel.name.startswith("protectctl-"):
            _link_or_copy(wheel, kept / wheel.name)
    (kept / ".complete").write_text("\n")
    deps.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(kept, deps)
    except OSError:
        if not (deps / ".complete").exists():  # lost a race with another build: theirs is as good
            raise


def _requirements_key(pyproject: Path, extras: tuple[str, ...]) -> str:
    """What the dependency wheels depend on: the requirements (with `extras`), Python, platform."""
    import sysconfig
    import tomllib

    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    optional = project.get("optional-dependencies", {})
    key = {
        "dependencies": project.get("dependencies", []),
        "extras": {e: optional.get(e, []) for e in extras},
        "python": "{}.{}".format(*python_version()),
        "platform": sysconfig.get_platform(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _no_build_isolation() -> list[str]:
    """Build protectctl's wheel with this environment's setuptools when it is recent enough
    (pyproject's build-system): an isolated build installs a fresh setuptools from the index."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    try:
        return ["--no-build-isolation"] if Version(version("setuptools")) >= Version("77") else []
    except (PackageNotFoundError, InvalidVersion):
        return []


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


# What an installed distribution adds that its wheel did not hold (RECORD is written anew).
_INSTALL_ONLY = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def _build_from_installed(tmp: Path, out: Path, extras: tuple[str, ...] = ()) -> None:
    """protectctl installed the normal way (a wheel: pip, pipx): every wheel of the agent is packed
    again from the installed files of protectctl, each dependency and pip itself, so a control
    machine without a source tree or a package index still provisions hosts. A distribution that
    was not installed from a wheel (no WHEEL file, or editable) comes from the index/cache instead."""
    from importlib.metadata import PackageNotFoundError, distribution

    out.mkdir()
    dists = []
    for name in sorted(_closure("protectctl", extras) | {"pip"}):
        try:
            dists.append(distribution(name))
        except PackageNotFoundError:
            continue  # an optional dependency not installed here: its marker excluded it
    # four at a time (zlib lets go of the GIL while it compresses)
    with ThreadPoolExecutor(max_workers=4) as pool:
        packed = list(pool.map(lambda d: _repack(d, out), dists))
    fetch = [f"{d.metadata['Name']}=={d.version}" for d, ok in zip(dists, packed, strict=True) if not ok]
    if fetch:
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *fetch])


def _editable(direct_url: str | None) -> bool:
    try:
        return bool(json.loads(direct_url or "{}").get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def requirement_closure(
    root: str, extras: Iterable[str], requires_of: Callable[[str], Sequence[str] | None]
) -> set[str]:
    """The canonical names of `root[extras]` and every distribution it requires, transitively:
    markers evaluated for this interpreter and each requested extra (a dependency's own extras,
    e.g. `psycopg[binary]`, included). `requires_of(name)` gives a distribution's Requires-Dist
    lines, None when it is not there (its name is still in the result: the caller decides)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    todo: list[tuple[str, set[str]]] = [(canonicalize_name(root), {"", *extras})]
    while todo:
        name, wanted = todo.pop()
        done = seen.setdefault(name, set())
        new = wanted - done
        if not new:
            continue
        done |= new
        for text in requires_of(name) or ():
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            marker = req.marker
            if (marker is None and "" in new) or (
                marker is not None and any(marker.evaluate({"extra": e}) for e in sorted(new))
            ):
                todo.append((canonicalize_name(req.name), {"", *req.extras}))
    return set(seen)


def _closure(root: str, extras: Iterable[str] = ()) -> set[str]:
    """`root[extras]` and every distribution it requires here (installed metadata)."""
    from importlib.metadata import PackageNotFoundError, distribution

    def requires_of(name: str) -> Sequence[str] | None:
        try:
            return distribution(name).requires or []
        except PackageNotFoundError:
            return None

    return requirement_closure(root, extras, requires_of)


@cache
def _wheel_requires(path: Path, size: int) -> tuple[str, ...]:
    """The Requires-Dist lines of a wheel's METADATA."""
    from email.parser import HeaderParser

    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if not names:
            raise ProtectctlError(f"{path.name} has no METADATA: not a wheel")
        text = archive.read(names[0]).decode("utf-8", errors="replace")
    return tuple(HeaderParser().parsestr(text, headersonly=True).get_all("Requires-Dist") or ())


def select(house: Wheelhouse, extras: Iterable[str] = ()) -> dict[str, str]:
    """The wheels (name -> sha256) an agent with `extras` needs: protectctl's closure and pip."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    chosen = _normalise_extras(extras)
    by_dist: dict[str, tuple[Version, str]] = {}
    for name in house.hashes:
        try:
            dist, version, _, _ = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        if dist not in by_dist or version > by_dist[dist][0]:
            by_dist[dist] = (version, name)

    def requires_of(dist: str) -> Sequence[str] | None:
        found = by_dist.get(dist)
        if found is None:
            return None
        path = house.path / found[1]
        return _wheel_requires(path, path.stat().st_size)

    needed = requirement_closure("protectctl", chosen, requires_of) | {canonicalize_name("pip")}
    missing = sorted(d for d in needed if d not in by_dist)
    if missing:
        want = f"protectctl[{','.join(chosen)}]" if chosen else "protectctl"
        raise ProtectctlError(
            f"the agent wheelhouse {house.path} lacks {', '.join(missing)} (needed by {want})",
            hint=f"install {want} on the control machine (pip install '{want}'), or give a complete "
            "PROTECTCTL_WHEELHOUSE",
        )
    return {by_dist[d][1]: house.hashes[by_dist[d][1]] for d in sorted(needed)}


def _repack(dist: object, out: Path) -> bool:
    """Pack `dist`'s installed files back into its wheel; False when it cannot be (not installed
    from a wheel, editable, a file missing). Written here, in-process: one `wheel pack` process per
    distribution cost ~0.15 s of start-up each, ~35 of them per build."""
    from importlib.metadata import Distribution

    assert isinstance(dist, Distribution)
    if dist.read_text("WHEEL") is None or _editable(dist.read_text("direct_url.json")):
        return False
    members: list[tuple[str, Path]] = []
    for file in dist.files or ():
        rel = PurePosixPath(str(file))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue  # scripts (made again from entry points at install) and caches
        if rel.parent.name.endswith(".dist-info") and rel.name in _INSTALL_ONLY:
            continue
        source = Path(str(dist.locate_file(file)))
        if not source.is_file():
            return False  # an installed file went missing: do not ship a wheel without it
        members.append((str(rel), source))
    infos = sorted({m.split("/")[0] for m, _ in members if m.split("/")[0].endswith(".dist-info")})
    name = _wheel_name(infos[0], dist.read_text("WHEEL") or "") if len(infos) == 1 else None
    if name is None:
        return False
    _write_wheel(out / name, members, infos[0])
    return True


def _wheel_name(dist_info: str, wheel_text: str) -> str | None:
    """The wheel's file name: name and version from its .dist-info directory, build and tags from WHEEL."""
    from email.parser import HeaderParser

    namever = dist_info[: -len(".dist-info")]
    fields = HeaderParser().parsestr(wheel_text)
    tags = [t.strip().split("-") for t in fields.get_all("Tag") or ()]
    if "-" not in namever or not tags or any(len(t) != 3 for t in tags):
        return None
    build = fields.get("Build")
    triple = [".".join(sorted({t[i] for t in tags})) for i in range(3)]
    return "-".join([namever, *([build.strip()] if build else []), *triple]) + ".whl"


def _write_wheel(path: Path, members: Sequence[tuple[str, Path]], dist_info: str) -> None:
    """A wheel of `members` (archive name, file), its .dist-info last and a new RECORD last of all."""
    import base64
    import csv
    import io

    record = f"{dist_info}/RECORD"
    rows: list[tuple[str, str, str]] = []
    ordered = sorted(members, key=lambda m: (m[0].startswith(dist_info + "/"), m[0]))
    tmp = path.with_name(f".{path.name}.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, source in ordered:
            data = source.read_bytes()
            info = zipfile.ZipInfo.from_file(source, arcname, strict_timestamps=False)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append((arcname, f"sha256={digest}", str(len(data))))
        rows.append((record, "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        archive.writestr(
            zipfile.ZipInfo(record, date_time=(1980, 1, 1, 0, 0, 0)), text.getvalue(), zipfile.ZIP_DEFLATED
        )
    os.rename(tmp, path)


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


# Run by the host's python3 (any version: the mismatch must be reported, not a SyntaxError):
# its version, the sha256 of each wheel its wheelhouse holds, what `.installed.json` records
# and whether the venv's python and protectctl are there. argv: venv, wheelhouse.
_PROBE = """\
import hashlib, json, os, sys
venv, house = sys.argv[1], sys.argv[2]
def sha(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()
try:
    names = sorted(os.listdir(house))
except OSError:
    names = []
wheels = dict((n, sha(os.path.join(house, n))) for n in names if n.endswith('.whl') and not n.startswith('.'))
try:
    with open(os.path.join(house, '.installed.json')) as f:
        installed = json.load(f)
except (OSError, ValueError):
    installed = None
print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'wheels': wheels, 'installed': installed,
                  'venv': os.path.exists(os.path.join(venv, 'bin', 'python')),
                  'agent': os.path.exists(os.path.join(venv, 'bin', 'protectctl'))}))
"""

# Run by the host's python3: the wheelhouse made to hold exactly `keep`. stdin: one JSON line
# {"keep": [names], "files": [[name, size, sha256], ...]}, then the files' bytes in that order.
# Wheels not kept and leftovers of a killed upload go first; each file is written to a dot
# name, checked, fsynced and renamed: a wheel under its own name is always complete.
_RECEIVE = """\
import hashlib, json, os, sys
house = sys.argv[1]
if not os.path.isdir(house):
    os.makedirs(house)
data = sys.stdin.buffer
head = json.loads(data.readline().decode())
keep = set(head['keep'])
for n in os.listdir(house):
    if n.endswith('.part') or (n.endswith('.whl') and n not in keep):
        os.unlink(os.path.join(house, n))
for name, size, want in head['files']:
    tmp = os.path.join(house, '.' + name + '.part')
    h = hashlib.sha256()
    left = size
    with open(tmp, 'wb') as f:
        while left:
            block = data.read(min(left, 1 << 20))
            if not block:
                sys.exit('the upload of %s ended early' % name)
            f.write(block)
            h.update(block)
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    if h.hexdigest() != want:
        os.unlink(tmp)
        sys.exit('%s arrived damaged' % name)
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(house, name))
fd = os.open(house, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


@dataclass(frozen=True, slots=True)
class HostProbe:
    python: str
    wheels: dict[str, str]  # wheel name -> sha256, in the host's wheelhouse
    installed: dict[str, str]  # wheel name -> sha256, installed in the venv (`.installed.json`)
    dropping: tuple[str, ...]  # distributions a killed install was removing
    venv: bool  # the venv's python exists
    agent: bool  # the venv's protectctl exists
    recorded: bool = True  # `.installed.json` exists (an install from before it has none)


def probe(conn: HostConnection, venv: str) -> HostProbe:
    """One command on the host: its python3 (which must be the control machine's major.minor:
    the wheelhouse holds binary wheels for it), its wheelhouse and what the venv holds."""
    status, out, err = conn.exec_bytes(("python3", "-c", _PROBE, venv, posixpath.join(venv, WHEELHOUSE_DIR)))
    want = "{}.{}".format(*python_version())
    if status != 0:
        raise RemoteError(
            f"host {conn.name}: no python3 ({err.decode(errors='replace').strip()[-200:]})",
            hint=f"install Python {want} on the host",
        )
    try:
        found = json.loads(out)
        have = str(found["python"])
    except (ValueError, KeyError, TypeError) as error:
        raise RemoteError(f"host {conn.name}: the agent install probe answered {out[-200:]!r}") from error
    if have != want:
        raise RemoteError(
            f"host {conn.name}: python3 is {have}; the agent needs {want} (the control machine's)",
            hint=f"install python{want} on the host, or run protectctl under Python {have}",
        )
    recorded = found.get("installed")
    installed: dict[str, object] = recorded if isinstance(recorded, dict) else {}
    listed = installed.get("wheels")
    wheels: dict[str, object] = listed if isinstance(listed, dict) else {}
    pending = installed.get("dropping")
    dropping: list[object] = pending if isinstance(pending, list) else []
    return HostProbe(
        python=have,
        wheels={str(k): str(v) for k, v in (found.get("wheels") or {}).items()},
        installed={str(k): str(v) for k, v in wheels.items()},
        dropping=tuple(str(d) for d in dropping),
        venv=bool(found.get("venv")),
        agent=bool(found.get("agent")),
        recorded=isinstance(recorded, dict),
    )


def check_python(conn: HostConnection) -> str:
    """The host's python3; raises RemoteError unless its version matches the control machine's."""
    return probe(conn, "/nonexistent/protectctl-venv").python


def marker_path(venv: str) -> str:
    return posixpath.join(venv, MARKER)


def read_marker(conn: HostConnection, venv: str) -> dict[str, object] | None:
    data = conn.read_file(marker_path(venv))
    if data is None:
        return None
    try:
        found = json.loads(data)
    except ValueError:
        return {"version": "?", "digest": "?", "wheelhouse": "?"}
    return found if isinstance(found, dict) else None


def _dist_of(wheel: str) -> str:
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    try:
        return str(parse_wheel_filename(wheel)[0])
    except InvalidWheelFilename:
        return canonicalize_name(wheel.split("-")[0])


@dataclass(frozen=True, slots=True)
class InstallSteps:
    """What an install does on a host, given what it holds (pure: tests/unit/test_agent_install.py)."""

    upload: tuple[str, ...]  # wheels the host's wheelhouse lacks (or holds with other content)
    install: tuple[str, ...]  # wheels pip (force-)installs: not in the venv with this content
    remove: tuple[str, ...]  # distributions pip uninstalls: no longer selected
    kept: dict[str, str]  # wheels already installed and left alone (name -> sha256)


def steps(selected: Mapping[str, str], host: HostProbe) -> InstallSteps:
    upload = tuple(n for n in sorted(selected) if host.wheels.get(n) != selected[n])
    fresh = not (host.venv and host.agent)  # a new venv, or one whose protectctl went missing
    had = {} if fresh else host.installed
    install = tuple(n for n in sorted(selected) if not n.startswith("pip-") and had.get(n) != selected[n])
    kept = {n: s for n, s in had.items() if selected.get(n) == s}
    wanted = {_dist_of(n) for n in selected}
    # an install from before `.installed.json` installed what its wheelhouse holds
    known = host.wheels if not (fresh or host.recorded) else had
    gone = {_dist_of(n) for n in known} | set(host.dropping)
    remove = tuple(sorted(d for d in gone if d not in wanted and d != "pip"))
    return InstallSteps(upload, install, remove, kept)


def _upload(
    conn: HostConnection, house: Wheelhouse, remote_house: str, selected: Mapping[str, str], names: Sequence[str]
) -> None:
    files = [[n, (house.path / n).stat().st_size, selected[n]] for n in names]
    head = json.dumps({"keep": sorted(selected), "files": files}).encode() + b"\n"
    stream = b"".join([head, *((house.path / n).read_bytes() for n in names)])
    _run(conn, ("python3", "-c", _RECEIVE, remote_house), "uploading the agent wheelhouse", timeout_s=600, stdin=stream)


def _write_installed(
    conn: HostConnection, remote_house: str, wheels: Mapping[str, str], dropping: Sequence[str]
) -> None:
    body = json.dumps({"wheels": dict(sorted(wheels.items())), "dropping": sorted(dropping)}, indent=0)
    conn.write_file(posixpath.join(remote_house, INSTALLED), body.encode() + b"\n", mode=0o644)


def install(conn: HostConnection, venv: str, *, digest: str, extras: Iterable[str] = ()) -> dict[str, object]:
    """Install or upgrade the agent in `venv`; returns the marker (nothing done when it matches)."""
    chosen = _normalise_extras(extras)
    house = wheelhouse(chosen)
    selected = select(house, chosen)
    want: dict[str, object] = {
        "version": __version__,
        "digest": digest,
        "wheelhouse": _digest_of_hashes(selected),
        "extras": list(chosen),
    }
    have = read_marker(conn, venv)
    if have == want and conn.read_file(posixpath.join(venv, "bin", "protectctl")) is not None:
        return want
    host = probe(conn, venv)
    plan = steps(selected, host)
    remote_house = posixpath.join(venv, WHEELHOUSE_DIR)
    pip_wheel = next((n for n in selected if n.startswith("pip-")), None)
    if pip_wheel is None:
        raise ProtectctlError(f"the wheelhouse {house.path} has no pip wheel")
    if plan.install or plan.remove:
        # from here until the end the venv is in between: what it surely holds is what stays, and
        # what is to be removed is recorded before the upload takes the old wheels away
        conn.remove_file(marker_path(venv))
        _write_installed(conn, remote_house, plan.kept, plan.remove)
    if plan.upload or set(host.wheels) - set(selected):
        _upload(conn, house, remote_house, selected, plan.upload)
    python = posixpath.join(venv, "bin", "python")
    if not host.venv:
        _run(conn, ("python3", "-m", "venv", "--without-pip", venv), "creating the agent venv")
    pip = (python, posixpath.join(remote_house, pip_wheel, "pip"))
    if plan.remove:
        _run(
            conn,
            (*pip, "uninstall", "--quiet", "--yes", "--disable-pip-version-check", *plan.remove),
            "removing agent libraries",
        )
    if plan.install:
        # --no-compile: byte-compiling every dependency doubled the install time (docs/fleet.md)
        _run(
            conn,
            (
                *pip,
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-conflicts",  # --no-deps on purpose: the selection is the closure
                "--no-index",
                "--find-links",
                remote_house,
                "--no-compile",
                "--upgrade",
                "--force-reinstall",
                "--no-deps",
                *[posixpath.join(remote_house, n) for n in plan.install],
            ),
            "installing the agent",
            timeout_s=600,
        )
    if plan.install or plan.remove or host.installed != selected:
        _write_installed(conn, remote_house, selected, ())
    conn.write_file(marker_path(venv), json.dumps(want, sort_keys=True).encode() + b"\n", mode=0o644)
    return want


def uninstall(conn: HostConnection, venv: str) -> None:
    """Remove exactly what install made: the venv (wheelhouse and marker inside it)."""
    if read_marker(conn, venv) is None and conn.read_file(posixpath.join(venv, "bin", "protectctl")) is None:
        return  # not ours (or already gone): never remove what we did not install
    conn.remove_tree(venv)


def _run(conn: HostConnection, argv: tuple[str, ...], what: str, *, timeout_s: float = 120, stdin: bytes = b"") -> None:
    status, _, err = conn.exec_bytes(argv, stdin=stdin, timeout_s=timeout_s)
    if status != 0:
        raise RemoteError(
            f"host {conn.name}: {what} failed (exit {status}): {err.decode(errors='replace').strip()[-400:]}"
        )
