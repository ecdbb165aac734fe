"""Agent and source configuration files, rendered with jinja2 and read back by the agent.

Rendering is pure (inputs → text); reading validates with pydantic at the edge. The files
hold no secret: a passphrase appears only as where it lives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protectctl.errors import ProtectctlError

if TYPE_CHECKING:
    import jinja2


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("protectctl.provision", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def render(template: str, values: Mapping[str, Any]) -> str:
    env = _environment()
    return env.get_template(template).render(**values)


def render_agent_config(inputs: Mapping[str, Any]) -> str:
    return render("agent.yaml.j2", inputs)


def render_source_config(inputs: Mapping[str, Any]) -> str:
    return render("source.yaml.j2", inputs)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping of an agent or source config. Every timer-started job reads them: as the
    lines apply writes (`read_own_lines`: no YAML library at all), else with the fast reader
    (libyaml, policy/fastyaml.py), ruamel (~20 ms to import) only when that defers."""

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtectctlError(
            f"{what} {path} does not exist", hint="run `protectctl apply` to provision this host"
        ) from None
    except (OSError, ValueError) as err:
        raise ProtectctlError(f"cannot read {what} {path}: {err}") from None
    data: object = read_own_lines(text)
    if data is None:
        from protectctl.policy.fastyaml import load_all

        documents = load_all(text)
        if documents is not None and len(documents) == 1:
            data = documents[0]
        else:
            from ruamel.yaml import YAML
            from ruamel.yaml.error import YAMLError

            try:
                data = YAML(typ="safe").load(text)
            except YAMLError as err:
                raise ProtectctlError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(data, dict):
        raise ProtectctlError(f"{what} {path} is not a mapping")
    return data


# What the config templates write on a line (templates/agent.yaml.j2, source.yaml.j2): a key, and
# either a word (`kind: SourceConfig`) or a value through jinja's `tojson` (one line of JSON).
_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): (.*)")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_NOT_TEXT = frozenset({"null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE"})


def _no_constant(name: str) -> object:
    raise ValueError(name)  # NaN, Infinity: JSON's, not YAML's


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")  # libyaml and ruamel refuse it: their answer counts
    return out


def read_own_lines(text: str) -> dict[str, Any] | None:
    """The mapping of a config as the templates write it, read without a YAML library; None
    when any line is not of that shape, and YAML reads the text. Every value taken is one a
    YAML 1.2 reader gives alike: JSON (a subset of YAML 1.2) without NaN, Infinity or a
    repeated key, or a plain word that is neither null nor a boolean (so text) nor a number."""
    out: dict[str, Any] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        match = _KEY_LINE.fullmatch(line)
        if match is None or match[1] in out:
            return None
        value = match[2]
        if (
            value[:1] in ('"', "{", "[")
            or value in ("null", "true", "false")
            or value[:1].isdigit()
            or value[:1] == "-"
        ):
            try:
                out[match[1]] = json.loads(value, parse_constant=_no_constant, object_pairs_hook=_unique)
            except ValueError:
                return None
            if _SURROGATE.search(value):
                return None  # a pair of escapes JSON joins into one character: leave it to YAML
            if isinstance(out[match[1]], float) and not re.fullmatch(r"-?[0-9]+\.[0-9]+(e[-+]?[0-9]+)?", value):
                return None  # floats as JSON writes them only (YAML 1.2 reads `1e5` alike, but why bet)
        elif _WORD.fullmatch(value) and value not in _NOT_TEXT:
            out[match[1]] = value
        else:
            return None
    return out or None
