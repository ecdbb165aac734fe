"""state list | show ADDR | rm ADDR... | unlock."""

from __future__ import annotations

from typing import Annotated

import typer

from protectctl.cli.env import env_of
from protectctl.cli.helpformat import HelpGroup
from protectctl.errors import StateError


def register(app: typer.Typer) -> None:
    state_app = typer.Typer(cls=HelpGroup, help="Inspect and repair the recorded state.", no_args_is_help=True)
    app.add_typer(state_app, name="state")

    @state_app.command("list")
    def list_(ctx: typer.Context, json_mode: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Every resource in the state."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        state = api.read_state(env.policy_dir)
        if env.output.json_mode:
            env.output.document(
                {
                    "format_version": "1.0",
                    "lineage": state.lineage,
                    "serial": state.serial,
                    "resources": sorted(state.resources),
                }
            )
            return
        for address in sorted(state.resources):
            env.output.text(address)

    @state_app.command("show")
    def show(
        ctx: typer.Context,
        address: str,
        json_mode: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """One resource as JSON: inputs, outputs, when it was applied."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        state = api.read_state(env.policy_dir)
        rec = state.resources.get(address)
        if rec is None:
            raise StateError(f"{address} is not in the state", hint="see `protectctl state list`")
        # one JSON document with or without --json: scripts have always parsed this output
        env.output.document({"format_version": "1.0", "address": address, **rec.model_dump(mode="json")})

    @state_app.command("rm")
    def rm(
        ctx: typer.Context,
        addresses: Annotated[list[str], typer.Argument(help="Resource addresses.")],
        lock_timeout: Annotated[str, typer.Option("--lock-timeout")] = "0",
    ) -> None:
        """Forget resources without touching the hosts (apply will create them again)."""
        from protectctl import api
        from protectctl.cli.plan import lock_seconds

        env = env_of(ctx)
        for address in api.state_rm(env.policy_dir, addresses, lock_seconds(lock_timeout)):
            env.output.info(f"removed {address} from the state")

    @state_app.command("unlock")
    def unlock(
        ctx: typer.Context, force: Annotated[bool, typer.Option("--force", help="Break a live holder's lock.")] = False
    ) -> None:
        """Remove a state lock left behind."""
        from protectctl import api

        env = env_of(ctx)
        env.output.info(f"unlocked ({api.state_unlock(env.policy_dir, force)})")

    @state_app.command("migrate")
    def migrate(
        ctx: typer.Context,
        to: Annotated[str, typer.Option("--to", help="local | s3 | postgres (its fields in Settings.spec.state).")],
        lock_timeout: Annotated[str, typer.Option("--lock-timeout")] = "0",
        json_mode: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Copy the state, with its lineage and serial, to another backend; then set `backend:` to it."""
        from protectctl import api
        from protectctl.cli.plan import lock_seconds

        env = env_of(ctx, json_mode)
        source, target, lineage, serial = api.state_migrate(env.policy_dir, to, lock_seconds(lock_timeout))
        if env.output.json_mode:
            env.output.document(
                {"format_version": "1.0", "from": source, "to": target, "lineage": lineage, "serial": serial}
            )
            return
        env.output.info(f"copied the state (lineage {lineage}, serial {serial}) from {source} to {target}", always=True)
        env.output.info(f"now set `backend: {to}` in Settings.spec.state; the old copy is kept", always=True)
