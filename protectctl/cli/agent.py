"""`protectctl agent ...`: hidden commands run on a protected host by apply, by the control
machine (over SSH) and by the services apply installs there.

What a provider's data source runs itself (e.g. an archive_command) is the provider's own:
it installs it on the host when it prepares it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from protectctl.cli.helpformat import HelpGroup
from protectctl.errors import ProtectctlError


def register(app: typer.Typer) -> None:
    agent_app = typer.Typer(
        cls=HelpGroup, help="Commands run on a protected host by apply and its services.", no_args_is_help=True
    )
    app.add_typer(agent_app, name="agent", hidden=True)

    @agent_app.command("prepare")
    def prepare(
        ctx: typer.Context,
        source_config: Annotated[Path, typer.Argument(help="The source config apply wrote on this host.")],
    ) -> None:
        """Apply, on an SSH host: let the source's provider prepare this host (e.g. PostgreSQL WAL
        archiving); prints {"changes": [...], "warnings": [...]} as JSON."""
        import json

        from protectctl import api
        from protectctl.cli.main import env_of

        env = env_of(ctx, True)
        outcome = api.prepare_on_agent(source_config, agent_config=env.agent_config)
        typer.echo(json.dumps(api.prepare_outcome_json(outcome)))

    @agent_app.command("prepare-preview")
    def prepare_preview(ctx: typer.Context) -> None:
        """`plan --refresh`, on an SSH host: what the source's provider would prepare here now,
        reading only. Reads {"provider", "source", "spec", "state_dir"} as JSON on stdin; prints
        {"changes": [...], "warnings": [...]} as JSON."""
        import json

        from protectctl import api
        from protectctl.cli.main import env_of
        from protectctl.errors import ProtectctlError

        env = env_of(ctx, True)
        request = _stdin_request("agent prepare-preview", ProtectctlError)
        outcome = api.preview_on_agent(request, agent_config=env.agent_config)
        typer.echo(json.dumps(api.prepare_outcome_json(outcome)))

    @agent_app.command("restore")
    def restore(ctx: typer.Context) -> None:
        """A restore sent by the control machine (JSON on stdin) onto this host; prints the result."""
        import json

        from protectctl import api
        from protectctl.cli.main import env_of
        from protectctl.errors import RestoreError

        env = env_of(ctx, True)
        request = _stdin_request("agent restore", RestoreError)
        result = api.restore_on_agent(request, agent_config=env.agent_config)
        typer.echo(json.dumps(result.to_json()))

    @agent_app.command("wal-stream")
    def wal_stream(
        ctx: typer.Context,
        group: Annotated[str, typer.Argument(help="Protection group.")],
        member: Annotated[str, typer.Option("--member", "-m", help="The member whose logs stream.")],
    ) -> None:
        """The log receiver service of a member whose provider streams logs, supervised, until SIGTERM."""
        from protectctl import api
        from protectctl.cli.main import env_of

        env = env_of(ctx, False)
        api.stream_logs(
            env.policy_dir,
            group,
            member,
            agent_config=env.agent_config,
            log=lambda line: typer.echo(f"protectctl wal-stream {group}/{member}: {line}", err=True),
        )

    @agent_app.command("watch")
    def watch(
        ctx: typer.Context,
        group: Annotated[str, typer.Argument(help="Protection group.")],
        member: Annotated[str, typer.Option("--member", "-m", help="The member whose tree is watched.")],
    ) -> None:
        """The change journal's watcher of a member (`changeJournal: watch`), supervised, until SIGTERM:
        records which directories change so a sync walks only those (docs/change-tracking.md)."""
        from protectctl import api
        from protectctl.agent.watch import watch_source
        from protectctl.cli.main import env_of
        from protectctl.errors import ProtectctlError
        from protectctl.provider import SourcePaths, load_provider

        env = env_of(ctx, False)
        (target,) = api.sources(env.policy_dir, agent_config=env.agent_config, group=group, member=member)
        provider = load_provider(str(target.inputs["provider"]))
        spec = target.inputs["spec"]
        if not isinstance(provider, SourcePaths) or spec.get("change_journal") != "watch":
            raise ProtectctlError(
                f"{group}/{member} has no change journal to watch",
                hint="set changeJournal: watch on a filesystem member",
            )
        watch_source(
            str(target.inputs["source"]),
            provider.source_paths(spec),
            target.state_dir,
            log=lambda line: typer.echo(f"protectctl watch {group}/{member}: {line}", err=True),
        )


def _stdin_request(command: str, error: type[ProtectctlError]) -> Any:
    """The JSON request the control machine sent on stdin (never in argv: it may name secrets'
    references and paths); `error` with one line when it is not JSON."""
    import json
    import sys

    try:
        return json.loads(sys.stdin.buffer.read())
    except ValueError as err:
        raise error(f"{command}: the request on stdin is not JSON ({err})") from None
