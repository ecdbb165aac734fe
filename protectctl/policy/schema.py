"""JSON Schema of every document kind, exported from the pydantic models (pure)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model

from protectctl.policy.model import API_VERSION, SPEC_MODELS, Metadata

SCHEMA_ID = "https://protectctl.dev/schemas/v1"


def document_schemas() -> dict[str, dict[str, Any]]:
    """kind (lower-case) → JSON Schema of a whole document of that kind."""
    out: dict[str, dict[str, Any]] = {}
    for kind, spec_model in SPEC_MODELS.items():
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
