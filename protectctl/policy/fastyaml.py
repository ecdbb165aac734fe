"""A fast YAML 1.2 reader for the common case: libyaml's events, built into plain values here.

ruamel.yaml stays the reader of record (YAML 1.2, positions for every diagnostic), but its
constructor runs in Python and costs ~1 s for a 1,000-group policy (tests/bench/bench_plan.py).
libyaml (through PyYAML's C parser) reads the same text much faster; building dicts and lists
straight from its events, without PyYAML's nodes, resolver and constructor, halves what is
left (0.33 s -> 0.17 s for 1,000 groups). Plain scalars are resolved by YAML 1.2's core schema
(`yes`/`on` stay text, `0755` is decimal), not PyYAML's YAML 1.1 one.

Anything this reader might read differently from ruamel makes it give up (return None):
tags, anchors and aliases, `%YAML`/`%TAG` directives, duplicate, complex or null keys, merge
keys (`<<`), timestamps, and every error. The caller then reads the file with ruamel, whose
answer (or error, with its position) is the one that counts.

Text where the two parsers themselves disagree is deferred before parsing: any tab (libyaml
takes `0<TAB>`, `a: b<TAB>#c` or `a<TAB>: b`, which ruamel refuses as a syntax error), the
YAML 1.1 line breaks NEL, LS and PS (line breaks to libyaml, not to YAML 1.2), a byte order mark
anywhere but at the start (libyaml drops it), and a block scalar header followed by `#` with no
space (`|#`: a comment to libyaml, an error to ruamel) or standing as a whole document. Found by
tests/unit/test_policy_fastyaml.py (random text against ruamel); policies rarely hold any of
these, so the common case stays fast.
"""

from __future__ import annotations

import math
import re
from typing import Any

try:
    from yaml import YAMLError
    from yaml._yaml import CParser
    from yaml.events import (
        DocumentEndEvent,
        DocumentStartEvent,
        MappingEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceEndEvent,
        SequenceStartEvent,
        StreamEndEvent,
        StreamStartEvent,
    )
except ImportError:  # PyYAML or libyaml missing: always defer to ruamel
    CParser = None  # type: ignore[misc,assignment]  # checked before use


class _Defer(Exception):
    """The fast path cannot promise ruamel's reading of this text."""


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), plain scalars only
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(
    r"[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+|\.[0-9]+(?:[eE][-+][0-9]+)?"
    r"|\.(?:inf|Inf|INF))|\.(?:nan|NaN|NAN)"
)
# what ruamel also reads as a number (`1_000`, `-0x1F`, `0b101`): defer rather than imitate
_OTHER_NUMBER = re.compile(
    r"[-+]?(?:0b[0-1_]+|0o?[0-7_]+|[0-9_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*\.[0-9_]*"
    r"(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+][0-9]+)?)"
)
# ruamel reads timestamps as dates: rare in policies, so defer too
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")
_WORDS: dict[str, Any] = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "~": None,
    "null": None,
    "Null": None,
    "NULL": None,
}
_NUMBER_START = frozenset("-+0123456789.")
_SPECIAL = frozenset({"<<", "="})  # ruamel's merge and value tags
_NO_KEY = object()  # a mapping waiting for its next key
# characters libyaml and ruamel treat differently (see the module docstring); all but the tab
# are non-ASCII, so an ASCII text (`str.isascii` is O(1)) needs only the tab check
_DISPUTED_NON_ASCII = re.compile("[\x85\u2028\u2029]|(?<!^)\ufeff")
_BLOCK_HEADER_COMMENT = re.compile(r"[|>][-+0-9]*#")


def _plain(text: str) -> Any:
    """A plain (unquoted) scalar's value."""
    if not text:
        return None
    if text[0] not in _NUMBER_START:
        if text in _SPECIAL:
            raise _Defer
        return _WORDS.get(text, text)
    if _INT.fullmatch(text):
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)  # YAML 1.2: 0755 is decimal, not octal as in YAML 1.1
    if _FLOAT.fullmatch(text):
        lower = text.lower()
        if lower.endswith("inf"):
            return -math.inf if lower.startswith("-") else math.inf
        return math.nan if lower == ".nan" else float(text)
    if _OTHER_NUMBER.fullmatch(text) or _TIMESTAMP.match(text):
        raise _Defer
    return text


def _disputed(text: str) -> bool:
    """True when `text` holds something libyaml and ruamel may read differently."""
    return "\t" in text or (not text.isascii() and _DISPUTED_NON_ASCII.search(text) is not None)


def _documents(parser: Any, text: str) -> list[Any]:
    """Every document of the event stream, as dicts, lists and scalars.

    One loop over the events; `stack` holds the open collections, each as [collection, pending
    key] (the key slot is unused for sequences).
    """
    docs: list[Any] = []
    stack: list[list[Any]] = []
    get_event = parser.get_event
    while True:
        event = get_event()
        cls = event.__class__
        if cls is ScalarEvent:
            if event.tag is not None or event.anchor is not None:
                raise _Defer
            if event.style == "":
                value = _plain(event.value)
            else:
                if event.style in "|>" and (not stack or _BLOCK_HEADER_COMMENT.match(text, event.start_mark.index)):
                    # `|#`: libyaml reads a comment, ruamel refuses the header; a block scalar as a
                    # whole document: libyaml takes a `#` line at column 0 for a comment, ruamel
                    # for content (no policy document is a scalar: ruamel reports it either way)
                    raise _Defer
                value = event.value
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            if event.tag is not None or event.anchor is not None:
                raise _Defer
            if stack and stack[-1][1] is _NO_KEY and stack[-1][0].__class__ is dict:
                raise _Defer  # a collection as a key
            stack.append([{} if cls is MappingStartEvent else [], _NO_KEY])
            continue
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            value = stack.pop()[0]
        elif cls is DocumentStartEvent:
            if event.version is not None or event.tags:
                raise _Defer  # `%YAML 1.1` would change how ruamel resolves plain scalars
            continue
        elif cls is DocumentEndEvent or cls is StreamStartEvent:
            continue
        elif cls is StreamEndEvent:
            return docs
        else:  # AliasEvent, or anything new
            raise _Defer
        if not stack:
            docs.append(value)
            continue
        top = stack[-1]
        collection = top[0]
        if collection.__class__ is list:
            collection.append(value)
        elif top[1] is _NO_KEY:
            if value.__class__ not in (str, int, float, bool) or value in collection or value == "<<":
                raise _Defer  # a duplicate (an error, with its position, from ruamel), null or merge key
            top[1] = value
        else:
            collection[top[1]] = value
            top[1] = _NO_KEY


def load_all(text: str) -> list[Any] | None:
    """Every document of `text`, or None when ruamel must read it."""
    if CParser is None or _disputed(text):
        return None
    parser = CParser(text)
    try:
        return _documents(parser, text)
    except (_Defer, YAMLError, ValueError, TypeError, RecursionError):
        return None
    finally:
        parser.dispose()
