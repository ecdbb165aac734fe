"""File names are bytes: the few explicit conversions between them and text.

On Linux a file name, a symlink target and an extended attribute's name are any bytes
(except "/" and NUL in a name); nothing promises they are UTF-8. Everything that stores or
compares them (trees, the journal, restore) keeps them as `bytes`. Text appears only at
three edges, each with its own, explicit conversion:

* shown to people: `show_name`, undecodable bytes escaped as ``\\xff`` (lossy, display only);
* matched against text that people wrote (include/exclude patterns) or hashed into keys
  that earlier releases computed from text: `name_text`, UTF-8 with surrogateescape, so each
  undecodable byte becomes one lone surrogate and the mapping is exact and reversible;
* given by people (``--path``): `text_name`, the inverse of `name_text`, plus
  `unescape_name` so that a name can also be typed the way `show_name` printed it.

Never `os.fsdecode`/`os.fsencode`: they follow the locale, so a tree written under a Latin-1
locale would restore different bytes under a UTF-8 one. Pure: no I/O.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def show_name(raw: bytes) -> str:
    """`raw` for messages and listings: UTF-8 where it is, other bytes and control characters
    (a newline in a name must not forge a line of output) as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", raw.decode("utf-8", "backslashreplace"))


def name_text(raw: bytes) -> str:
    """The exact, reversible text form of `raw` (UTF-8, undecodable bytes as surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def text_name(text: str) -> bytes:
    """The bytes `name_text` made `text` from; raises ValueError for text it cannot have made
    (a lone surrogate that stands for no byte)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:
        raise ValueError(f"{show_text(text)} is not a file name: it holds {err.reason}") from err


def show_text(text: str) -> str:
    """Text that may hold lone surrogates (from an older point or a crafted tree), printable."""
    try:
        return show_name(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")


def unescape_name(raw: bytes) -> bytes:
    """`raw` with every ``\\xNN`` that `show_name` could have printed turned back into its byte."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
