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
