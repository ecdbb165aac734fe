"""The protectctl command line (typer app in `protectctl.cli.main`)."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point.

    `protectctl --version` answers before typer is imported: monitoring and the agent
    install check call it on every host, and importing typer alone costs more than the
    interpreter's own start-up (tests/bench/bench_plan.py). `run sync|full` as the timers start
    it (and `-C DIR run sync`) runs without typer too (cli/timer.py).
    """
    if sys.argv[1:] == ["--version"]:
        from protectctl import __version__

        sys.stdout.write(f"protectctl {__version__}\n")
        return
    import os

    from protectctl.cli.timer import run_timer_job, timer_job

    job = timer_job(sys.argv[1:], os.environ)  # `run sync|full` read without typer (cli/timer.py)
    try:
        if job is not None:
            run_timer_job(job)
        from protectctl.cli.main import main as run

        run()
    finally:
        # The interpreter's shutdown runs the cyclic GC over every object still alive (botocore's
        # models, the index, ...): ~0.1 s of CPU per run, a fifth of a no-change s3 sync's. The
        # process is ending and frees them all at once; atexit handlers, flushing and module
        # teardown still run. (docs/object-storage.md, "Start-up and per-run cost")
        import gc

        gc.freeze()
