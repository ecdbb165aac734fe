"""Paths inside a recovery point, as people type them, and the patterns of `find`.

Pure: no I/O. A path is given relative to the source (``docs/a.txt``) or absolute as it was
protected (``/srv/docs/a.txt`` of a source whose root was ``/srv/docs``, what a provider's
`SourceRoot` tells); both name the same entry. Names are bytes (engine/names.py): the text a
shell gave is turned into bytes once, here, and a name may also be typed the way listings show
it (``\\xff``), which the tree lookup accepts.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from protectctl.engine.names import show_text, text_name
from protectctl.errors import ProtectctlError


class BrowsePathError(ProtectctlError):
    """A path or pattern that cannot name anything in a point."""


def point_relative(text: str, root: str | None) -> str:
    """`text` relative to the point's root: an absolute path under `root` loses that prefix;
    any other path is taken as relative to the source (a leading "/" dropped, as before)."""
    value = text.strip()
    if root and value.startswith("/"):
        norm = posixpath.normpath(value)
        base = posixpath.normpath(root)
        if norm == base:
            return ""
        if base == "/":
            return norm.lstrip("/")
        if norm.startswith(base + "/"):
            return norm[len(base) + 1 :]
    return value.lstrip("/")


def split_path(text: str, root: str | None = None) -> tuple[bytes, ...]:
    """Components inside the point of a user-given path; raises BrowsePathError."""
    relative = point_relative(text, root)
    try:
        raw = text_name(relative)
    except ValueError as err:
        raise BrowsePathError(f"path '{show_text(text)}': {err}") from err
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise BrowsePathError(
            f"path '{show_text(text)}' leaves the recovery point", hint="give a path inside the source"
        )
    return parts


def shown_path(parts: tuple[bytes, ...], root: str | None = None) -> str:
    """How a path inside a point is shown: absolute under the source root when it has one."""
    from protectctl.engine.names import show_name

    inner = "/".join(show_name(p) for p in parts)
    if root:
        return posixpath.join(root, inner) if inner else root
    return inner or "."


@dataclass(frozen=True, slots=True)
class Pattern:
    """A `find` pattern: shell wildcards (``*``, ``?``, ``[...]``). Without a "/" it matches an
    entry's name, like `find -name`; with one, its whole path from the point's root (a leading
    "/" or the source root before it optional), like `find -path`."""

    text: str
    whole_path: bool
    match: Callable[[str], object]

    @classmethod
    def parse(cls, text: str, root: str | None = None) -> Pattern:
        if not text or "\x00" in text:
            raise BrowsePathError(
                f"pattern {text!r} is empty or holds a NUL byte",
                hint="give shell wildcards, e.g. '*.conf' or 'etc/*/hosts'",
            )
        whole = "/" in text.strip("/") or text.startswith("/")
        body = point_relative(text, root) if whole else text
        regex = re.compile(fnmatch.translate(body), re.DOTALL)
        return cls(text, whole, regex.match)

    def matches(self, name: str, path: str) -> bool:
        """Whether an entry matches: its name and its path from the point's root, both as exact
        text (engine/names.py `name_text`)."""
        return self.match(path if self.whole_path else name) is not None
