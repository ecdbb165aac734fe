"""Pre/post scripts of a protection group, run around a snapshot.

A script is a command line split like a shell would (shlex) but never run through a
shell. It runs in its own session so a timeout kills the whole process group: a quiesce
script that forks a helper must not outlive its limit. stdout and stderr are merged,
logged, and kept (tail) for the error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from protectctl.errors import ProviderError

log = logging.getLogger(__name__)

_TAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class ScriptResult:
    phase: str
    argv: tuple[str, ...]
    returncode: int | None  # None: killed at the timeout
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        what = "timed out" if self.returncode is None else f"exited with status {self.returncode}"
        tail = self.output[-_TAIL_CHARS:].strip()
        return f"{self.phase} script {self.argv[0]} {what}" + (f": {tail}" if tail else "")


def run_script(phase: str, command: str, *, timeout_s: float, env: Mapping[str, str] | None = None) -> ScriptResult:
    """Run `command`; raises ProviderError only when it cannot be started."""
    try:
        argv = tuple(shlex.split(command))
    except ValueError as err:
        raise ProviderError(f"{phase} script {command!r} cannot be parsed: {err}") from err
    if not argv:
        raise ProviderError(f"{phase} script is empty")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except OSError as err:
        raise ProviderError(f"{phase} script {argv[0]} cannot be started: {err.strerror}") from err
    returncode, raw = _wait(proc, timeout_s)
    result = ScriptResult(phase, argv, returncode, raw.decode("utf-8", "replace"), time.monotonic() - started)
    log.info(
        "script.finished",
        extra={"phase": phase, "argv": argv[0], "status": returncode, "output": result.output[-_TAIL_CHARS:]},
    )
    return result


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, bytes]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
