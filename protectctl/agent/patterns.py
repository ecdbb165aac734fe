"""Include/exclude patterns for a filesystem source, in the spirit of .gitignore.

Pure. Paths are relative to the source root, POSIX-style, without a leading slash. Names
are bytes; the archiver matches their `engine.names.name_text` form, so a byte that is not
UTF-8 is one character (``?`` matches it, ``*`` spans it).

- ``*.tmp``    no slash: matches the name at any depth;
- ``cache/``   a trailing slash: directories only;
- ``/build``   a leading (or inner) slash anchors the pattern at the root;
- ``**/x``, ``a/**``, ``a/**/b``: ``**`` spans any number of directories;
- ``*`` and ``?`` never cross a slash; ``[abc]`` is a character class;
- ``!pattern`` re-includes what an earlier exclude pattern matched (the last match wins).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    regex: re.Pattern[str]
    dirs_only: bool
    negated: bool


def compile_pattern(text: str) -> Pattern:
    """Compile one pattern; raises ValueError for an empty one."""
    body = text.strip()
    negated = body.startswith("!")
    body = body[1:] if negated else body
    dirs_only = body.endswith("/")
    body = body.rstrip("/")
    if not body:
        raise ValueError(f"empty pattern {text!r}")
    anchored = "/" in body
    body = body.lstrip("/")
    regex = _translate(body)
    prefix = "" if anchored else "(?:.*/)?"
    return Pattern(text, re.compile(f"^{prefix}{regex}$", re.DOTALL), dirs_only, negated)


def _translate(body: str) -> str:
    """Glob to regex, segment-aware for `**`."""
    out: list[str] = []
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            i = _translate_one(body, i, out)
    return "".join(out)


def _translate_one(body: str, i: int, out: list[str]) -> int:
    char = body[i]
    if char == "*":
        out.append("[^/]*")
    elif char == "?":
        out.append("[^/]")
    elif char == "[":
        end = body.find("]", i + 2 if body[i + 1 : i + 2] in ("!", "]") else i + 1)
        if end == -1:
            out.append(re.escape(char))
        else:
            inner = body[i + 1 : end].replace("\\", "\\\\")
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append(f"[{inner}]")
            return end + 1
    else:
        out.append(re.escape(char))
    return i + 1


class PathFilter:
    """Decides, for each path found while walking, whether it belongs to the backup."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = [compile_pattern(p) for p in include]
        self._exclude = [compile_pattern(p) for p in exclude]

    @property
    def has_includes(self) -> bool:
        return bool(self._include)

    def excluded(self, relpath: str, is_dir: bool) -> bool:
        """True when the exclude patterns drop this path (and, for a directory, all below it)."""
        return _last_match(self._exclude, relpath, is_dir)

    def included(self, relpath: str, is_dir: bool) -> bool:
        """True when include patterns are absent or select this path itself."""
        if not self._include:
            return True
        return _last_match(self._include, relpath, is_dir)


def _last_match(patterns: Sequence[Pattern], relpath: str, is_dir: bool) -> bool:
    result = False
    for pattern in patterns:
        if pattern.dirs_only and not is_dir:
            continue
        if pattern.regex.match(relpath):
            result = not pattern.negated
    return result


def validate_patterns(patterns: Sequence[object], field: str) -> list[str]:
    """Problems with a list of patterns from a member spec (empty = fine)."""
    problems: list[str] = []
    for index, item in enumerate(patterns):
        if not isinstance(item, str):
            problems.append(f"{field}[{index}] must be a string pattern, not {type(item).__name__}")
            continue
        try:
            compile_pattern(item)
        except (ValueError, re.error) as err:
            problems.append(f"{field}[{index}] {item!r} is not a valid pattern: {err}")
    return problems
