"""repair index | repair points: contain and repair repository damage (engine/repair.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from protectctl.cli.env import env_of

if TYPE_CHECKING:
    from protectctl.engine.points import DamagedPoint

StorageArg = Annotated[str | None, typer.Argument(help="Storage name (default: every Storage in the policy).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def register(app: typer.Typer) -> None:
    repair_app = typer.Typer(help="Repair a damaged repository (see `check`).", no_args_is_help=True)
    app.add_typer(repair_app, name="repair")

    @repair_app.command("index")
    def index(ctx: typer.Context, storage: StorageArg = None, json_mode: JsonOpt = False) -> None:
        """Rebuild the index from the packs' own headers; removes damaged index objects.

        Takes the repository's exclusive lock (no backup, restore or prune may run meanwhile)
        and never deletes a pack.
        """
        from protectctl import api
        from protectctl.cli.jobs import progress_of

        env = env_of(ctx, json_mode)
        results = api.repair_index(env.policy_dir, storage, progress=progress_of(env))
        if env.output.json_mode:
            env.output.document(
                {
                    "format_version": "1.0",
                    "repositories": [
                        {
                            "storage": where,
                            "damaged_index": dict(r.damaged_index),
                            "packs_reindexed": r.packs_reindexed,
                            "blobs_reindexed": r.blobs_reindexed,
                            "unreadable_packs": dict(r.unreadable_packs),
                            "index_written": list(r.index_written),
                            "index_removed": list(r.index_removed),
                        }
                        for where, r in results
                    ],
                }
            )
        else:
            for where, r in results:
                lines = [
                    f"{where}: {r.packs_reindexed} pack(s) re-indexed from their headers "
                    f"({r.blobs_reindexed} blobs), {len(r.index_removed)} damaged index object(s) removed"
                ]
                lines += [f"  removed {why}" for _name, why in sorted(r.damaged_index.items())]
                lines += [f"  NOT indexed, kept: {why}" for why in r.unreadable_packs.values()]
                if not r.changed:
                    lines.append("  the index was complete; nothing changed")
                env.output.text("\n".join(lines))
        if any(r.unreadable_packs for _where, r in results):
            raise typer.Exit(1)

    @repair_app.command("points")
    def points(
        ctx: typer.Context,
        storage: StorageArg = None,
        forget_damaged: Annotated[
            bool,
            typer.Option(
                "--forget-damaged", help="Delete the manifests that do not open (without it: only list them)."
            ),
        ] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """List point manifests that do not open; --forget-damaged deletes them.

        A damaged manifest is skipped by every command; forgetting it lets prune delete data
        again (data other points need stays).
        """
        from protectctl import api

        env = env_of(ctx, json_mode)
        results = api.repair_points(env.policy_dir, storage, forget=forget_damaged)
        if env.output.json_mode:
            env.output.document(
                {
                    "format_version": "1.0",
                    "forgotten": forget_damaged,
                    "repositories": [
                        {"storage": where, "damaged_points": [{"id": d.id, "problem": d.problem} for d in damaged]}
                        for where, damaged in results
                    ],
                }
            )
        else:
            for where, damaged in results:
                env.output.text(_damaged_points_text(where, damaged, forgotten=forget_damaged))
        if not forget_damaged and any(damaged for _where, damaged in results):
            raise typer.Exit(1)


def _damaged_points_text(where: str, damaged: Sequence[DamagedPoint], *, forgotten: bool) -> str:
    lines = [f"{where}: {'forgot' if forgotten else 'found'} {len(damaged)} damaged point manifest(s)"]
    lines += [f"  {d.problem}" for d in damaged]
    if damaged and not forgotten:
        lines.append("  forget them with `protectctl repair points --forget-damaged`")
    return "\n".join(lines)
