"""`protectctl alerts`: Prometheus alerting rules from the policy's SLAs (docs/monitoring.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def alerts(
        ctx: typer.Context,
        out: Annotated[Path | None, typer.Option("--out", help="Write the rules file here (else stdout).")] = None,
    ) -> None:
        """Prometheus alerting rules derived from each source's SLA (check with `promtool check rules`)."""
        from protectctl import api
        from protectctl.cli.env import Env

        env: Env = ctx.obj
        text = api.alerts(env.policy_dir, out)
        if out is None:
            env.output.text(text.rstrip("\n"))
        else:
            env.output.info(f"wrote {out}")
