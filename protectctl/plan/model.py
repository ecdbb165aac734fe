"""The Plan: an immutable value, pinned to the state's lineage and serial.

It serialises to the documented, versioned JSON of `plan --json` and `plan --out`
(docs/plan-format.md). Nothing here is UI-only: apply acts on `changes` alone.
The models build their validators on first use (`defer_build`): a job that only reads the
policy (`run sync`) imports this module and never builds them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from protectctl.errors import Diagnostic

PLAN_FORMAT = "1.0"

_Model = TypeVar("_Model", bound=BaseModel)


def trusted(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """An instance of `cls` from values this package built itself, one per field: no validation.

    The object pydantic's `model_construct` makes, without its per-field alias and default
    lookups (25 us a Change, against 2 us here): `plan` builds 16,000 Changes for 1,000 groups
    (tests/bench/bench_plan.py). `values` must name every field of `cls`, already typed.
    """
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


class Reason(StrEnum):
    NEW = "new"  # in the policy, not in the state
    CHANGED = "changed"  # inputs differ from the state
    DRIFT = "drift"  # the host differs from what apply wrote
    FORCED_REPLACE = "forced_replace"  # an input that cannot change in place changed
    REMOVED = "removed"  # in the state, no longer in the policy
    DESTROY = "destroy"  # `protectctl destroy`


class AttributeChange(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    path: str
    before: Any = None
    after: Any = None
    forces_replace: bool = False


class Change(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    address: str
    kind: str
    action: Action
    reason: Reason
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    attributes: list[AttributeChange] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    host: str | None = None
    holds_data: bool = False
    delete_data: bool = False  # the delete removes protected data (shown in red)
    notes: list[str] = Field(default_factory=list)


class GroupEstimate(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    group: str
    sla: str
    sources: int
    bytes_per_full: int | None
    points_per_snapshot: int
    snapshots_retained: int
    points_total: int
    points_all_sources: int
    disk_bytes: int | None


class PlanWarning(BaseModel):
    """One plan warning, structured: `message` is the line `warnings` holds; a warning about the
    policy keeps where it was found (file:line:col), as `validate --json` gives it."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    message: str
    severity: str = "warning"
    summary: str
    detail: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @classmethod
    def of(cls, warning: str | Diagnostic) -> PlanWarning:
        if isinstance(warning, str):
            return trusted(
                cls,
                {
                    "message": warning,
                    "severity": "warning",
                    "summary": warning,
                    "detail": None,
                    "file": None,
                    "line": None,
                    "column": None,
                },
            )
        loc = warning.location
        return trusted(
            cls,
            {
                "message": str(warning),
                "severity": warning.severity.value,
                "summary": warning.summary,
                "detail": warning.detail,
                "file": str(loc.file) if loc else None,
                "line": loc.line if loc else None,
                "column": loc.column if loc else None,
            },
        )


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    format_version: str = PLAN_FORMAT
    protectctl_version: str
    created_at: datetime
    lineage: str
    serial: int
    policy_dir: str
    destroy: bool = False
    delete_data: bool = False
    changes: list[Change] = Field(default_factory=list)
    estimates: list[GroupEstimate] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # one line each, as the text plan shows them
    # the same warnings structured, in the same order (file:line:col for those about the policy);
    # added beside `warnings` so that readers of plan format 1.0 keep working
    diagnostics: list[PlanWarning] = Field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy), counting a replace as one add and one destroy."""
        add = sum(c.action in (Action.CREATE, Action.REPLACE) for c in self.changes)
        change = sum(c.action is Action.UPDATE for c in self.changes)
        destroy = sum(c.action in (Action.DELETE, Action.REPLACE) for c in self.changes)
        return add, change, destroy
