"""`protectctl manpage`: a man page (roff) generated from the command line itself.

Written here rather than taken from a library: click-man and typer's own docs generator emit
Markdown or one page per command, and a single page of every command with its options is
short to produce from click's own command tree, which stays the one source of truth.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer


def _escape(text: str) -> str:
    """roff-safe text: backslashes doubled, a leading dot or quote protected."""
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines())


# typer 0.27+ vendors click: its commands are not `click` classes, so they are read by shape
# (a group has `list_commands`; a parameter says whether it is an argument).
Command = Any
ContextFactory = Any


def _is_group(command: Command) -> bool:
    return hasattr(command, "list_commands")


def _commands(group: Command, prefix: str, context: ContextFactory) -> list[tuple[str, Command]]:
    out: list[tuple[str, Command]] = []
    ctx = context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        path = f"{prefix} {name}".strip()
        if _is_group(sub):
            out.extend(_commands(sub, path, context))
        else:
            out.append((path, sub))
    return out


def _option_lines(command: Command, context: ContextFactory) -> list[str]:
    ctx = context(command)
    lines: list[str] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or param.param_type_name == "argument":
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{_escape(names)}\\fR", _escape(help_text or "")]
    return lines


def render(root: Command, context: ContextFactory, *, version: str, today: datetime) -> str:
    """The whole man page: name, synopsis, global options, then every command and its options."""
    lines = [
        f'.TH PROTECTCTL 1 "{today:%Y-%m-%d}" "protectctl {_escape(version)}" "User Commands"',
        ".SH NAME",
        "protectctl \\- declarative, policy\\-as\\-code data protection for Linux fleets",
        ".SH SYNOPSIS",
        "\\fBprotectctl\\fR [\\fB\\-C\\fR \\fIDIR\\fR] [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _escape(root.help or ""),
        ".SH GLOBAL OPTIONS",
        *_option_lines(root, context),
        ".SH COMMANDS",
    ]
    for path, command in _commands(root, "", context):
        usage = [
            (p.name or "").upper() if p.required else f"[{(p.name or '').upper()}]"
            for p in command.params
            if p.param_type_name == "argument"
        ]
        lines += [
            ".SS " + _escape(" ".join([f"protectctl {path}", *usage])),
            _escape(command.help or ""),
            *_option_lines(command, context),
        ]
    lines += [
        ".SH EXIT STATUS",
        "0 success or no changes; 1 error; 2 changes present (\\fBplan \\-\\-detailed\\-exitcode\\fR); "
        "130 interrupted.",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBNO_COLOR\\fR",
        "No colour in any output.",
        ".TP",
        "\\fBPROTECTCTL_AGENT_CONFIG\\fR",
        "The agent configuration (what timers use instead of \\-C).",
        ".SH SEE ALSO",
        "The README and docs/ of the protectctl repository.",
    ]
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("manpage")
    def manpage(ctx: typer.Context) -> None:
        """Print the man page (roff): `protectctl manpage > protectctl.1; man -l protectctl.1`."""
        from protectctl import __version__
        from protectctl.cli.env import env_of

        root = ctx.find_root().command
        env_of(ctx).output.text(render(root, type(ctx), version=__version__, today=datetime.now(UTC)))
