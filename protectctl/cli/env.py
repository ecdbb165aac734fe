"""What every command gets from the root callback: the policy directory, the output, the flags.

A leaf: the command modules import it, and cli/main.py (which registers them) makes it, so no
command module needs cli/main.py to name these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from protectctl.cli.output import Output


@dataclass(slots=True)
class Env:
    policy_dir: Path
    output: Output
    debug: bool
    agent_config: Path | None


def env_of(ctx: typer.Context, json_mode: bool = False) -> Env:
    env: Env = ctx.obj
    if json_mode:
        env.output.json_mode = True
    return env
