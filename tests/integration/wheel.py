"""One wheel of this tree per test session, for the tests about the installed (non-editable) form.

Built from a copy of the tree (never writing build/ or egg-info into the working tree) without
build isolation: setuptools comes with the test extra, and an isolated build would set up a
fresh build environment from the index each time (25 s instead of 12 s at load 9). test_packaging
reads the wheel, test_wheel_install installs it into a fresh venv: neither changes it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(base: Path) -> Path:
    """A wheel of this tree (protectctl, providers, policies), built under base; returns its path."""
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for part in ("protectctl", "providers", "policies"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(base / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    shutil.rmtree(src)  # nothing of a source tree is left beside the wheel
    (wheel,) = (base / "dist").glob("protectctl-*.whl")
    return wheel


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's wheel of this tree (read-only for the tests that use it)."""
    return build_wheel(tmp_path_factory.mktemp("project-wheel"))
