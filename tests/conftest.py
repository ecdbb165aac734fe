"""Shared fixtures: real policy directories in tmp_path and the real CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.seaweed import Seaweed

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
QUICKSTART = EXAMPLES / "quickstart"
# The console script of this interpreter's install (editable in development, real in CI).
PROTECTCTL = shutil.which("protectctl", path=str(Path(sys.executable).parent)) or shutil.which("protectctl")

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def copy_example(name: str, dest: Path) -> Path:
    """A clean copy of examples/NAME: no state, repository or host root left by earlier runs."""
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(".protectctl", "__pycache__"))
    return dest


def cli_argv(directory: Path | None, *args: str) -> list[str]:
    base = [PROTECTCTL] if PROTECTCTL else [sys.executable, "-m", "protectctl"]
    return [*base, *(["-C", str(directory)] if directory is not None else []), *args]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROTECTCTL_AGENT_CONFIG", None)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    env.update(extra or {})
    return env


def run_cli(
    directory: Path | None,
    *args: str,
    expect: int | None = 0,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.CompletedProcess[str]:
    """Run `protectctl [-C DIR] ARGS` as a subprocess; assert the exit code and that no traceback leaked."""
    proc = subprocess.run(
        cli_argv(directory, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        stdin=stdin,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    if expect is not None:
        assert proc.returncode == expect, (
            f"protectctl {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """A copy of examples/quickstart in tmp_path (everything it writes stays under it)."""
    return copy_example("quickstart", tmp_path / "quickstart")


@pytest.fixture
def cli() -> CliRunner:
    return run_cli


def write_policy(directory: Path, documents: Sequence[str] | str, name: str = "protect.yaml") -> Path:
    """Write YAML documents (joined with ---) into directory/name and return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    text = documents if isinstance(documents, str) else "---\n".join(documents)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    """ONE real SeaweedFS S3 server on loopback for the whole session; tests make their own buckets."""
    from tests import seaweed as weed

    why = weed.available()
    if why:
        pytest.skip(why)
    server = weed.start_seaweed()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
