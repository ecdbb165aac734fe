"""The protectctl command line (typer app in `protectctl.cli.main`)."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point.

    `protectctl --version` answers before typer is imported: monitoring and the agent
    install check call it on every host, and importing typer alone costs more than the
    interpreter's own start-up (tests/bench/bench_plan.py).
    """
    if sys.argv[1:] == ["--version"]:
        from protectctl import __version__

        sys.stdout.write(f"protectctl {__version__}\n")
        return
    from protectctl.cli.main import main as run

    run()
