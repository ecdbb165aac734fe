"""The recorded state: what apply has configured (Terraform-like), never what was protected.

A state has a lineage fixed at birth and a serial bumped on every write; a saved plan
records both and apply refuses it when either moved.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

STATE_FORMAT = 1


class ResourceState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    inputs: dict[str, Any]
    inputs_hash: str
    outputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    host: str | None = None
    holds_data: bool = False
    updated_at: datetime


class State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = STATE_FORMAT
    lineage: str = Field(default_factory=lambda: str(uuid.uuid4()))
    serial: int = 0
    protectctl_version: str = ""
    resources: dict[str, ResourceState] = Field(default_factory=dict)
