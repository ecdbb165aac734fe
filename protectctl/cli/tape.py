"""tape and keys: cartridges, pools, locations, recycling, inventory; tape key management."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from protectctl.cli.helpformat import HelpGroup
from protectctl.cli.main import Env, env_of

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _bytes(n: int) -> str:
    from protectctl.humanize import human_bytes as size

    return size(n)


def _rows(env: Env, rows: list[Any]) -> None:
    if env.output.json_mode:
        env.output.document({"format_version": "1.0", "cartridges": [r.to_json() for r in rows]})
        return
    env.output.table(
        ["barcode", "pool", "state", "location", "expires", "key id", "bytes", "points"],
        [
            (
                r.barcode,
                r.pool,
                r.state,
                r.location,
                f"{r.expires:%Y-%m-%d}" if r.expires else "-",
                r.key_id,
                f"{_bytes(r.bytes_used)} / {_bytes(r.capacity_bytes)}",
                r.points,
            )
            for r in rows
        ],
    )
    partial = [line for r in rows for line in r.partial_lines()]
    if partial:
        env.output.text(
            "\n".join(
                [f"{len(partial)} partial segment(s), holding no usable copy:", *(f"  {line}" for line in partial)]
            )
        )


def tape_run_summary(r: Any) -> str:
    lines = [f"{r.group}: {len(r.copied)} point(s) copied to pool {r.pool} in {r.duration_s:.1f}s"]
    lines += [
        f"  {c.source} {c.point_id[:12]} of {c.point_time:%Y-%m-%d %H:%M:%S}Z -> {', '.join(c.barcodes)} "
        f"({_bytes(c.bytes_plain)})"
        for c in r.copied
    ]
    lines += [f"  {s}" for s in r.skipped]
    lines += [f"  repaired: {s}" for s in r.repaired]
    return "\n".join(lines)


def tape_verify_summary(r: Any) -> str:
    """`run verify`: the group's tape copies read back."""
    verdict = "ok" if r.ok else f"{len(r.bad)} copy(ies) NOT restorable"
    lines = [
        f"tape pool {r.pool}: {r.copies_ok} copy(ies) of {r.group} whole on {len(r.scanned)} "
        f"cartridge(s) read back; {verdict}"
    ]
    lines += [f"  BAD: {b}" for b in r.bad]
    lines += [f"  partial: {p}" for p in r.partial]
    lines += [f"  not read: {n}" for n in r.not_read]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:  # noqa: C901 - one small closure per command
    tape_app = typer.Typer(cls=HelpGroup, help="Tape libraries, cartridges and pools.", no_args_is_help=True)
    keys_app = typer.Typer(
        cls=HelpGroup, help="Tape keys and repository master keys: list, rotate, export, import.", no_args_is_help=True
    )
    app.add_typer(tape_app, name="tape")
    app.add_typer(keys_app, name="keys")

    @tape_app.command("list")
    def tape_list(
        ctx: typer.Context,
        pool: Annotated[str | None, typer.Option("--pool", help="Only this pool.")] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Cartridges: barcode, pool, state, location, expiry, key id, bytes."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        _rows(env, api.tape_list(env.policy_dir, pool))

    @tape_app.command("label")
    def tape_label(
        ctx: typer.Context,
        count: Annotated[int, typer.Option("--count", "-n", help="How many cartridges.")],
        pool: Annotated[str, typer.Option("--pool", help="The pool they join.")],
        library: Annotated[str | None, typer.Option("--library", help="TapeLibrary name.")] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Add and label new blank cartridges (barcodes are assigned)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        _rows(env, api.tape_label(env.policy_dir, count, pool, library))

    @tape_app.command("move")
    def tape_move(
        ctx: typer.Context,
        barcode: Annotated[str, typer.Argument(help="Cartridge barcode.")],
        to: Annotated[str, typer.Option("--to", help="VAULT, in-transit[:VAULT] or library.")],
        json_mode: JsonOpt = False,
    ) -> None:
        """Record where a cartridge goes (leaving the library exports it, `library` brings it back)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        _rows(env, [api.tape_move(env.policy_dir, barcode, to)])

    @tape_app.command("recycle")
    def tape_recycle(
        ctx: typer.Context,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Return expired cartridges to scratch (unexpired media are never touched)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        r = api.tape_recycle(env.policy_dir, dry_run=dry_run)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", **r.to_json()})
            return
        verb = "would recycle" if r.dry_run else "recycled"
        lines = [f"{verb} {len(r.recycled)} cartridge(s){': ' + ', '.join(r.recycled) if r.recycled else ''}"]
        lines += [f"  expired but outside the library (bring back to recycle): {a}" for a in r.away]
        lines += [f"  refused: {x}" for x in r.refused]
        env.output.text("\n".join(lines))

    @tape_app.command("inventory")
    def tape_inventory(
        ctx: typer.Context,
        rebuild: Annotated[
            bool,
            typer.Option("--rebuild", help="Read every record and rebuild the catalog from the cartridges."),
        ] = False,
        json_mode: JsonOpt = False,
    ) -> None:
        """Read the cartridges' labels (and with --rebuild every header) back into the catalog."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        r = api.tape_inventory(env.policy_dir, rebuild=rebuild)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", **r.to_json()})
        else:
            lines = [f"scanned {len(r.scanned)} cartridge(s); the catalog holds {r.copies} point copies"]
            lines += [f"  problem: {p}" for p in r.problems]
            lines += [f"  partial: {p}" for p in r.partial]
            env.output.text("\n".join(lines))
        if r.problems:
            raise typer.Exit(1)

    @keys_app.command("list")
    def keys_list(ctx: typer.Context, json_mode: JsonOpt = False) -> None:
        """Tape keys and repository master keys: id, key, storage, created, passphrase, exported."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        rows = api.keys_list(env.policy_dir)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "keys": rows})
            return
        env.output.table(
            ["kind", "id", "encryption key", "storage", "created", "current", "passphrase", "exported", "cartridges"],
            [
                (
                    r["kind"],
                    r["id"],
                    r["name"],
                    r.get("storage") or "-",
                    str(r["created"])[:19] if r["created"] else "-",
                    "yes" if r["current"] else "no",
                    r.get("passphrase") or "-",
                    str(r["exported"])[:19] if r["exported"] else "NEVER",
                    r["cartridges"] if r["kind"] == "tape" else "-",
                )
                for r in rows
            ],
        )

    @keys_app.command("rotate")
    def keys_rotate(
        ctx: typer.Context,
        key: Annotated[str, typer.Argument(help="EncryptionKey name.")],
        old_passphrase_file: Annotated[
            Path | None,
            typer.Option(
                "--old-passphrase-file",
                help="The passphrase before the change: keys under it are re-wrapped under the current one.",
            ),
        ] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Tape: new cartridges use a new key (old ones stay readable). Repositories: the master key is
        re-wrapped under the passphrase the EncryptionKey now gives (no data rewritten)."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        info: dict[str, Any] = api.keys_rotate(env.policy_dir, key, old_passphrase_file=old_passphrase_file)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "key": info})
            return
        lines = []
        if info.get("id"):
            lines.append(
                f"new tape key {info['id']} is current for {key}; export it: "
                f"protectctl keys export {info['id']} --to FILE"
            )
        if info.get("rewrapped"):
            lines.append(f"tape keys re-wrapped under the current passphrase: {', '.join(info['rewrapped'])}")
        for r in info.get("repositories", []):
            if r.get("added"):
                lines.append(
                    f"repository {r['storage']}: new key file {r['added']}"
                    + (f", removed {', '.join(r['removed'])}" if r["removed"] else "")
                    + f"; export it: protectctl keys export {r['storage']} --to FILE"
                )
            else:
                lines.append(f"repository {r['storage']}: {r.get('note', 'unchanged')}")
        env.output.text("\n".join(lines))

    @keys_app.command("export")
    def keys_export(
        ctx: typer.Context,
        key: Annotated[
            str, typer.Argument(help="Tape key id or EncryptionKey name; or a Storage name or repository key id.")
        ],
        to: Annotated[Path, typer.Option("--to", help="File to write (mode 0600).")],
        passphrase_file: Annotated[
            Path | None,
            typer.Option("--passphrase-file", help="Protect the file with this passphrase instead of the key's."),
        ] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Write keys to a passphrase-protected file for another site."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        ids = api.keys_export(env.policy_dir, key, to, passphrase_file=passphrase_file)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "exported": ids, "file": str(to)})
        else:
            env.output.text(f"exported {len(ids)} key(s) to {to}: {', '.join(ids)}")

    @keys_app.command("import")
    def keys_import(
        ctx: typer.Context,
        source: Annotated[Path, typer.Argument(help="An exported key file.")],
        passphrase_file: Annotated[
            Path | None, typer.Option("--passphrase-file", help="The passphrase the file was exported with.")
        ] = None,
        json_mode: JsonOpt = False,
    ) -> None:
        """Import keys exported at another site."""
        from protectctl import api

        env = env_of(ctx, json_mode)
        ids = api.keys_import(env.policy_dir, source, passphrase_file=passphrase_file)
        if env.output.json_mode:
            env.output.document({"format_version": "1.0", "imported": ids})
        else:
            env.output.text(f"imported {len(ids)} key(s): {', '.join(ids)}")
