"""run, points, restore, prune, check, status: the data path."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from protectctl.cli.env import Env, env_of
from protectctl.cli.helpformat import HelpGroup

if TYPE_CHECKING:
    from protectctl.agent.sources import BackupKind, CheckResult
    from protectctl.progress import Progress

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
MemberOpt = Annotated[str | None, typer.Option("--member", "-m", help="Only this member of the group.")]


class Job(StrEnum):
    SYNC = "sync"
    FULL = "full"
    PRUNE = "prune"
    VERIFY = "verify"
    TAPE = "tape"


def progress_of(env: Env) -> Progress:
    from protectctl.cli.progress import progress_for

    return progress_for(json_mode=env.output.json_mode, quiet=env.output.quiet)


def human_bytes(n: int | float | None) -> str:
    from protectctl.humanize import human_bytes as size

    return size(n) if n is not None else "-"


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    @app.command()
    def run(
        ctx: typer.Context,
        job: Annotated[Job, typer.Argument(help="sync, full, prune, verify or tape")],
        group: Annotated[str, typer.Argument(help="Protection group.")],
        member: MemberOpt = None,
        all_points: Annotated[
            bool, typer.Option("--all", help="tape: every point not on tape yet, not only the newest.")
        ] = False,
        lock_timeout: Annotated[
            str,
            typer.Option("--lock-timeout", help="tape: wait this long for another run using the libraries (e.g. 30s)."),
        ] = "4h",
        no_express: Annotated[
            bool,
            typer.Option(
                "--no-express",
                help="full: a real full, copying everything, not an express one (only what changed since the "
                "previous full; mariadb).",
            ),
        ] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Run a protection job now (what the timers run)."""
        env = env_of(ctx, json_mode)
        if no_express and job is not Job.FULL:
            from protectctl.errors import ProtectctlError

            raise ProtectctlError("--no-express is for `run full`")
        if job in (Job.SYNC, Job.FULL):
            _run_backup(
                env, "sync" if job is Job.SYNC else "full", group, member, {"express": False} if no_express else None
            )
        elif job is Job.PRUNE:
            _prune(env, group, member, dry_run=False)
        elif job is Job.VERIFY:
            _verify(env, group, member)
        else:
            from protectctl.cli.plan import lock_seconds

            _run_tape(env, group, member, all_points, lock_seconds(lock_timeout))

    points_app = typer.Typer(cls=HelpGroup, help="Recovery points.", no_args_is_help=True)
    app.add_typer(points_app, name="points")

    @points_app.command("list")
    def points_list(
        ctx: typer.Context,
        selector: Annotated[str | None, typer.Argument(help="GROUP or GROUP/MEMBER")] = None,
        all_sources: Annotated[
            bool, typer.Option("--all", help="Also sources no longer in the policy (a removed group's points).")
        ] = False,
        from_: Annotated[
            str, typer.Option("--from", help="disk (default) or tape: the copies the tape catalog holds.")
        ] = "disk",
        json_mode: JsonOpt = False,
    ) -> None:
        """Recovery points, newest last."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        if from_ != "disk":
            from protectctl.cli.browse import points_on_tape

            points_on_tape(env, selector, from_)
            return
        listing = api.list_points(env.policy_dir, selector, agent_config=env.agent_config, include_removed=all_sources)
        points = listing.points
        windows = api.recovery_windows(points)
        gone = set(listing.removed)
        if env.output.json_mode:
            env.output.document(
                {
                    "format_version": "1.0",
                    "points": [{**point_json(p), "in_policy": p.source not in gone} for p in points],
                    "recovery_windows": windows,
                    "problems": list(listing.problems),
                    "removed_sources": sorted(gone),
                }
            )
            return
        for problem in listing.problems:
            env.output.warn(problem)
        env.output.table(
            ["time", "source", "kind", "id", "files", "size", "read", "added", "duration", "tracking", "complete"],
            [
                (
                    p.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    p.source,
                    p.kind,
                    p.id[:8],
                    f"{p.stats.files:,}",
                    human_bytes(p.stats.bytes_total),
                    human_bytes(p.stats.bytes_read),
                    human_bytes(p.stats.bytes_added),
                    f"{p.stats.duration_s:.1f}s",
                    tracking_cell(p.extra),
                    "yes" if p.complete else f"NO ({len(p.errors)} error(s))",
                )
                for p in points
            ],
        )
        walks = [line for p in points if (line := walk_line(p)) is not None]
        if walks:
            env.output.text("\n".join(walks))
        for source in sorted(gone):
            env.output.text(
                f"{source}: no longer in the policy (its points stay in the repository: "
                "browse it with `protectctl ls`, restore it with --target PATH)"
            )
        for source, lines in windows.items():
            env.output.text("\n".join([f"{source}:", *(f"  {line}" for line in lines)]))

    @app.command()
    def restore(
        ctx: typer.Context,
        source: Annotated[str, typer.Argument(help="GROUP/MEMBER")],
        to_time: Annotated[
            str | None,
            typer.Option("--to-time", help="ISO 8601, relative (-2h) or latest (required unless --to-gtid)."),
        ] = None,
        target: Annotated[str | None, typer.Option("--target", help="[HOST:]PATH (default: the original path)")] = None,
        paths: Annotated[list[str] | None, typer.Option("--path", help="Only this subpath (repeatable).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be restored.")] = False,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Allow a non-empty target: replace what differs.")
        ] = False,
        delete: Annotated[
            bool,
            typer.Option(
                "--delete",
                help="With --overwrite: also remove what the target holds that the point does not (within the target).",
            ),
        ] = False,
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="Continue an interrupted restore of the same point "
                "into the target, keeping the files it finished.",
            ),
        ] = False,
        from_: Annotated[
            str | None,
            typer.Option(
                "--from", help="tape: read the point from tape (default: disk, or tape when the disk no longer has it)."
            ),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option(
                "--port",
                help="Database sources: port of the restored server "
                "(with --database: of the running one to load into).",
            ),
        ] = None,
        database: Annotated[
            str | None, typer.Option("--database", help="Database sources: restore only this database (needs --as).")
        ] = None,
        as_name: Annotated[
            str | None, typer.Option("--as", help="Database sources: the new name of --database.")
        ] = None,
        to_gtid: Annotated[
            str | None,
            typer.Option(
                "--to-gtid",
                help="MariaDB sources: roll forward through this GTID (DOMAIN-SERVER-SEQNO), not to a time.",
            ),
        ] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Bring a source back as it was at a time."""
        from protectctl import api
        from protectctl.cli.interrupt import on_interrupt

        env = env_of(ctx, json_mode)
        if not dry_run:
            on_interrupt(
                f"the restore of {source} stopped part-way: {target or 'the original place'} holds only "
                "part of the point; run the same command again with --resume to finish it"
            )
        if from_ not in (None, "disk", "tape"):
            from protectctl.errors import RestoreError

            raise RestoreError(f"--from {from_!r}: expected disk or tape")
        if to_time is None and to_gtid is None:
            from protectctl.errors import RestoreError

            raise RestoreError("restore needs --to-time (ISO 8601, relative like -2h, or latest)")
        given = (("port", port), ("database", database), ("as_name", as_name), ("to_gtid", to_gtid))
        result = api.restore(
            env.policy_dir,
            source,
            to_time or "latest",  # --to-gtid alone: the provider picks the point by the GTID
            agent_config=env.agent_config,
            target=target,
            subpaths=paths or [],
            dry_run=dry_run,
            overwrite=overwrite,
            progress=progress_of(env),
            from_tape=from_ == "tape",
            options={k: v for k, v in given if v is not None},
            delete=delete,
            resume=resume,
        )
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", **result.to_json()})
        else:
            env.output.text(restore_summary(result))
        if result.dry_run and result.fits is False:
            raise typer.Exit(1)

    @app.command()
    def prune(
        ctx: typer.Context,
        group: Annotated[str | None, typer.Argument(help="Protection group.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go.")] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Apply the SLA retention: delete expired points, then unreferenced data."""
        env = env_of(ctx, json_mode)
        _prune(env, group, None, dry_run=dry_run)

    @app.command()
    def check(
        ctx: typer.Context,
        storage: Annotated[str, typer.Argument(help="Storage name.")],
        read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and hash every byte.")] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Verify a repository (structure; every byte with --read-data)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        report = api.check(env.policy_dir, storage, read_data=read_data, progress=progress_of(env))
        show_result(env, report)
        if not report.ok:
            raise typer.Exit(1)

    @app.command()
    def status(
        ctx: typer.Context,
        group: Annotated[str | None, typer.Argument(help="Protection group.")] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """SLA compliance per source; exit 1 when any source is out of SLA."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        rows = api.status(env.policy_dir, group, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "sources": [r.to_json() for r in rows]})
        else:
            env.output.table(
                ["source", "SLA met", "last point", "sync age", "full age", "points", "stored", "problems"],
                [_status_row(r) for r in rows],
            )
        if not all(r.sla_met for r in rows):
            raise typer.Exit(1)


def _status_row(r: Any) -> tuple[object, ...]:
    def age(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        return f"{seconds / 3600:.1f}h" if seconds >= 3600 else f"{seconds / 60:.0f}m"

    if r.last_point_time:
        last = f"{r.last_point_time:%Y-%m-%d %H:%M}Z ({r.last_point_kind})"
    else:
        last = "never" if r.points is not None else "unknown"
    points = "?" if r.points is None else r.points
    # the same problems as --json: a failure shows until a later success settles it
    return (
        r.source,
        "yes" if r.sla_met else "NO",
        last,
        age(r.sync_age_s),
        age(r.full_age_s),
        points,
        human_bytes(r.source_bytes_added),
        "; ".join(r.problems),
    )


def restore_summary(r: Any) -> str:
    what = "would restore" if r.dry_run else "restored"
    lines = [
        f"{r.source}: {what} {r.point_kind} point {r.point_id[:12]} of {r.point_time:%Y-%m-%d %H:%M:%S}Z "
        f"to {r.target}: {r.files:,} files, {r.dirs:,} dirs, {human_bytes(r.bytes_total)}"
    ]
    if r.dry_run:
        room = {True: "enough room", False: "NOT ENOUGH ROOM", None: "free space unknown"}[r.fits]
        lines.append(f"  needs {human_bytes(r.bytes_needed)}, {human_bytes(r.bytes_free)} free: {room}")
    else:
        lines.append(f"  {r.verified:,} file(s) verified against their stored hashes")
    if not r.point_complete:
        lines.append("  note: this recovery point is incomplete (some files were missed when it was taken)")
    lines += [f"  {n}" for n in r.notes]
    doomed = r.details.get("would_delete") if isinstance(r.details, dict) else None
    if doomed:
        lines += [f"  would delete: {p}" for p in doomed[:_DELETIONS_SHOWN]]
        if len(doomed) > _DELETIONS_SHOWN:
            lines.append(f"  ... and {len(doomed) - _DELETIONS_SHOWN:,} more (--json lists them all)")
    return "\n".join(lines)


_DELETIONS_SHOWN = 200


def prune_summary(r: Any) -> str:
    verb = "would forget" if r.dry_run else "forgot"
    lines = [f"{verb} {len(r.forgotten)} point(s), kept {len(r.kept)}"]
    lines += [f"  - {p.source} {p.kind} {p.id[:12]} {p.time:%Y-%m-%d %H:%M:%S}Z" for p in r.forgotten]
    if not r.dry_run:
        lines.append(
            f"  deleted {r.packs_deleted} pack(s), {human_bytes(r.bytes_deleted)}; "
            f"{r.packs_condemned} pack(s) wait for running backups to finish"
        )
    lines += [f"  data cleanup deferred: {why}" for why in r.gc_deferred_because]
    lines += [f"  PROBLEM: {problem}" for problem in r.problems]
    return "\n".join(lines)


def tracking_cell(extra: Any) -> str:
    """How a point's source was captured: its snapshot kind, `+blocks` with block tracking
    (docs/change-tracking.md); "-" for points that say nothing of it."""
    snapshot, tracking = extra.get("snapshot"), extra.get("tracking")
    if snapshot is None and tracking is None:
        return "-"
    walk = {"journal": "+journal", "full": "+walk"}.get(str(extra.get("walk"))) if extra.get("journal") == "on" else ""
    return f"{snapshot or 'none'}{'+blocks' if tracking == 'blocks' else ''}{walk or ''}"


def walk_line(p: Any) -> str | None:
    """`<id> walk: journal|full (why)` for a point of a source with a change journal."""
    extra = p.extra
    if extra.get("journal") != "on":
        return None
    return f"{p.source} {p.id[:8]} walk: {extra.get('walk')} ({extra.get('walk_note')})"


def point_json(p: Any) -> dict[str, Any]:
    return {
        "id": p.id,
        "source": p.source,
        "time": p.time.isoformat(),
        "kind": p.kind,
        "parent": p.parent,
        "complete": p.complete,
        "errors": list(p.errors),
        "host": p.host,
        "stats": {
            "files": p.stats.files,
            "dirs": p.stats.dirs,
            "bytes_total": p.stats.bytes_total,
            "bytes_read": p.stats.bytes_read,
            "bytes_added": p.stats.bytes_added,
            "chunks_new": p.stats.chunks_new,
            "duration_s": p.stats.duration_s,
        },
        "extra": dict(p.extra),
    }


def show_result(env: Env, result: CheckResult) -> None:
    from protectctl.cli.views import check_json, check_text

    if env.output.json_mode:
        env.output.document({"format_version": "1.0", **check_json(result)})
        return
    env.output.text(check_text(result))


def _run_backup(
    env: Env, kind: BackupKind, group: str, member: str | None, options: dict[str, object] | None = None
) -> None:
    from protectctl.cli.timer import run_backup_command  # the timers' own path runs the same

    if not run_backup_command(env.output, env.policy_dir, env.agent_config, kind, group, member, options):
        raise typer.Exit(1)


def _prune(env: Env, group: str | None, member: str | None, *, dry_run: bool) -> None:
    from protectctl import api
    from protectctl.cli.interrupt import on_interrupt

    on_interrupt(
        "prune stopped: points it already forgot are gone, and nothing a kept point needs was deleted; "
        "run prune again to finish collecting unreferenced data"
    )

    results = api.prune(
        env.policy_dir, group, agent_config=env.agent_config, dry_run=dry_run, member=member, progress=progress_of(env)
    )
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", "results": [r.to_json() for r in results]})
    else:
        for r in results:
            env.output.text(prune_summary(r))
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _run_tape(env: Env, group: str, member: str | None, all_points: bool, lock_timeout_s: float) -> None:
    from protectctl import api
    from protectctl.cli.tape import tape_run_summary

    result = api.run_tape(
        env.policy_dir, group, member, all_points=all_points, progress=progress_of(env), lock_timeout_s=lock_timeout_s
    )
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", **result.to_json()})
    else:
        env.output.text(tape_run_summary(result))


def _verify(env: Env, group: str, member: str | None) -> None:
    from protectctl import api

    targets = api.sources(env.policy_dir, agent_config=env.agent_config, group=group, member=member)
    failed = False
    for storage in api.storages_of(targets).values():
        report = api.check_storage(storage, read_data=False, progress=progress_of(env))
        show_result(env, report)
        failed = failed or not report.ok
    if env.agent_config is None:  # tapes are the control machine's
        from protectctl.cli.tape import tape_verify_summary

        tape = api.verify_tape(env.policy_dir, group, member)
        if tape is not None:
            if env.output.json_mode:
                env.output.document({"format_version": "1.0", "tape": tape.to_json()})
            else:
                env.output.text(tape_verify_summary(tape))
            failed = failed or not tape.ok
    if failed:
        raise typer.Exit(1)
