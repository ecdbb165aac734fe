"""validate, plan, apply, destroy, graph, schema."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from protectctl.cli.env import Env, env_of

if TYPE_CHECKING:
    from protectctl.apply.operations import ApplyReport
    from protectctl.apply.walk import ResourceResult
    from protectctl.plan.model import Plan

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
LockTimeout = Annotated[str, typer.Option("--lock-timeout", help="Wait this long for the state lock (e.g. 30s).")]
Parallelism = Annotated[int, typer.Option("--parallelism", min=1, max=256, help="Resources applied at once.")]


class PlanFormat(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    JSON = "json"


def lock_seconds(text: str) -> float:
    from protectctl.units import Duration, UnitError

    if text in ("0", ""):
        return 0.0
    try:
        return float(Duration.parse(text).seconds)
    except UnitError as err:
        raise typer.BadParameter(str(err), param_hint="--lock-timeout") from None


def show_plan(env: Env, plan: Plan, fmt: PlanFormat) -> None:
    from protectctl.plan.render import render_markdown, render_text

    if fmt is PlanFormat.JSON or env.output.json_mode:
        env.output.document(plan.model_dump(mode="json"))
    elif fmt is PlanFormat.MARKDOWN:
        env.output.text(render_markdown(plan))
    else:
        env.output.lines(render_text(plan))


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    @app.command()
    def validate(ctx: typer.Context, json_mode: JsonOpt = False) -> None:
        """Check the policy: syntax, types and rules, every error with file:line:col."""
        from protectctl import api
        from protectctl.cli.views import validate_json

        env = env_of(ctx, json_mode)
        result = api.validate(env.policy_dir)
        if env.output.json_mode:
            env.output.document(validate_json(result))
            return
        for w in result.warnings:
            env.output.warn(str(w))
        total = sum(result.documents.values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.documents.items()))
        env.output.text(f"The policy is valid: {total} document(s) ({kinds}).")

    @app.command()
    def plan(
        ctx: typer.Context,
        out: Annotated[Path | None, typer.Option("--out", help="Save the plan for `apply PLANFILE`.")] = None,
        fmt: Annotated[PlanFormat, typer.Option("--format", help="text, markdown or json.")] = PlanFormat.TEXT,
        json_mode: JsonOpt = False,
        detailed_exitcode: Annotated[
            bool, typer.Option("--detailed-exitcode", help="Exit 0 without changes, 2 with changes, 1 on error.")
        ] = False,
        destroy: Annotated[bool, typer.Option("--destroy", help="Plan to destroy everything.")] = False,
        delete_data: Annotated[
            bool, typer.Option("--delete-data", help="Let deletions remove repositories and keys that hold data.")
        ] = False,
        refresh: Annotated[
            bool, typer.Option("--refresh", help="Read the hosts' files and plan repairs for what was changed by hand.")
        ] = False,
        lock_timeout: LockTimeout = "0",
    ) -> None:
        """Show what apply would change (no host is touched, and none read unless --refresh)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        result = api.plan(
            env.policy_dir,
            out=out,
            destroy=destroy,
            delete_data=delete_data,
            refresh=refresh,
            lock_timeout_s=lock_seconds(lock_timeout),
        )
        show_plan(env, result, fmt)
        if out is not None and not env.output.json_mode:
            env.output.info(f"Saved the plan to {out}; apply exactly it with `protectctl apply {out}`.")
        raise typer.Exit(2 if detailed_exitcode and result.has_changes else 0)

    @app.command()
    def apply(
        ctx: typer.Context,
        plan_file: Annotated[Path | None, typer.Argument(help="A plan saved by `plan --out`.")] = None,
        auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask.")] = False,
        parallelism: Parallelism = 10,
        delete_data: Annotated[
            bool, typer.Option("--delete-data", help="Let deletions remove repositories and keys that hold data.")
        ] = False,
        refresh: Annotated[bool, typer.Option("--refresh", help="Also repair what was changed by hand.")] = False,
        allow_remove_all: Annotated[
            bool,
            typer.Option(
                "--allow-remove-all",
                help="Apply a plan that removes every schedule (otherwise refused; `destroy` is the usual way).",
            ),
        ] = False,
        json_mode: JsonOpt = False,
        lock_timeout: LockTimeout = "0",
    ) -> None:
        """Make the hosts match the policy (or a saved plan)."""
        env = env_of(ctx, json_mode)
        _run_apply(
            env,
            plan_file=plan_file,
            auto_approve=auto_approve or plan_file is not None,
            parallelism=parallelism,
            destroy=False,
            delete_data=delete_data,
            lock_timeout=lock_timeout,
            refresh=refresh,
            allow_remove_all=allow_remove_all,
        )

    @app.command()
    def destroy(
        ctx: typer.Context,
        auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask.")] = False,
        parallelism: Parallelism = 10,
        delete_data: Annotated[
            bool, typer.Option("--delete-data", help="Also delete repositories, their recovery points and keys.")
        ] = False,
        json_mode: JsonOpt = False,
        lock_timeout: LockTimeout = "0",
    ) -> None:
        """Remove everything apply made (data only with --delete-data)."""
        env = env_of(ctx, json_mode)
        _run_apply(
            env,
            plan_file=None,
            auto_approve=auto_approve,
            parallelism=parallelism,
            destroy=True,
            delete_data=delete_data,
            lock_timeout=lock_timeout,
            refresh=False,
        )

    @app.command()
    def graph(ctx: typer.Context) -> None:
        """The resource dependency graph as DOT."""
        from protectctl import api

        env = env_of(ctx)
        env.output.text(api.graph_dot(env.policy_dir))

    @app.command()
    def schema(
        ctx: typer.Context,
        out: Annotated[
            Path | None, typer.Option("--out", help="Write one file per kind here, and protectctl.json for any kind.")
        ] = None,
        combined: Annotated[
            bool, typer.Option("--combined", help="Print the one schema for any document (chosen by its kind).")
        ] = False,
    ) -> None:
        """JSON Schema of every document kind."""
        from protectctl import api

        env = env_of(ctx)
        if out is None:
            env.output.document(api.combined_schema() if combined else api.schema_documents())
            return
        for path in api.write_schemas(out):
            env.output.info(f"wrote {path}")


def _run_apply(
    env: Env,
    *,
    plan_file: Path | None,
    auto_approve: bool,
    parallelism: int,
    destroy: bool,
    delete_data: bool,
    lock_timeout: str,
    refresh: bool,
    allow_remove_all: bool = False,
) -> None:
    from protectctl import api
    from protectctl.errors import ApplyError

    def confirm(plan: Plan) -> bool:
        if not env.output.json_mode:
            show_plan(env, plan, PlanFormat.TEXT)
        if auto_approve:
            return True
        if not env.output.can_prompt:
            raise ApplyError(
                "refusing to apply without confirmation: stdin is not a terminal",
                hint="pass --auto-approve, or apply a saved plan file",
            )
        # the question goes to stderr, so `apply | tee log` still asks on the terminal
        answer = typer.prompt(
            "\nDo you want to perform these actions? Only 'yes' will be accepted",
            default="",
            show_default=False,
            err=True,
        )
        if answer.strip() != "yes":
            env.output.info("Apply cancelled.")
            return False
        return True

    from protectctl.cli.interrupt import on_interrupt

    on_interrupt(
        "apply stopped: the state records every resource applied so far (none half-recorded); run "
        "`protectctl apply` again to finish"
    )

    def progress(result: ResourceResult) -> None:
        if env.output.json_mode:
            return
        mark = {"ok": "done", "failed": "FAILED", "skipped": "skipped"}[result.outcome.value]
        detail = f": {result.message}" if result.message else ""
        env.output.info(f"{result.address}: {result.action.value} {mark} ({result.duration_s:.1f}s){detail}")

    report = api.apply(
        env.policy_dir,
        plan_file=plan_file,
        confirm=confirm,
        parallelism=parallelism,
        destroy=destroy,
        delete_data=delete_data,
        refresh=refresh,
        allow_remove_all=allow_remove_all,
        lock_timeout_s=lock_seconds(lock_timeout),
        on_result=progress,
    )
    _report(env, report)


def _report(env: Env, report: ApplyReport) -> None:
    from protectctl.cli.views import apply_json
    from protectctl.errors import ApplyError

    if env.output.json_mode:
        env.output.document(apply_json(report))
    for w in report.warnings:
        env.output.warn(w)
    if not report.plan.changes:
        if not env.output.json_mode:
            env.output.text("No changes. The hosts match the policy.")
        return
    if not report.applied:
        raise typer.Exit(1)  # cancelled at the prompt: nothing was applied (Terraform exits 1 too)
    ok = sum(r.outcome.value == "ok" for r in report.results)
    failed = [r for r in report.results if r.outcome.value == "failed"]
    skipped = sum(r.outcome.value == "skipped" for r in report.results)
    if not env.output.json_mode:
        env.output.text(f"Apply complete: {ok} applied, {len(failed)} failed, {skipped} skipped.")
        hosts = report.by_host()
        if len(hosts) > 1 and (failed or skipped):
            for host, counts in hosts.items():
                state = "FAILED" if counts["failed"] or counts["skipped"] else "ok"
                env.output.text(
                    f"  host {host}: {state} ({counts['ok']} applied, {counts['failed']} failed, "
                    f"{counts['skipped']} skipped)"
                )
        for host, (why, units) in sorted(report.inactive_schedules.items()):
            env.output.text(f"  host {host}: {len(units)} schedule(s) written but NOT ACTIVE: {why}")
    if failed:
        lines = "; ".join(f"{r.address}: {r.message}" for r in failed)
        raise ApplyError(
            f"{len(failed)} resource(s) failed: {lines}",
            hint="fix the cause and run apply again; the state records what succeeded",
        )
