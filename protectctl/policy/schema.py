"""JSON Schema of every document kind, exported from the pydantic models (pure); a
ProtectionGroup's members take the spec of every installed provider."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model

from protectctl.policy.model import API_VERSION, SPEC_MODELS, Metadata, spec_model_for

SCHEMA_ID = "https://protectctl.dev/schemas/v1"


def document_schemas() -> dict[str, dict[str, Any]]:
    """kind (lower-case) → JSON Schema of a whole document of that kind."""
    out: dict[str, dict[str, Any]] = {}
    for kind in SPEC_MODELS:
        spec_model = spec_model_for(kind, installed=True)
        model = create_model(
            kind.value,
            __config__=ConfigDict(extra="forbid"),
            apiVersion=(Literal["protectctl/v1"], Field(description=f"always {API_VERSION}")),
            kind=(Literal[kind.value], ...),
            metadata=(Metadata, ...),
            spec=(spec_model, ...),
        )
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{SCHEMA_ID}/{kind.value.lower()}.json"
        out[kind.value.lower()] = schema
    return out


def combined_schema(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One schema for any protectctl document, chosen by its `kind` (for multi-document files and
    editors: `# yaml-language-server: $schema=.../schemas/protectctl.json`). Self-contained: each
    kind's definitions are hoisted into one `$defs`, prefixed with the kind so names never collide."""
    defs: dict[str, Any] = {}
    branches = []
    for name, schema in sorted(schemas.items()):
        body = {k: v for k, v in schema.items() if k not in ("$schema", "$id", "$defs")}
        for def_name, definition in schema.get("$defs", {}).items():
            defs[f"{name}.{def_name}"] = _rebase(definition, name)
        defs[name] = _rebase(body, name)
        kind = schema["properties"]["kind"]["const"]
        branches.append(
            {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": {"$ref": f"#/$defs/{name}"}}
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_ID}/protectctl.json",
        "title": "protectctl policy document",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"kind": {"enum": sorted(s["properties"]["kind"]["const"] for s in schemas.values())}},
        "allOf": branches,
        "$defs": defs,
    }


def _rebase(node: Any, kind: str) -> Any:
    """`#/$defs/X` references of one kind's schema, pointed at its hoisted `#/$defs/KIND.X`."""
    if isinstance(node, dict):
        return {
            k: (
                f"#/$defs/{kind}.{v.removeprefix('#/$defs/')}"
                if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/")
                else _rebase(v, kind)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(v, kind) for v in node]
    return node
