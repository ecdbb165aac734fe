"""`protectctl serve`: a repository over stdin/stdout, the SSH forced command on a backup server.

An agent's key is authorised on the backup server only as
`restrict,command="…/protectctl serve --append-only --repo PATH"`: whatever the client asks
to run, sshd runs this, so a protected host can add objects to that one repository and
never delete or overwrite them (protectctl/engine/storage/serve.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve", hidden=True)
    def serve(
        repo: Annotated[Path, typer.Option("--repo", help="The repository directory to serve.")],
        append_only: Annotated[
            bool, typer.Option("--append-only", help="Refuse deletes and overwrites (lock objects excepted).")
        ] = False,
    ) -> None:
        """Serve one repository on stdin/stdout (run by sshd as a forced command)."""
        import sys

        from protectctl.engine.storage.local import LocalStorage
        from protectctl.engine.storage.serve import Server

        Server(LocalStorage(repo), append_only=append_only).serve(sys.stdin.buffer, sys.stdout.buffer)
