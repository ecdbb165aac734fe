"""The provider seam, proven from outside: a provider package written here (not in the tree),
installed into the CLI's environment through the `protectctl.providers` entry point only,
is declared in a policy, validated with file:line:col from its own spec model and checks,
appears in `protectctl schema`, and protects and restores data with `run sync` and
`restore --to-time` — with no line of protectctl changed for it.

The package follows docs/architecture.md, "How to write a provider". It is "installed" the
way importlib.metadata finds any distribution: a directory on the subprocesses' PYTHONPATH
holding the package and a `*.dist-info` with METADATA and entry_points.txt, so nothing leaks
into the environment the other tests share.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli, write_policy

PROVIDER = '''
"""A third party's provider: the top-level files of a directory that end in a suffix."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from protectctl.policy.model import CamelSpec
from protectctl.provider import (
    RestoreOutcome, RestoreRequest, SnapshotOutcome, SnapshotRequest, SnapshotStats, SpecProblem, Traits, Tree,
    file_node, restore_tree,
)


class TextfilesSpec(CamelSpec):
    dir: str = Field(pattern=r"^/", description="the directory whose files are protected")
    suffix: str = Field(".txt", pattern=r"^[.][a-z0-9]+$", description="only files ending so")


class TextfilesProvider:
    kind = "textfiles"
    spec_model = TextfilesSpec
    traits = Traits()

    def check_member(self, spec: BaseModel, *, source: str, hosts: tuple[str, ...] | None) -> list[SpecProblem]:
        assert isinstance(spec, TextfilesSpec)
        if spec.dir == "/":
            return [SpecProblem(("dir",), "dir must not be the root directory", "name the directory to protect")]
        return []

    def snapshot(self, request: SnapshotRequest) -> SnapshotOutcome:
        sink, suffix = request.sink, str(request.spec["suffix"])
        nodes = []
        for path in sorted(Path(str(request.spec["dir"])).iterdir()):
            if path.is_file() and path.name.endswith(suffix):
                data = path.read_bytes()
                nodes.append(file_node(path.name, path.stat(), size=len(data), chunks=sink.store_content(data),
                                       content_hash=sink.hash_content(data)))
                request.progress.advance(files=1)
        size = sum(n.size for n in nodes)
        return SnapshotOutcome(tree=sink.save_tree(Tree(tuple(nodes))),
                               stats=SnapshotStats(files=len(nodes), bytes_total=size, bytes_read=size),
                               errors=(), extra={"suffix": suffix}, finish=lambda point_id: None)

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        assert request.point.tree is not None
        target = request.target if request.target is not None else Path(str(request.spec["dir"]))
        return restore_tree(request.reader, request.point.tree, target, subpaths=request.subpaths,
                            dry_run=request.dry_run, overwrite=request.overwrite, progress=request.progress)
'''

POLICY = """\
apiVersion: protectctl/v1
kind: Host
metadata: {name: local}
spec: {address: local, root: ./.protectctl/root}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {name: key}
spec:
  passphrase: {file: ./.protectctl/passphrase}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {name: primary}
spec: {type: local, path: ./.protectctl/repo, encryption: {key: key}}
---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {name: notes}
spec:
  sla: bronze
  storage: primary
  members:
    - name: texts
      host: local
      textfiles:
        dir: DATA
        suffix: .txt
"""


@pytest.fixture
def plugin(tmp_path: Path) -> dict[str, str]:
    """The provider package and its distribution metadata; the env that "installs" it."""
    site = tmp_path / "site"
    (site / "textfiles_provider").mkdir(parents=True)
    (site / "textfiles_provider" / "__init__.py").write_text(textwrap.dedent(PROVIDER))
    info = site / "textfiles_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: textfiles-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[protectctl.providers]\ntextfiles = textfiles_provider:TextfilesProvider\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return cli_env({"PYTHONPATH": path})


def test_an_installed_provider_is_validated_by_its_own_spec(tmp_path: Path, plugin: dict[str, str]) -> None:
    bad = POLICY.replace("dir: DATA", "dir: relative/dir").replace("suffix: .txt", "suffix: .txt\n        sufix: .md")
    policy = write_policy(tmp_path / "bad", bad)
    out = run_cli(policy, "validate", expect=1, env=plugin).stderr
    file = policy / "protect.yaml"
    assert f"{file}:27:14: error: `members[0].textfiles.dir`: String should match pattern '^/'" in out, out
    assert f"{file}:29:16: error: unknown field `sufix` (did you mean `suffix`?" in out, out
    root = write_policy(tmp_path / "root", POLICY.replace("dir: DATA", "dir: /"))
    out = run_cli(root, "validate", expect=1, env=plugin).stderr
    assert f"{root / 'protect.yaml'}:27:14: error: dir must not be the root directory" in out, out  # its check
    # without the package installed the kind is unknown, and said so where it is written
    out = run_cli(root, "validate", expect=1).stderr
    assert f"{root / 'protect.yaml'}:26:7: error: unknown field `textfiles`" in out, out


def test_an_installed_provider_appears_in_the_schema(tmp_path: Path, plugin: dict[str, str]) -> None:
    run_cli(None, "schema", "--out", str(tmp_path / "schemas"), env=plugin)
    schema = json.loads((tmp_path / "schemas" / "protectiongroup.json").read_text())
    member = schema["$defs"]["MemberSpec"]["properties"]
    assert {"filesystem", "postgresql", "textfiles"} <= set(member)
    spec = schema["$defs"]["TextfilesSpec"]
    assert spec["properties"]["dir"]["pattern"] == "^/" and spec["additionalProperties"] is False


def test_an_installed_provider_protects_and_restores(tmp_path: Path, plugin: dict[str, str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"alpha\n" * 1000)
    (data / "b.txt").write_bytes(os.urandom(200_000))
    (data / "skip.md").write_text("not a text file")
    policy = write_policy(tmp_path / "policy", POLICY.replace("dir: DATA", f"dir: {data}"))
    run_cli(policy, "validate", env=plugin)
    run_cli(policy, "apply", "--auto-approve", env=plugin)
    done = json.loads(run_cli(policy, "run", "sync", "notes", "--json", env=plugin, timeout=120).stdout)
    assert json.dumps(done).count('"ok": true') >= 1, done
    target = tmp_path / "restored"
    run_cli(policy, "restore", "notes/texts", "--to-time", "latest", "--target", str(target), env=plugin, timeout=120)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    for name in ("a.txt", "b.txt"):
        assert (target / name).read_bytes() == (data / name).read_bytes()
    refused = run_cli(
        policy,
        "restore",
        "notes/texts",
        "--to-time",
        "latest",
        "--target",
        str(tmp_path / "r2"),
        "--database",
        "x",
        "--as",
        "y",
        expect=1,
        env=plugin,
    ).stderr
    assert "notes/texts is a textfiles source: its restore takes no --as, --database" in refused, refused
