"""Shared fixtures: real policy directories in tmp_path and the real CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.seaweed import Seaweed

# One hypothesis policy for everyone, CI and `python -m pytest` on a fresh clone alike: examples
# derived from each test (not from a random seed), no example database carried between runs, no
# wall-clock deadline (2 shared cores), and a failure printed with the blob that replays it
# (`@reproduce_failure`). HYPOTHESIS_PROFILE=explore searches afresh and deeper, for a local hunt.
settings.register_profile("protectctl", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile(
    "explore",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "protectctl"))


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


@pytest.fixture
def no_racy_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust files written just before a sync (agent/journal.py distrusts a change within
    RACY_SLACK_NS of the last sync's start): for tests that count what a second sync reads.
    Set in the environment, so CLI subprocesses see it too."""
    monkeypatch.setenv("PROTECTCTL_RACY_SLACK_NS", "0")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`. Tests wait for
    an event this way, never for a fixed time: a loaded machine is slow, not wrong."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting until {what}"
        time.sleep(0.01)


def write_policy(directory: Path, documents: Sequence[str] | str, name: str = "protect.yaml") -> Path:
    """Write YAML documents (joined with ---) into directory/name and return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    text = documents if isinstance(documents, str) else "---\n".join(documents)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


def _random_order_line(config: pytest.Config) -> str | None:
    """How to replay this run's test order (pytest-randomly), or None when it is off."""
    if not config.pluginmanager.hasplugin("randomly"):
        return None
    seed = config.getoption("randomly_seed", None)
    return f"random test order: --randomly-seed={seed} replays it; -p no:randomly turns it off"


def _compile_bytecode() -> None:
    """Write the .pyc files of protectctl and its providers once, before the CLI subprocesses run.

    Under PYTHONDONTWRITEBYTECODE (set in some sandboxes and CI images) no process writes them,
    so every `protectctl` the tests start compiled its ~100 modules from source again: ~0.3 s
    of CPU each, more than the rest of its start-up. compileall writes them regardless and only
    rewrites the stale ones (a few ms when all are current)."""
    import compileall

    for package in ("protectctl", "providers"):
        compileall.compile_dir(REPO / package, quiet=2, workers=1)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A shell without job control starts a background job (`cmd &`, nohup, some CI runners)
    # with SIGINT ignored, and an ignored signal stays ignored across exec: every protectctl
    # the tests start would then shrug off the Ctrl-C that the interruption tests send. Give the
    # session the normal handler back, so its children start with the default disposition.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _compile_bytecode()
    # pytest-randomly says its seed in the header, which -q (our addopts) hides: say it here, and
    # again at the end, so a failure in any run can be replayed in the same order.
    line = _random_order_line(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.write_line(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    line = _random_order_line(config)
    if line:
        terminalreporter.write_line(line)


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
