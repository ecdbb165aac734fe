"""Worker processes of the archiver (agent/workers.py) and the restorer (restore/workers.py).

A worker is a fresh interpreter (`python -I -c`, never a fork of a threaded process) started
with a small environment and no inherited descriptors but those asked for. Its stdin pipe
first carries the parent's import path, then the module's setup object (keys included: never
argv, the environment or a file), then tasks; its stdout pipe carries the answers. It asks
the kernel to SIGKILL it when the parent dies (`die_with_parent`, the first thing its
`worker_main` does), so a killed job leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# The bootstrap: read the parent's import path from stdin, then serve (the module's worker_main).
BOOT = (
    "import sys;from multiprocessing.connection import Connection as C;c=C(0,writable=False);"
    "sys.path[:]=c.recv();from {module} import worker_main;worker_main(c)"
)
ENV_KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PROTECTCTL_CRASH_POINT", "PROTECTCTL_CRASH_ANNOUNCE")
_PR_SET_PDEATHSIG = 1


def spawn(
    module: str, setup: object, *, pass_fds: tuple[int, ...] = ()
) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
    """A worker running `module.worker_main`, sent `setup`: (process, tasks, answers)."""
    from multiprocessing.connection import Connection

    boot = BOOT.format(module=module)
    env = {k: v for k, v in os.environ.items() if k in ENV_KEPT or k.startswith("LC_")}
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", boot, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a worker's failure reaches the parent as one line, in its pipe
        env=env,
        close_fds=True,
        pass_fds=pass_fds,
    )
    assert proc.stdin is not None and proc.stdout is not None
    tasks = Connection(os.dup(proc.stdin.fileno()), readable=False)
    answers = Connection(os.dup(proc.stdout.fileno()), writable=False)
    proc.stdin.close()
    proc.stdout.close()
    tasks.send(list(sys.path))
    tasks.send(setup)
    return proc, tasks, answers


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux), also if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def exit_reason(proc: subprocess.Popen[bytes]) -> str:
    """Why a worker that stopped answering ended (waiting up to a second for it to end)."""
    code = proc.poll()
    if code is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=1)
    return "killed by a signal" if code is not None and code < 0 else f"exit status {code}"
