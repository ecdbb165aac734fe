"""ls, cat, versions, diff, find, mount: what a recovery point holds (protectctl/browse)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from protectctl.cli.main import env_of

if TYPE_CHECKING:
    from protectctl.browse import contents, ops
    from protectctl.cli.main import Env

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
SourceArg = Annotated[str, typer.Argument(help="GROUP/MEMBER")]
TimeOpt = Annotated[
    str, typer.Option("--to-time", help="The point at this time: ISO 8601, relative (-2h), latest, or a point id.")
]
FromOpt = Annotated[
    str,
    typer.Option(
        "--from",
        help="disk (the repository, default) or tape (the tape copies, found through the tape catalog).",
    ),
]


def _from_tape(value: str) -> bool:
    from protectctl.errors import ProtectctlError

    if value not in ("disk", "tape"):
        raise ProtectctlError(f"--from {value!r}: expected disk or tape")
    return value == "tape"


@contextmanager
def _tape(env: Env, selector: str, command: str) -> Iterator[tuple[Any, list[Any]]]:
    """The tape service (its lock held: reading loads cartridges) and the selected sources: from
    the policy, else those the tape catalog holds copies of (a group removed, its disk points gone)."""
    from protectctl import api
    from protectctl.browse import tape
    from protectctl.errors import ProtectctlError, TapeError

    if env.agent_config is not None:
        raise TapeError(
            "tape copies are browsed on the control machine, which holds the tape catalog",
            hint="run `protectctl -C POLICY_DIR ... --from tape` there",
        )
    with api.tape_session(env.policy_dir, f"{command} {selector} from tape") as service:
        if not service.ctx.libraries and not service.catalog.copies:
            raise TapeError("the policy has no TapeLibrary", hint="browse the repository (drop --from tape)")
        try:
            sources = api.browse_sources(env.policy_dir, selector, agent_config=None)
        except ProtectctlError as err:
            sources = tape.sources_on_tape(service, selector)
            if not sources:
                raise err from None
        yield service, sources


def points_on_tape(env: Env, selector: str | None, from_: str) -> None:
    """`points list --from tape`: the copies in the tape catalog (no cartridge is read)."""
    from protectctl import api
    from protectctl.browse import tape
    from protectctl.errors import TapeError

    _from_tape(from_)
    if env.agent_config is not None:
        raise TapeError("the tape catalog is on the control machine", hint="run `protectctl -C POLICY_DIR ...` there")
    policy = api.load(env.policy_dir)
    listing = tape.points_on_tape(api.tape_service(env.policy_dir, policy), selector, policy)
    if env.output.json_mode:
        env.output.document(listing.to_json())
        return
    env.output.table(tape.TAPE_POINT_COLUMNS, listing.rows())
    for source in listing.removed:
        env.output.text(
            f"{source}: no longer in the policy (browse its copies with `protectctl ls {source} --from tape`)"
        )


def _skipped(env: Env, read_from: dict[str, object]) -> None:
    skipped = read_from.get("skipped")
    for line in skipped if isinstance(skipped, list) else []:
        env.output.warn(f"not read (cartridge outside the library): {line}")


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
        from_: FromOpt = "disk",
        json_mode: JsonOpt = False,
    ) -> None:
        """List a directory of a recovery point."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        listing: ops.Listing | contents.Listing
        if _from_tape(from_):
            from protectctl.browse import service, tape

            with _tape(env, source, "ls") as (tapes, sources):
                listing = tape.ls(tapes, service.one_source(sources, source), path, to_time)
        else:
            listing = api.browse_ls(env.policy_dir, source, path, to_time, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document(listing.to_json())
            return
        from protectctl.browse.contents import Listing

        if isinstance(listing, Listing):
            env.output.info(listing.heading())
            for note in listing.listing.notes:
                env.output.warn(note)
        env.output.text("\n".join(listing.lines(long)))

    @app.command("cat")
    def cat_command(
        ctx: typer.Context,
        source: SourceArg,
        path: Annotated[str, typer.Argument(help="A file in the point.")],
        to_time: TimeOpt = "latest",
        from_: FromOpt = "disk",
    ) -> None:
        """Write one file of a recovery point to stdout."""
        from protectctl import api

        env = env_of(ctx)
        out = sys.stdout.buffer
        if _from_tape(from_):
            from protectctl.browse import service, tape

            with _tape(env, source, "cat") as (tapes, sources):
                tape.cat(tapes, service.one_source(sources, source), path, to_time, out.write)
        else:
            api.browse_cat(env.policy_dir, source, path, to_time, out.write, agent_config=env.agent_config)
        out.flush()

    @app.command("versions")
    def versions_command(
        ctx: typer.Context,
        source: SourceArg,
        path: Annotated[str, typer.Argument(help="A path in the source.")],
        from_: FromOpt = "disk",
        json_mode: JsonOpt = False,
    ) -> None:
        """A path's history: each distinct version with its first and last point."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        history: ops.History | contents.History
        if _from_tape(from_):
            from protectctl.browse import service, tape

            with _tape(env, source, "versions") as (tapes, sources):
                history = tape.versions(tapes, service.one_source(sources, source), path)
        else:
            history = api.browse_versions(env.policy_dir, source, path, agent_config=env.agent_config)
        _skipped(env, history.read_from)
        if env.output.json_mode:
            env.output.document(history.to_json())
            return
        env.output.table(*history.table())

    @app.command("diff")
    def diff_command(
        ctx: typer.Context,
        source: SourceArg,
        before: Annotated[str, typer.Argument(help="The earlier point: TIME or point id.")],
        after: Annotated[str, typer.Argument(help="The later point: TIME or point id.")],
        from_: FromOpt = "disk",
        json_mode: JsonOpt = False,
    ) -> None:
        """Paths added (+), removed (-) and modified (M) between two points."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        if _from_tape(from_):
            from protectctl.browse import service, tape

            with _tape(env, source, "diff") as (tapes, sources):
                changes = tape.diff(tapes, service.one_source(sources, source), before, after)
        else:
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
        from_: FromOpt = "disk",
        json_mode: JsonOpt = False,
    ) -> None:
        """Which points hold a path matching PATTERN; exit 1 when none does."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        if _from_tape(from_):
            from protectctl.browse import tape

            with _tape(env, selector, "find") as (tapes, sources):
                found = tape.find(tapes, sources, selector, pattern, since=since, until=until)
        else:
            found = api.browse_find(
                env.policy_dir, selector, pattern, since=since, until=until, agent_config=env.agent_config
            )
        _skipped(env, found.read_from)
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
