"""The shortcuts that make `plan` fast give exactly what the slow ways give.

- `trusted` models equal validated ones, field for field and in their JSON;
- the text renderer's JSON values are `json.dumps`'s, byte for byte;
- the cheap cycle check agrees with the ordering one;
- a plan of a generated policy survives the JSON edge (docs/plan-format.md) unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protectctl import api
from protectctl.plan.graph import is_acyclic, topological
from protectctl.plan.model import Action, AttributeChange, Change, Plan, Reason, trusted
from protectctl.plan.render import render_markdown, render_text, value
from protectctl.state.model import State
from tests.bench.bench_plan import generate_policy

_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), inner, max_size=4),
    ),
    max_leaves=15,
)


@settings(max_examples=400, deadline=None)
@given(_json_values)
def test_values_render_as_json_dumps(v: Any) -> None:
    text = json.dumps(v, ensure_ascii=False)
    if isinstance(v, int) and not isinstance(v, bool):
        text = str(v)
    expected = text if len(text) <= 120 else text[:117] + "..."
    assert value(v) == expected


def test_unserialisable_value_raises_as_json_dumps_does() -> None:
    circular: list[Any] = []
    circular.append(circular)
    for bad in ({"a": object()}, circular):
        try:
            value(bad)
        except (TypeError, ValueError) as err:
            try:
                json.dumps(bad, ensure_ascii=False)
            except (TypeError, ValueError) as expected:
                assert type(err) is type(expected)
        else:
            raise AssertionError("no error")


def test_trusted_equals_validated() -> None:
    fields: dict[str, Any] = {
        "address": "source.docs/home",
        "kind": "source",
        "action": Action.UPDATE,
        "reason": Reason.CHANGED,
        "before": {"a": 1},
        "after": {"a": 2, "b": [1, "x"]},
        "attributes": [trusted(AttributeChange, {"path": "a", "before": 1, "after": 2, "forces_replace": False})],
        "depends_on": ["group.docs"],
        "host": "local",
        "holds_data": False,
        "delete_data": False,
        "notes": ["n"],
    }
    fast = trusted(Change, dict(fields))
    slow = Change.model_validate(fields)
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefghz"), max_size=3), max_size=8))
def test_cycle_check_agrees_with_ordering(graph: dict[str, list[str]]) -> None:
    assert is_acyclic(graph) == (topological(graph) is not None)


def test_plan_of_a_big_policy_survives_the_json_edge(tmp_path: Path) -> None:
    directory = generate_policy(tmp_path / "policy", groups=40, members=3, files=3)
    policy = api.load(directory)
    plan = api.make_plan(directory, State(), policy=policy, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert len(plan.changes) == len(api.resources(policy)) and all(c.action is Action.CREATE for c in plan.changes)
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert again.model_dump_json(indent=2) == plan.model_dump_json(indent=2)
    assert render_text(again) == render_text(plan)
    assert render_markdown(again) == render_markdown(plan)
    # dependencies first: every change comes after the changes it depends on
    seen: set[str] = set()
    for change in plan.changes:
        assert all(dep in seen for dep in change.depends_on), change.address
        seen.add(change.address)
