"""Agent and source configuration files, rendered with jinja2 and read back by the agent.

Rendering is pure (inputs → text); reading validates with pydantic at the edge. The files
hold no secret: a passphrase appears only as where it lives.
"""

from __future__ import annotations

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
    """The mapping of an agent or source config. Every timer-started job reads them: the fast
    reader (libyaml, policy/fastyaml.py) first, ruamel (~20 ms to import) only when it defers."""
    from protectctl.policy.fastyaml import load_all

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtectctlError(
            f"{what} {path} does not exist", hint="run `protectctl apply` to provision this host"
        ) from None
    except (OSError, ValueError) as err:
        raise ProtectctlError(f"cannot read {what} {path}: {err}") from None
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
