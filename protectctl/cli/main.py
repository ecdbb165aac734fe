"""The protectctl command line: the root app, the shared Env, the one error handler.

Command modules parse options, call one `protectctl.api` function, hand the result to
`Output` and pick the exit code. Only `main()` turns errors into text and exit codes:
ProtectctlError → its message (JSON under --json) and exit code; Ctrl-C → 130; usage
errors → 1; anything else → one line naming the bug and the log file (the traceback goes
there, or to stderr under --debug, never with locals).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from protectctl import __version__
from protectctl.cli.env import Env, env_of
from protectctl.cli.helpformat import HelpGroup
from protectctl.cli.output import Output

_APP_SETTINGS: dict[str, Any] = dict(
    cls=HelpGroup,
    name="protectctl",
    help="Declarative, policy-as-code data protection for Linux fleets.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh and fish
    pretty_exceptions_enable=False,  # tracebacks never reach users, and never with locals
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app = typer.Typer(**_APP_SETTINGS)
__all__ = ["Env", "app", "env_of", "main"]  # Env, env_of: cli/env.py's, named here for older callers


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"protectctl {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("-C", "--directory", help="Policy directory (default: cwd).")] = Path("."),
    json_mode: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show internal tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Fewer messages.")] = False,
    agent_config: Annotated[
        Path | None,
        typer.Option(
            "--agent-config",
            envvar="PROTECTCTL_AGENT_CONFIG",
            help="Agent configuration written by apply (what timers use instead of -C).",
        ),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option("-v", "--verbose", count=True, help="More log lines on stderr (-v: progress events, -vv: debug)."),
    ] = 0,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (also: the NO_COLOR variable).")] = False,
    version: Annotated[
        bool, typer.Option("-V", "--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    if no_color:
        os.environ["NO_COLOR"] = "1"  # every rich console made from here on (tables, progress) honours it
    if verbose:
        _log_to_stderr(verbose)
    ctx.obj = Env(directory, Output(json_mode=json_mode, quiet=quiet), debug, agent_config)


def _log_to_stderr(verbosity: int) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root_logger = logging.getLogger("protectctl")
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


_registered = False


def _register() -> None:
    """Add every command to `app` (once; `main` does it unless the command word is known)."""
    global _registered
    if _registered:
        return
    _registered = True
    from protectctl.cli import agent, browse, hosts, jobs, manpage, monitoring, plan, repair, serve, state, tape

    plan.register(app)
    state.register(app)
    jobs.register(app)
    browse.register(app)
    repair.register(app)
    tape.register(app)
    agent.register(app)
    hosts.register(app)
    serve.register(app)
    manpage.register(app)
    monitoring.register(app)


# Root options that take a value (the rest are flags): what `_subcommand` must skip.
_VALUED_OPTIONS = frozenset({"-C", "--directory", "--agent-config"})


def _subcommand(args: list[str]) -> str | None:
    """The command word of `args` when it can be told for sure, else None."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help", "--"):
            return None
        if arg in _VALUED_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-"):
            return arg
        i += 1
    return None


# The module registering each command word (tests/unit/test_cli_timer.py keeps it in step with
# the app). `manpage` reads the whole app, so it is not here: it gets the full one.
COMMAND_MODULES = {
    **dict.fromkeys(("validate", "plan", "apply", "destroy", "graph", "schema"), "plan"),
    **dict.fromkeys(("run", "points", "restore", "prune", "check", "status"), "jobs"),
    **dict.fromkeys(("ls", "cat", "versions", "diff", "find", "mount"), "browse"),
    **dict.fromkeys(("tape", "keys"), "tape"),
    **{name: name for name in ("state", "repair", "agent", "hosts", "serve")},
    "alerts": "monitoring",
}


def _command_for(args: list[str]) -> Any:
    """The click command to run. A command line whose command word can be told gets an app
    holding only the commands of the module registering it: building all ~40 commands'
    parameters cost ~0.04 s of each run (typer.main.get_command), ~0.05 s of an agent's `run`;
    parsing, help and errors of that command are the same in both."""
    module = COMMAND_MODULES.get(_subcommand(args) or "")
    if module is not None and not any(k.endswith("_COMPLETE") for k in os.environ):
        import importlib

        light = typer.Typer(**_APP_SETTINGS)
        light.callback()(root)
        importlib.import_module(f"protectctl.cli.{module}").register(light)
        return typer.main.get_command(light)
    _register()
    return typer.main.get_command(app)


INTERRUPTED = 130  # the shell's code for SIGINT; no command exits 130 for another reason


def _log_crash() -> Path:
    import traceback

    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "protectctl"
    try:
        base.mkdir(parents=True, exist_ok=True)
        path = base / "crash.log"
        with path.open("a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        return path
    except OSError:
        return Path("(no log: cannot write under ~/.local/state)")


def crash_exit(err: Exception) -> NoReturn:
    """A bug: one line naming it and the log the traceback went to, exit 70 (in an except block)."""
    where = _log_crash()
    sys.stderr.write(
        f"protectctl: internal error (a bug): {type(err).__name__}: {err}\n  details: {where} (or rerun with --debug)\n"
    )
    sys.exit(70)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to an exit code."""
    from protectctl.errors import ProtectctlError

    args = sys.argv[1:] if argv is None else argv
    output = Output(json_mode="--json" in args)
    debug = "--debug" in args
    command = _command_for(args)
    try:
        code = command.main(args=args, prog_name="protectctl", standalone_mode=False)
    except ProtectctlError as err:
        output.error(err)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        from protectctl.cli.interrupt import interrupt_message

        output.info(interrupt_message(), always=True)  # even under --quiet: the user must know what was left
        sys.exit(INTERRUPTED)
    except typer.Exit as err:
        code = err.exit_code
    except typer.TyperException as err:  # usage errors: bad option values, missing arguments
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            sys.stderr.write(f"Error: {err}\n")
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - the one place a bug becomes a message
        if debug:
            raise
        crash_exit(err)
    if code == INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) before it reaches us
        from protectctl.cli.interrupt import interrupt_message

        output.info(interrupt_message(), always=True)
    sys.exit(code if isinstance(code, int) else 0)
