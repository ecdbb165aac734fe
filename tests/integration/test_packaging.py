"""The wheel: the top-level folders providers/ and policies/ install under protectctl's name.

A real wheel is built from a copy of the tree (as the fleet's agent wheelhouse is; once per
session, tests/integration/wheel.py), then installed into a directory of its own:
`protectctl.providers.*` and `protectctl.policies` import from there, no top-level `providers`
or `policies` lands beside them, and the built-in providers are registered as entry points
under their new names.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree_files(part: str, prefix: str) -> set[str]:
    return {
        f"{prefix}/{p.relative_to(ROOT / part).as_posix()}"
        for p in (ROOT / part).rglob("*")
        if p.is_file() and p.suffix in (".py", ".yaml", ".j2", ".typed") and "__pycache__" not in p.parts
    }


def test_the_wheel_maps_providers_and_policies_under_protectctl(project_wheel: Path, tmp_path: Path) -> None:
    wheel = project_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    # every source file of the three folders is in the wheel (pyproject's package list is explicit)
    expected = (
        _tree_files("protectctl", "protectctl")
        | _tree_files("providers", "protectctl/providers")
        | _tree_files("policies", "protectctl/policies")
    )
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.split("/")[0] in ("providers", "policies")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "filesystem = protectctl.providers.filesystem:FilesystemProvider" in text, text
    assert "postgresql = protectctl.providers.postgresql:PostgresqlProvider" in text, text

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "protectctl"]
    probe = (
        "import importlib, importlib.resources as r, protectctl.providers.filesystem as f, "
        "protectctl.providers.postgresql as p, protectctl.provider as reg\n"
        f"assert f.__file__.startswith({str(site)!r}) and p.__file__.startswith({str(site)!r})\n"
        "assert r.files('protectctl.policies').joinpath('tiers.yaml').is_file()\n"
        "assert reg.load_provider('postgresql').kind == 'postgresql'\n"
        "for name in ('providers', 'policies'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'a top-level {name} is importable')\n"
    )
    # run outside the source tree, with the installed copy first on the path
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
