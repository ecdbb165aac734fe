"""`protectctl hosts check [NAME]`: reachability, host key, python, agent, timers, disk."""

from __future__ import annotations

from typing import Annotated

import typer

from protectctl.cli.helpformat import HelpGroup


def register(app: typer.Typer) -> None:
    hosts_app = typer.Typer(cls=HelpGroup, help="Inspect the hosts of the policy.", no_args_is_help=True)
    app.add_typer(hosts_app, name="hosts")

    @hosts_app.command("check")
    def check(
        ctx: typer.Context,
        name: Annotated[str | None, typer.Argument(help="One Host (default: all).")] = None,
        json_mode: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Check each host: reachable, host key, python, agent version, timers, disk; exit 1 on a problem."""
        from protectctl import api
        from protectctl.cli.env import env_of
        from protectctl.cli.views import host_check_json, host_check_text

        env = env_of(ctx, json_mode)
        reports = api.hosts_check(env.policy_dir, name)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "hosts": [host_check_json(r) for r in reports]})
        else:
            for r in reports:
                env.output.text(host_check_text(r))
        raise typer.Exit(0 if all(r.ok for r in reports) else 1)
