"""The agent install's choices, cheaply: which wheels an agent needs (its extras), what a host
lacks, what pip must (re)install or remove, and an install driven on a local directory whose
host-side scripts (probe, upload) run for real while pip and venv are stood in for.

The real install over sshd is tests/integration/test_fleet*.py and test_wheel_install.py.
"""

from __future__ import annotations

import json
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from protectctl.errors import ProtectctlError, RemoteError
from protectctl.plan.resources import HostFacts, agent_extras, build_resources
from protectctl.policy.load import load_policy
from protectctl.provision import agent_install as ai
from protectctl.provision.host import LocalHost

# protectctl's real shape: boto3 behind the s3 extra; psycopg[binary] pulls psycopg-binary
DISTS: dict[str, Sequence[str]] = {
    "protectctl": ["pydantic>=2", "psycopg[binary]>=3.1", 'boto3>=1.35; extra == "s3"'],
    "pydantic": ["typing-extensions"],
    "typing_extensions": [],
    "psycopg": [
        'psycopg-binary==3.3; implementation_name != "pypy" and extra == "binary"',
        'tzdata; sys_platform == "win32"',
    ],
    "psycopg_binary": [],
    "boto3": ["botocore>=1.44", "s3transfer"],
    "botocore": ["urllib3"],
    "s3transfer": ["botocore"],
    "urllib3": [],
    "pip": [],
}
BASE = {"protectctl", "pydantic", "typing-extensions", "psycopg", "psycopg-binary", "pip"}
S3 = {"boto3", "botocore", "s3transfer", "urllib3"}


def make_wheel(
    directory: Path, name: str, version: str = "1.0", requires: Sequence[str] = (), payload: bytes = b""
) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        archive.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        archive.writestr(f"{name}/__init__.py", payload)
    return path


@pytest.fixture
def house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ready-made wheelhouse of tiny wheels (PROTECTCTL_WHEELHOUSE), every extra included."""
    directory = tmp_path / "house"
    directory.mkdir()
    for name, requires in DISTS.items():
        make_wheel(directory, name, requires=requires)
    monkeypatch.setenv("PROTECTCTL_WHEELHOUSE", str(directory))
    return directory


def dists(selected: dict[str, str]) -> set[str]:
    return {ai._dist_of(n) for n in selected}


def test_the_closure_follows_markers_extras_and_a_dependency_s_own_extras() -> None:
    def requires_of(name: str) -> Sequence[str] | None:
        return DISTS.get(name.replace("-", "_"))

    assert ai.requirement_closure("protectctl", (), requires_of) == BASE - {"pip"}
    assert ai.requirement_closure("protectctl", ("s3",), requires_of) == (BASE - {"pip"}) | S3


def test_an_agent_gets_the_s3_libraries_only_with_the_s3_extra(house: Path) -> None:
    wheels = ai.wheelhouse()
    assert dists(ai.select(wheels)) == BASE
    assert dists(ai.select(wheels, ["s3"])) == BASE | S3
    with pytest.raises(ProtectctlError, match="unknown agent extra"):
        ai.select(wheels, ["gpu"])
    (house / "botocore-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ProtectctlError, match=r"lacks botocore \(needed by protectctl\[s3\]\)") as err:
        ai.select(ai.wheelhouse(), ["s3"])
    assert err.value.hint is not None and "pip install 'protectctl[s3]'" in err.value.hint


def test_steps_upload_what_the_host_lacks_and_install_what_the_venv_lacks(house: Path) -> None:
    base = ai.select(ai.wheelhouse())
    fresh = ai.HostProbe("3.11", {}, {}, (), venv=False, agent=False)
    first = ai.steps(base, fresh)
    assert set(first.upload) == set(base) and set(first.install) == set(base) - {"pip-1.0-py3-none-any.whl"}
    assert first.remove == () and first.kept == {}

    done = ai.HostProbe("3.11", dict(base), dict(base), (), venv=True, agent=True)
    assert ai.steps(base, done) == ai.InstallSteps((), (), (), dict(base))

    with_s3 = ai.select(ai.wheelhouse(), ["s3"])
    more = ai.steps(with_s3, done)
    assert {ai._dist_of(n) for n in more.upload} == S3 and {ai._dist_of(n) for n in more.install} == S3

    # a changed protectctl (same name, other bytes): only it goes up and is reinstalled
    changed = {**base, "protectctl-1.0-py3-none-any.whl": "f" * 64}
    one = ai.steps(changed, done)
    assert one.upload == one.install == ("protectctl-1.0-py3-none-any.whl",)

    # back from s3: its libraries are removed; a removal a killed install left pending is finished
    had_s3 = ai.HostProbe("3.11", dict(with_s3), dict(with_s3), (), venv=True, agent=True)
    assert set(ai.steps(base, had_s3).remove) == S3
    pending = ai.HostProbe("3.11", dict(base), dict(base), ("boto3",), venv=True, agent=True)
    assert ai.steps(base, pending).remove == ("boto3",)
    # an agent installed before `.installed.json`: reinstalled, and what its wheelhouse held and is
    # no longer selected (the S3 libraries) is removed
    legacy = ai.HostProbe("3.11", dict(with_s3), {}, (), venv=True, agent=True, recorded=False)
    assert set(ai.steps(base, legacy).remove) == S3 and len(ai.steps(base, legacy).install) == len(base) - 1
    # a venv whose protectctl went missing is installed afresh, whatever it records
    broken = ai.HostProbe("3.11", dict(base), dict(base), (), venv=True, agent=False)
    assert len(ai.steps(base, broken).install) == len(base) - 1


class StandIn(LocalHost):
    """A local 'host' whose probe and upload scripts run for real; venv and pip are recorded."""

    def __init__(self) -> None:
        super().__init__("h1")
        self.commands: list[tuple[str, ...]] = []
        self.uploads: list[list[str]] = []
        self.fail_pip = False

    def exec_bytes(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        argv = tuple(argv)
        if argv[:3] == ("python3", "-m", "venv"):
            self.commands.append(("venv",))
            (Path(argv[-1]) / "bin").mkdir(parents=True)
            (Path(argv[-1]) / "bin" / "python").write_text("")
            return 0, b"", b""
        if len(argv) > 2 and argv[1].endswith(".whl/pip"):
            self.commands.append(argv[2:])
            if self.fail_pip:
                return 9, b"", b"killed"
            if argv[2] == "install":
                (Path(argv[0]).parent / "protectctl").write_text("")
            return 0, b"", b""
        if argv[:2] == ("python3", "-c") and argv[2] == ai._RECEIVE:
            self.uploads.append(json.loads(stdin.split(b"\n", 1)[0])["files"])
        return super().exec_bytes(argv, stdin=stdin, timeout_s=timeout_s)

    def pip_runs(self) -> list[tuple[str, ...]]:
        return [c for c in self.commands if c[0] in ("install", "uninstall")]


def installed_dists(argv: Sequence[str]) -> set[str]:
    return {ai._dist_of(Path(a).name) for a in argv if a.endswith(".whl")}


def test_install_uploads_and_installs_only_what_changed_and_survives_a_killed_pip(house: Path, tmp_path: Path) -> None:
    host = StandIn()
    venv = str(tmp_path / "root" / "opt" / "protectctl")
    marker = ai.install(host, venv, digest="d1")
    assert marker["extras"] == [] and marker["version"]
    ((pip_install,),) = [host.pip_runs()]
    assert installed_dists(pip_install) == BASE - {"pip"}
    assert {ai._dist_of(f[0]) for f in host.uploads[0]} == BASE
    assert {ai._dist_of(p.name) for p in (Path(venv) / "wheelhouse").glob("*.whl")} == BASE

    # the same marker: nothing is done, not even a probe
    host.commands.clear(), host.uploads.clear()
    assert ai.install(host, venv, digest="d1") == marker
    assert host.commands == [] and host.uploads == []

    # the host is given an s3 storage: the S3 libraries go up and in, nothing else
    s3 = ai.install(host, venv, digest="d1", extras=["s3"])
    assert s3["extras"] == ["s3"] and s3["wheelhouse"] != marker["wheelhouse"]
    assert {ai._dist_of(f[0]) for f in host.uploads[0]} == S3
    assert [installed_dists(c) for c in host.pip_runs()] == [S3]

    # a wheel damaged on the host is found by its hash and sent again
    pyd = Path(venv) / "wheelhouse" / "pydantic-1.0-py3-none-any.whl"
    pyd.write_bytes(b"garbage")
    make_wheel(house, "protectctl", requires=DISTS["protectctl"], payload=b"# changed\n")
    host.commands.clear(), host.uploads.clear()
    with_change = {"version": s3["version"], "digest": "d2"}
    host.fail_pip = True  # killed inside pip: no marker, and the venv records only untouched wheels
    with pytest.raises(RemoteError, match="installing the agent failed"):
        ai.install(host, venv, digest="d2", extras=["s3"])
    assert ai.read_marker(host, venv) is None
    recorded = json.loads((Path(venv) / "wheelhouse" / ai.INSTALLED).read_text())["wheels"]
    assert "protectctl-1.0-py3-none-any.whl" not in recorded and "boto3-1.0-py3-none-any.whl" in recorded
    assert {f[0] for f in host.uploads[0]} == {"protectctl-1.0-py3-none-any.whl", pyd.name}

    host.fail_pip = False
    host.commands.clear(), host.uploads.clear()
    finished = ai.install(host, venv, digest="d2", extras=["s3"])
    assert {k: finished[k] for k in with_change} == with_change
    assert host.uploads == [] and [installed_dists(c) for c in host.pip_runs()] == [{"protectctl"}]

    # s3 taken away: its libraries are uninstalled and leave the host's wheelhouse
    host.commands.clear()
    ai.install(host, venv, digest="d2")
    assert [c[0] for c in host.pip_runs()] == ["uninstall"]
    assert {a for a in host.pip_runs()[0][1:] if not a.startswith("-")} == S3
    assert {ai._dist_of(p.name) for p in (Path(venv) / "wheelhouse").glob("*.whl")} == BASE

    ai.uninstall(host, venv)
    assert not Path(venv).exists()


def test_a_host_with_another_python_is_refused_before_anything_is_sent(house: Path, tmp_path: Path) -> None:
    class OtherPython(StandIn):
        def exec_bytes(
            self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float | None = None
        ) -> tuple[int, bytes, bytes]:
            if argv[:2] == ("python3", "-c") and argv[2] == ai._PROBE:
                return 0, json.dumps({"python": "3.9", "wheels": {}}).encode(), b""
            return super().exec_bytes(argv, stdin=stdin, timeout_s=timeout_s)

    host = OtherPython()
    with pytest.raises(RemoteError, match=r"python3 is 3\.9; the agent needs 3\.\d+"):
        ai.install(host, str(tmp_path / "venv"), digest="d")
    assert host.uploads == [] and host.commands == []


POLICY = textwrap.dedent("""\
    apiVersion: protectctl/v1
    kind: EncryptionKey
    metadata: {name: k}
    spec: {passphrase: {env: PASS}}
    ---
    apiVersion: protectctl/v1
    kind: Storage
    metadata: {name: objects}
    spec: {type: s3, bucket: backups, encryption: {key: k}}
    ---
    apiVersion: protectctl/v1
    kind: Storage
    metadata: {name: disk}
    spec: {type: local, path: ./repo, encryption: {key: k}}
    ---
    apiVersion: protectctl/v1
    kind: SLA
    metadata: {name: daily}
    spec: {sync: every 1h, full: daily at 20:00, retention: {disk: 7d}}
    ---
    apiVersion: protectctl/v1
    kind: ProtectionGroup
    metadata: {name: cloud}
    spec:
      sla: daily
      storage: objects
      members:
        - {name: a, host: h1, filesystem: {path: /srv/a}}
    ---
    apiVersion: protectctl/v1
    kind: ProtectionGroup
    metadata: {name: onsite}
    spec:
      sla: daily
      storage: disk
      members:
        - {name: b, host: h2, filesystem: {path: /srv/b}}
    """)


def test_the_plan_gives_the_s3_extra_to_agents_of_s3_storages_only(tmp_path: Path) -> None:
    hosts = "".join(
        f"---\napiVersion: protectctl/v1\nkind: Host\nmetadata: {{name: {h}}}\n"
        f'spec: {{address: 10.0.0.{i}, identityFile: ./id, hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i}"}}\n'
        for i, h in enumerate(("h1", "h2"), start=1)
    )
    (tmp_path / "p.yaml").write_text(POLICY + hosts)
    policy = load_policy(tmp_path)
    assert agent_extras(policy) == {"h1": ("s3",)}
    facts = {h: HostFacts(("protectctl",), "1", "d") for h in ("h1", "h2")}
    agents = {r.address.name: r.inputs for r in build_resources(policy, facts) if r.address.kind == "agent"}
    assert agents["h1"]["install"]["extras"] == ["s3"]
    assert "extras" not in agents["h2"]["install"]  # unchanged inputs (and plans) for hosts without s3


def test_a_source_build_reuses_the_dependency_wheels_of_the_same_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first build of a requirement set runs `pip wheel` on everything; a changed source
    builds protectctl's wheel alone and links the kept dependency wheels."""
    root = tmp_path / "tree"
    for part in ("protectctl", "providers", "policies"):
        (root / part).mkdir(parents=True)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "protectctl"\ndependencies = ["pydantic>=2"]\n'
        '[project.optional-dependencies]\ns3 = ["boto3"]\n'
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def pip(args: list[str]) -> None:
        calls.append(args)
        out = Path(args[args.index("--wheel-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        names = ["protectctl"] if "--no-deps" in args else ["protectctl", "pydantic", "pip"]
        for name in names:
            make_wheel(out, name)

    monkeypatch.setattr(ai, "_pip", pip)
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        ai._build_from_source(root, Path(ai.tempfile.mkdtemp(dir=tmp_path)), out)
        assert {ai._dist_of(p.name) for p in out.glob("*.whl")} == {"protectctl", "pydantic", "pip"}
    assert ["--no-deps" in c for c in calls] == [False, True]
    # other requirements (an extra, a changed dependency) are another set: built whole again
    ai._build_from_source(root, Path(ai.tempfile.mkdtemp(dir=tmp_path)), tmp_path / "out3", ("s3",))
    pyproject.write_text(pyproject.read_text().replace("pydantic>=2", "pydantic>=2.6"))
    ai._build_from_source(root, Path(ai.tempfile.mkdtemp(dir=tmp_path)), tmp_path / "out4")
    assert ["--no-deps" in c for c in calls] == [False, True, False, False]


def test_an_installed_distribution_is_packed_back_into_a_wheel_pip_accepts(tmp_path: Path) -> None:
    """The wheel of an installed distribution (a control machine installed from wheels): its
    name from the .dist-info and WHEEL tags, every file, a RECORD of their hashes written last."""
    import base64
    import csv
    import hashlib
    import io
    from importlib.metadata import distribution

    from packaging.utils import parse_wheel_filename

    assert ai._repack(distribution("packaging"), tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    name, version, _, tags = parse_wheel_filename(wheel.name)
    assert name == "packaging" and str(version) == distribution("packaging").version
    assert {str(t) for t in tags} == {"py3-none-any"}
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert names[-1].endswith(".dist-info/RECORD") and "packaging/version.py" in names
        rows = list(csv.reader(io.StringIO(archive.read(names[-1]).decode())))
        assert [r[0] for r in rows] == names
        for path, digest, size in rows[:-1]:
            data = archive.read(path)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
    assert ai._wheel_name(
        "x-1.0.dist-info",
        "Wheel-Version: 1.0\nBuild: 2\nTag: cp311-cp311-manylinux_2_17_x86_64\nTag: cp311-cp311-manylinux2014_x86_64\n",
    ) == ("x-1.0-2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    assert ai._wheel_name("x-1.0.dist-info", "Wheel-Version: 1.0\n") is None  # no tags: not packable
