"""`protectctl agent ...`: hidden commands PostgreSQL runs on a protected host.

`wal-push` is an archive_command, `wal-fetch` a restore_command: both only move files
between PostgreSQL and a spool/staging directory (protectctl.agent.wal), so they need no
key and no repository. Apply installs a stdlib-only copy of the same code beside the spool,
because the PostgreSQL OS user usually cannot run this installation of protectctl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protectctl.cli.helpformat import HelpGroup


def register(app: typer.Typer) -> None:
    agent_app = typer.Typer(cls=HelpGroup, help="Commands run by PostgreSQL on a protected host.", no_args_is_help=True)
    app.add_typer(agent_app, name="agent", hidden=True)

    @agent_app.command("wal-push")
    def wal_push(
        path: Annotated[Path, typer.Argument(help="%p: the WAL file to archive")],
        spool: Annotated[Path, typer.Option("--spool", help="The spool directory the agent drains.")],
        max_bytes: Annotated[int, typer.Option("--max-bytes", help="Spool bound; past it segments are dropped "
                                               "loudly.")] = 4 << 30,
    ) -> None:
        """archive_command: spool one WAL file (exit 0 once it is durable or loudly dropped)."""
        from protectctl.agent.wal import push

        status, message = push(path, spool, max_bytes)
        if message:
            typer.echo(message, err=True)
        raise typer.Exit(status)

    @agent_app.command("wal-fetch")
    def wal_fetch(
        name: Annotated[str, typer.Argument(help="%f: the WAL file name PostgreSQL wants")],
        dest: Annotated[Path, typer.Argument(help="%p: where to put it")],
        directory: Annotated[Path, typer.Option("--dir", help="The staging directory of a running restore.")],
    ) -> None:
        """restore_command: hand PostgreSQL a WAL file the restore staged (exit 1: no such file)."""
        from protectctl.agent.wal import fetch

        status, message = fetch(name, dest, directory)
        if message:
            typer.echo(message, err=True)
        raise typer.Exit(status)

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
        typer.echo(json.dumps({"changes": list(outcome.changes), "warnings": list(outcome.warnings)}))

    @agent_app.command("restore")
    def restore(ctx: typer.Context) -> None:
        """A restore sent by the control machine (JSON on stdin) onto this host; prints the result."""
        import json
        import sys

        from protectctl import api
        from protectctl.cli.main import env_of
        from protectctl.errors import RestoreError

        env = env_of(ctx, True)
        try:
            request = json.loads(sys.stdin.buffer.read())
        except ValueError as err:
            raise RestoreError(f"agent restore: the request on stdin is not JSON ({err})") from None
        result = api.restore_on_agent(request, agent_config=env.agent_config)
        typer.echo(json.dumps(result.to_json()))

    @agent_app.command("wal-stream")
    def wal_stream(
        ctx: typer.Context,
        group: Annotated[str, typer.Argument(help="Protection group.")],
        member: Annotated[str, typer.Option("--member", "-m", help="The PostgreSQL member with streaming: true.")],
    ) -> None:
        """The WAL receiver service of a `streaming: true` member: pg_receivewal, supervised, until SIGTERM."""
        from protectctl import api
        from protectctl.cli.main import env_of

        env = env_of(ctx, False)
        api.stream_wal(env.policy_dir, group, member, agent_config=env.agent_config,
                       log=lambda line: typer.echo(f"protectctl wal-stream {group}/{member}: {line}", err=True))
