"""A fast YAML 1.2 reader for the common case: libyaml through PyYAML's C loader.

ruamel.yaml stays the reader of record (YAML 1.2, positions for every diagnostic), but its
constructor runs in Python and costs ~1 s for a 1,000-group policy
(tests/bench/bench_plan.py). PyYAML's C loader reads the same text about 3x faster. Its
default resolver is YAML 1.1 (`yes`/`on` are booleans, `0755` is octal), so this loader
resolves implicit scalars by YAML 1.2's core schema instead, and gives up (returns None) on
anything it would read differently from ruamel: duplicate keys, tags, errors. The caller then
reads the file with ruamel, whose answer (or error, with its position) is the one that counts.
"""

from __future__ import annotations

import re
from typing import Any

try:
    import yaml
    from yaml import CSafeLoader as _Base
except ImportError:  # PyYAML or libyaml missing: always defer to ruamel
    yaml = None


class _Defer(Exception):
    """The fast path cannot promise ruamel's reading of this text."""


if yaml is not None:

    class _Loader(_Base):  # type: ignore[misc]
        yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            # one pass that builds the mapping and refuses what ruamel would read differently:
            # duplicate or complex keys, and merge keys (`<<`), which it reports with a position
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) or key in mapping or key == "<<":
                    raise _Defer
                mapping[key] = self.construct_object(value_node, deep=deep)
            return mapping

    def _resolver(tag: str, pattern: str, first: str) -> None:
        _Loader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))

    # YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
    _resolver("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
    _resolver("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
    _resolver("tag:yaml.org,2002:float",
              r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789.")
    _resolver("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])  # type: ignore[arg-type]
    # ruamel reads timestamps as dates: rare in policies, so defer rather than imitate
    _resolver("tag:yaml.org,2002:timestamp", r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}", "0123456789")

    def _int(loader: Any, node: Any) -> int:
        text = str(loader.construct_scalar(node))
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)  # YAML 1.2: 0755 is decimal, not octal as in YAML 1.1

    def _defer(loader: Any, node: Any) -> Any:
        raise _Defer

    _Loader.add_constructor("tag:yaml.org,2002:int", _int)
    _Loader.add_constructor("tag:yaml.org,2002:timestamp", _defer)


def load_all(text: str) -> list[Any] | None:
    """Every document of `text`, or None when ruamel must read it."""
    if yaml is None:
        return None
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except (_Defer, yaml.YAMLError, ValueError, TypeError, RecursionError):
        return None
