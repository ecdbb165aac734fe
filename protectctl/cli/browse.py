"""ls, cat, versions, diff, find, mount: what a recovery point holds (protectctl/browse)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from protectctl.cli.main import env_of

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SourceArg = Annotated[str, typer.Argument(help="GROUP/MEMBER")]
TimeOpt = Annotated[
    str, typer.Option("--to-time", help="The point at this time: ISO 8601, relative (-2h), latest, or a point id.")
]


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    @app.command("ls")
    def ls_command(
        ctx: typer.Context,
        source: SourceArg,
        path: Annotated[
            str, typer.Argument(help="Path in the point: relative to the source, or absolute as protected.")
        ] = "",
        to_time: TimeOpt = "latest",
        long: Annotated[bool, typer.Option("--long", "-l", help="Mode, owner, size, mtime.")] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """List a directory of a recovery point."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        listing = api.browse_ls(env.policy_dir, source, path, to_time, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document(listing.to_json())
            return
        env.output.text("\n".join(e.long_line() if long else e.short() for e in listing.entries))

    @app.command("cat")
    def cat_command(
        ctx: typer.Context,
        source: SourceArg,
        path: Annotated[str, typer.Argument(help="A file in the point.")],
        to_time: TimeOpt = "latest",
    ) -> None:
        """Write one file of a recovery point to stdout."""
        from protectctl import api

        env = env_of(ctx)
        out = sys.stdout.buffer
        api.browse_cat(env.policy_dir, source, path, to_time, out.write, agent_config=env.agent_config)
        out.flush()

    @app.command("versions")
    def versions_command(
        ctx: typer.Context,
        source: SourceArg,
        path: Annotated[str, typer.Argument(help="A path in the source.")],
        json_mode: JsonOpt = False,
    ) -> None:
        """A path's history: each distinct version with its first and last point."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        history = api.browse_versions(env.policy_dir, source, path, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document(history.to_json())
            return
        env.output.table(
            ["#", "type", "size", "mtime", "first point", "last point", "points"],
            [
                (
                    str(i),
                    v.node.type.value,
                    f"{v.node.size:,}",
                    v.to_json()["mtime"],
                    f"{v.first.time:%Y-%m-%d %H:%M:%S}Z {v.first.id[:8]}",
                    f"{v.last.time:%Y-%m-%d %H:%M:%S}Z {v.last.id[:8]}",
                    str(v.points),
                )
                for i, v in enumerate(history.versions, 1)
            ],
        )

    @app.command("diff")
    def diff_command(
        ctx: typer.Context,
        source: SourceArg,
        before: Annotated[str, typer.Argument(help="The earlier point: TIME or point id.")],
        after: Annotated[str, typer.Argument(help="The later point: TIME or point id.")],
        json_mode: JsonOpt = False,
    ) -> None:
        """Paths added (+), removed (-) and modified (M) between two points."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        changes = api.browse_diff(env.policy_dir, source, before, after, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document(changes.to_json())
            return
        lines = changes.lines()
        env.output.text("\n".join(lines) if lines else "no changes")

    @app.command("find")
    def find_command(
        ctx: typer.Context,
        selector: Annotated[str, typer.Argument(help="GROUP or GROUP/MEMBER")],
        pattern: Annotated[
            str, typer.Argument(help="Shell wildcards: a name ('*.conf') or, with a '/', a path ('etc/*/hosts').")
        ],
        since: Annotated[str | None, typer.Option("--since", help="Only points at or after TIME.")] = None,
        until: Annotated[str | None, typer.Option("--until", help="Only points at or before TIME.")] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Which points hold a path matching PATTERN; exit 1 when none does."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        found = api.browse_find(
            env.policy_dir, selector, pattern, since=since, until=until, agent_config=env.agent_config
        )
        if env.output.json_mode:
            env.output.document(found.to_json())
        elif found.matches:
            env.output.text("\n".join(found.lines()))
        else:
            env.output.info(f"nothing matches {pattern!r} in {found.points_searched} point(s)")
        if not found.matches:
            raise typer.Exit(1)

    @app.command("mount")
    def mount_command(
        ctx: typer.Context,
        mountpoint: Annotated[str, typer.Argument(help="An empty directory to mount on.")],
        selector: Annotated[str | None, typer.Argument(help="GROUP or GROUP/MEMBER (default: every source).")] = None,
        allow_other: Annotated[
            bool,
            typer.Option(
                "--allow-other", help="Let other users in; the stored owners and modes decide what each reads."
            ),
        ] = False,
    ) -> None:
        """Recovery points as a read-only filesystem: SOURCE/by-time/TIME and SOURCE/latest.

        Runs in the foreground until unmounted (fusermount3 -u MOUNTPOINT) or interrupted."""
        from pathlib import Path

        from protectctl import api
        from protectctl.cli.interrupt import on_interrupt

        env = env_of(ctx)
        on_interrupt(f"{mountpoint} was unmounted")

        def ready() -> None:
            env.output.info(
                f"mounting recovery points on {mountpoint} (read-only); fusermount3 -u {mountpoint} or Ctrl-C unmounts"
            )

        api.browse_mount(
            env.policy_dir,
            Path(mountpoint),
            selector,
            allow_other=allow_other,
            agent_config=env.agent_config,
            ready=ready,
        )
