"""run, points, restore, prune, check, status: the data path."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from protectctl.cli.main import Env, env_of

if TYPE_CHECKING:
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
    from protectctl.plan.render import size

    return size(int(n)) if n is not None else "-"


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    @app.command()
    def run(ctx: typer.Context, job: Annotated[Job, typer.Argument(help="sync, full, prune, verify or tape")],
            group: Annotated[str, typer.Argument(help="Protection group.")], member: MemberOpt = None,
            json_mode: JsonOpt = False) -> None:
        """Run a protection job now (what the timers run)."""
        env = env_of(ctx, json_mode)
        if job in (Job.SYNC, Job.FULL):
            _run_backup(env, job.value, group, member)
        elif job is Job.PRUNE:
            _prune(env, group, member, dry_run=False)
        elif job is Job.VERIFY:
            _verify(env, group, member)
        else:
            from protectctl.errors import TapeError

            raise TapeError("tape jobs are not available in this version", hint="see the tape issue")

    points_app = typer.Typer(help="Recovery points.", no_args_is_help=True)
    app.add_typer(points_app, name="points")

    @points_app.command("list")
    def points_list(ctx: typer.Context,
                    selector: Annotated[str | None, typer.Argument(help="GROUP or GROUP/MEMBER")] = None,
                    json_mode: JsonOpt = False) -> None:
        """Recovery points, newest last."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        points = api.list_points(env.policy_dir, selector, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "points": [point_json(p) for p in points]})
            return
        env.output.table(
            ["time (UTC)", "source", "kind", "id", "files", "size", "added", "duration", "complete"],
            [(p.time.strftime("%Y-%m-%d %H:%M:%S"), p.source, p.kind, p.id[:12], f"{p.stats.files:,}",
              human_bytes(p.stats.bytes_total), human_bytes(p.stats.bytes_added), f"{p.stats.duration_s:.1f}s",
              "yes" if p.complete else f"NO ({len(p.errors)} error(s))") for p in points])

    @app.command()
    def restore(
        ctx: typer.Context,
        source: Annotated[str, typer.Argument(help="GROUP/MEMBER")],
        to_time: Annotated[str, typer.Option("--to-time", help="ISO 8601, relative (-2h) or latest.")],
        target: Annotated[str | None, typer.Option("--target", help="[HOST:]PATH (default: the original path)")]
        = None,
        paths: Annotated[list[str] | None, typer.Option("--path", help="Only this subpath (repeatable).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be restored.")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty target.")] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Bring a source back as it was at a time."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        result = api.restore(env.policy_dir, source, to_time, agent_config=env.agent_config, target=target,
                             subpaths=paths or [], dry_run=dry_run, overwrite=overwrite, progress=progress_of(env))
        show_result(env, result)

    @app.command()
    def prune(ctx: typer.Context, group: Annotated[str | None, typer.Argument(help="Protection group.")] = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go.")] = False,
              json_mode: JsonOpt = False) -> None:
        """Apply the SLA retention: delete expired points, then unreferenced data."""
        env = env_of(ctx, json_mode)
        _prune(env, group, None, dry_run=dry_run)

    @app.command()
    def check(ctx: typer.Context, storage: Annotated[str, typer.Argument(help="Storage name.")],
              read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and hash every byte.")] = False,
              json_mode: JsonOpt = False) -> None:
        """Verify a repository (structure; every byte with --read-data)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        report = api.check(env.policy_dir, storage, read_data=read_data, progress=progress_of(env))
        show_result(env, report)
        if not report.ok:
            raise typer.Exit(1)

    @app.command()
    def status(ctx: typer.Context, group: Annotated[str | None, typer.Argument(help="Protection group.")] = None,
               json_mode: JsonOpt = False) -> None:
        """SLA compliance per source; exit 1 when any source is out of SLA."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        rows = api.status(env.policy_dir, group, agent_config=env.agent_config)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "sources": [r.to_json() for r in rows]})
        else:
            env.output.table(["source", "SLA met", "last good point", "age", "last failure"],
                             [_status_row(r.to_json()) for r in rows])
        if not all(r.sla_met for r in rows):
            raise typer.Exit(1)


def _status_row(doc: dict[str, Any]) -> tuple[object, ...]:
    age = doc.get("age_s")
    return (doc.get("source"), "yes" if doc.get("sla_met") else "NO", doc.get("last_good_time") or "never",
            f"{age / 60:.0f}m" if isinstance(age, int | float) else "-", doc.get("last_failure") or "")


def point_json(p: Any) -> dict[str, Any]:
    return {"id": p.id, "source": p.source, "time": p.time.isoformat(), "kind": p.kind, "parent": p.parent,
            "complete": p.complete, "errors": list(p.errors), "host": p.host,
            "stats": {"files": p.stats.files, "dirs": p.stats.dirs, "bytes_total": p.stats.bytes_total,
                      "bytes_read": p.stats.bytes_read, "bytes_added": p.stats.bytes_added,
                      "chunks_new": p.stats.chunks_new, "duration_s": p.stats.duration_s},
            "extra": dict(p.extra)}


def show_result(env: Env, result: Any) -> None:
    doc = result.to_json()
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", **doc})
        return
    summary = getattr(result, "summary", None)
    env.output.text(summary() if callable(summary) else "\n".join(f"{k}: {v}" for k, v in doc.items()))


def _run_backup(env: Env, kind: str, group: str, member: str | None) -> None:
    from protectctl import api

    results = api.run_backup(env.policy_dir, kind, group, member, agent_config=env.agent_config,
                             progress=progress_of(env))
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", "results": [r.to_json() for r in results]})
    else:
        for r in results:
            summary = getattr(r, "summary", None)
            env.output.text(summary() if callable(summary) else str(r.to_json()))
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _prune(env: Env, group: str | None, member: str | None, *, dry_run: bool) -> None:
    from protectctl import api

    results = api.prune(env.policy_dir, group, agent_config=env.agent_config, dry_run=dry_run, member=member,
                        progress=progress_of(env))
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", "results": [r.to_json() for r in results]})
        return
    for r in results:
        show_result(env, r)


def _verify(env: Env, group: str, member: str | None) -> None:
    from protectctl import api

    targets = api.sources(env.policy_dir, agent_config=env.agent_config, group=group, member=member)
    failed = False
    for storage in api.storages_of(targets).values():
        from protectctl.agent.jobs import check as run_check

        report = run_check(api.open_storage(storage), api.passphrase_reader(storage)(), read_data=False,
                           progress=progress_of(env))
        show_result(env, report)
        failed = failed or not report.ok
    if failed:
        raise typer.Exit(1)
