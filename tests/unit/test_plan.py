"""Plan: capacity figures, determinism, the pure diff, the graph, the renderings.

Policies are real files (a copy of examples/quickstart); planning runs in-process.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protectctl import api
from protectctl.errors import PlanError, StalePlanError
from protectctl.plan.diff import Observations, make_plan, plan_is_applicable
from protectctl.plan.graph import build_graph, check_acyclic, ordered
from protectctl.plan.model import PLAN_FORMAT, Action, Plan, Reason
from protectctl.plan.render import render_markdown, render_text, summary_line
from protectctl.plan.resources import inputs_hash
from protectctl.policy import capacity
from protectctl.state.model import ResourceState, State
from protectctl.units import ByteSize, ChangeRate, Duration, Schedule

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GB = 10**9


def applied(plan: Plan, state: State) -> State:
    """The state a successful apply of `plan` leaves (no effects: values only)."""
    out = state.model_copy(deep=True)
    for change in plan.changes:
        if change.action is Action.DELETE:
            out.resources.pop(change.address)
        else:
            assert change.after is not None
            out.resources[change.address] = ResourceState(
                kind=change.kind,
                inputs=change.after,
                inputs_hash=inputs_hash(change.after),
                depends_on=change.depends_on,
                host=change.host,
                holds_data=change.holds_data,
                updated_at=NOW,
            )
        out.serial += 1
    return out


def edit(directory: Path, old: str, new: str) -> None:
    file = directory / "protect.yaml"
    text = file.read_text()
    assert old in text, old
    file.write_text(text.replace(old, new))


# --- capacity ------------------------------------------------------------------------


def test_design_figures() -> None:
    every_15m = Schedule.parse("every 15m")
    daily, weekly = Schedule.parse("daily at 20:00"), Schedule.parse("weekly on sun at 02:00")
    assert capacity.bytes_per_full(ByteSize.parse("100GB"), ChangeRate.parse("10%/day"), daily) == 10 * GB
    assert capacity.points_per_snapshot(every_15m, daily) == 97
    assert capacity.points_per_snapshot(every_15m, weekly) == 673
    assert capacity.total_points(673, 512) == 344_576


def test_estimate_in_plan(quickstart: Path) -> None:
    plan = api.make_plan(quickstart, State(), now=NOW)
    (est,) = plan.estimates
    assert (est.group, est.sla, est.sources) == ("docs", "tier1", 1)
    assert est.bytes_per_full == 10 * GB
    assert est.points_per_snapshot == 97
    assert est.snapshots_retained == 14
    assert est.points_total == 97 * 14
    doc = json.loads(plan.model_dump_json())
    assert doc["estimates"][0]["bytes_per_full"] == 10_000_000_000
    assert doc["estimates"][0]["points_per_snapshot"] == 97
    text = "\n".join(line for _, line in render_text(plan))
    assert "10.0 GB moved per full" in text and "97 recovery points per snapshot" in text


def test_weekly_full_estimate(quickstart: Path) -> None:
    edit(quickstart, "full: daily at 20:00", "full: weekly on sun at 02:00")
    (est,) = api.make_plan(quickstart, State(), now=NOW).estimates
    assert est.points_per_snapshot == 673
    assert est.bytes_per_full == 70 * GB  # 10 %/day over the 7 days between fulls


def test_capacity_without_size_hint() -> None:
    e = capacity.estimate(
        size=None,
        change_rate=None,
        sync=Schedule.parse("every 1h"),
        full=Schedule.parse("daily at 21:00"),
        disk_retention=Duration.parse("14d"),
    )
    assert e.bytes_per_full is None and e.disk_bytes is None
    assert e.points_per_snapshot == 25 and e.snapshots_retained == 14


# --- determinism and formats ---------------------------------------------------------


def test_plan_is_deterministic(quickstart: Path) -> None:
    state = State()
    first = api.make_plan(quickstart, state, now=NOW).model_dump_json(indent=2)
    second = api.make_plan(quickstart, state.model_copy(deep=True), now=NOW).model_dump_json(indent=2)
    assert first == second
    assert render_markdown(Plan.model_validate_json(first)) == render_markdown(Plan.model_validate_json(second))


def test_plan_json_is_versioned_and_round_trips(quickstart: Path) -> None:
    plan = api.make_plan(quickstart, State(), now=NOW)
    doc = json.loads(plan.model_dump_json())
    assert doc["format_version"] == PLAN_FORMAT == "1.0"
    assert set(doc) >= {
        "format_version",
        "protectctl_version",
        "created_at",
        "lineage",
        "serial",
        "policy_dir",
        "destroy",
        "delete_data",
        "changes",
        "estimates",
        "warnings",
    }
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    key = next(c for c in doc["changes"] if c["kind"] == "key")
    assert key["after"]["passphrase"] == {"file": str(quickstart.resolve() / ".protectctl" / "passphrase")}


def test_markdown(quickstart: Path) -> None:
    plan = api.make_plan(quickstart, State(), now=NOW)
    md = render_markdown(plan)
    assert md.startswith("### protectctl plan")
    assert "**Plan: 10 to add, 0 to change, 0 to destroy.**" in md
    assert "| + | `schedule.docs/home/sync` | create | new |" in md
    assert "```diff" in md and "| docs | tier1 | 10.0 GB | 97 |" in md
    no_changes = render_markdown(api.make_plan(quickstart, applied(plan, State()), now=NOW))
    assert "**No changes.**" in no_changes


def test_text_symbols_and_summary(quickstart: Path) -> None:
    state = applied(api.make_plan(quickstart, State(), now=NOW), State())
    edit(quickstart, "sync: every 15m", "sync: every 30m")
    edit(quickstart, "path: ./.protectctl/repo", "path: ./.protectctl/repo2")
    edit(quickstart, "    - name: home", "    - name: house")
    plan = api.make_plan(quickstart, state, now=NOW)
    text = "\n".join(line for _, line in render_text(plan))
    assert "  -/+ storage.primary" in text and "# forces replacement" in text
    assert "  + source.docs/house" in text and "  - source.docs/home" in text
    assert "  ~ group.docs" in text
    assert text.rstrip().endswith(summary_line(plan))
    assert summary_line(plan) == "Plan: 6 to add, 1 to change, 6 to destroy."


# --- the diff ------------------------------------------------------------------------


def test_no_changes_after_apply(quickstart: Path) -> None:
    plan = api.make_plan(quickstart, State(), now=NOW)
    assert [c.action for c in plan.changes] == [Action.CREATE] * 10
    again = api.make_plan(quickstart, applied(plan, State()), now=NOW)
    assert again.changes == []
    assert "No changes" in render_text(again)[0][1]


def test_sla_sync_edit_touches_only_its_schedule_and_source(quickstart: Path) -> None:
    state = applied(api.make_plan(quickstart, State(), now=NOW), State())
    edit(quickstart, "sync: every 15m", "sync: every 30m")
    plan = api.make_plan(quickstart, state, now=NOW)
    assert [(c.address, c.action) for c in plan.changes] == [
        ("source.docs/home", Action.UPDATE),
        ("schedule.docs/home/sync", Action.UPDATE),
    ]
    by = {c.address: c for c in plan.changes}
    assert [(a.path, a.before, a.after) for a in by["source.docs/home"].attributes] == [("sync_interval_s", 900, 1800)]
    assert [(a.path, a.before, a.after) for a in by["schedule.docs/home/sync"].attributes] == [
        ("schedule", "every 15m", "every 30m")
    ]


def test_removed_source_keeps_its_points(quickstart: Path) -> None:
    state = applied(api.make_plan(quickstart, State(), now=NOW), State())
    edit(quickstart, "    - name: home", "    - name: house")
    plan = api.make_plan(quickstart, state, now=NOW)
    gone = {c.address: c for c in plan.changes if c.action is Action.DELETE}
    assert set(gone) == {"source.docs/home"} | {f"schedule.docs/home/{j}" for j in ("sync", "full", "prune", "verify")}
    assert gone["source.docs/home"].reason is Reason.REMOVED
    assert any("recovery points are kept" in n for n in gone["source.docs/home"].notes)
    # deletions come after creations, dependants (schedules) before what they depend on
    order = [c.address for c in plan.changes]
    assert order.index("source.docs/home") > max(
        order.index(f"schedule.docs/home/{j}") for j in ("sync", "full", "prune", "verify")
    )
    assert order.index("source.docs/house") < order.index("schedule.docs/house/sync")


def test_destroy_refused_when_repository_holds_points(quickstart: Path) -> None:
    state = applied(api.make_plan(quickstart, State(), now=NOW), State())
    resources = api.resources(api.load(quickstart))
    observed = Observations(storage_points={"storage.primary": 3})
    with pytest.raises(PlanError, match=r"storage.primary \(3 recovery points\).*key.repo-key"):
        make_plan(resources, state, now=NOW, version="t", policy_dir="p", destroy=True, observed=observed)
    plan = make_plan(
        resources,
        state,
        now=NOW,
        version="t",
        policy_dir="p",
        destroy=True,
        delete_data=True,
        observed=observed,
    )
    assert {c.address for c in plan.changes if c.delete_data} == {"storage.primary", "key.repo-key"}
    assert "DELETES PROTECTED DATA" in "\n".join(line for _, line in render_text(plan))
    assert ":red_circle:" in render_markdown(plan)


def test_destroy_without_points_keeps_data(quickstart: Path) -> None:
    state = applied(api.make_plan(quickstart, State(), now=NOW), State())
    plan = api.make_plan(quickstart, state, destroy=True, now=NOW)
    assert {c.action for c in plan.changes} == {Action.DELETE}
    assert not any(c.delete_data for c in plan.changes)
    storage = next(c for c in plan.changes if c.address == "storage.primary")
    assert any("data kept" in n for n in storage.notes)
    order = [c.address for c in plan.changes]
    assert order.index("schedule.docs/home/sync") < order.index("source.docs/home") < order.index("agent.local")
    assert order.index("storage.primary") < order.index("key.repo-key")


def test_stale_plan_is_refused(quickstart: Path) -> None:
    state = State()
    plan = api.make_plan(quickstart, state, now=NOW)
    plan_is_applicable(plan, state)
    moved = applied(plan, state)
    with pytest.raises(StalePlanError, match="plan serial 0, state serial 10"):
        plan_is_applicable(plan, moved)
    with pytest.raises(StalePlanError, match="another state"):
        plan_is_applicable(plan, State())


# --- the graph -----------------------------------------------------------------------


def test_graph_edges(quickstart: Path) -> None:
    graph = build_graph(api.resources(api.load(quickstart)))
    for edge in [
        ("key.repo-key", "storage.primary"),
        ("host.local", "agent.local"),
        ("agent.local", "source.docs/home"),
        ("storage.primary", "source.docs/home"),
        ("source.docs/home", "schedule.docs/home/sync"),
        ("group.docs", "source.docs/home"),
    ]:
        assert graph.has_edge(*edge), edge
    check_acyclic(graph)
    dot = api.graph_dot(quickstart)
    assert dot.startswith("digraph protectctl {") and '"key.repo-key" -> "storage.primary";' in dot


def test_cycle_is_named(tmp_path: Path) -> None:
    docs = "".join(
        f"""---
apiVersion: protectctl/v1
kind: Host
metadata: {{name: {name}}}
spec: {{address: local, gateway: {gateway}}}
"""
        for name, gateway in (("a", "b"), ("b", "a"))
    )
    (tmp_path / "hosts.yaml").write_text(docs)
    with pytest.raises(PlanError, match=r"dependency cycle: host\.(a|b) -> host\.(a|b) -> host\.\1"):
        api.make_plan(tmp_path, State(), now=NOW)


def test_ordered_is_stable() -> None:
    class C:
        def __init__(self, address: str, action: str, deps: tuple[str, ...] = ()) -> None:
            self.address, self.action, self.depends_on = address, action, deps

    changes = [
        C("b", "create", ("a",)),
        C("a", "create"),
        C("z", "delete", ("y",)),
        C("y", "delete"),
        C("c", "create"),
    ]
    assert ordered(changes) == ["a", "b", "c", "z", "y"]


def _recorded(kind: str) -> ResourceState:
    return ResourceState(kind=kind, inputs={}, inputs_hash="h", updated_at=NOW)


def test_a_plan_that_leaves_no_schedule_says_so_and_a_destroy_does_not() -> None:
    from protectctl.plan.diff import stops_all_protection

    state = State(
        resources={
            "agent.local": _recorded("agent"),
            "schedule.docs/home/sync": _recorded("schedule"),
            "schedule.docs/home/full": _recorded("schedule"),
        }
    )
    emptied = make_plan([], state, now=NOW, version="t", policy_dir="/p")
    assert stops_all_protection(emptied.changes, state) == (
        "this plan removes all 2 schedule(s) and 1 agent config(s) and creates none: nothing would be protected"
    )
    assert any("apply refuses this plan unless given --allow-remove-all" in w for w in emptied.warnings)
    destroyed = make_plan([], state, now=NOW, version="t", policy_dir="/p", destroy=True)
    assert not any("--allow-remove-all" in w for w in destroyed.warnings)
    # one schedule left, or none to begin with: nothing to say
    kept = [c for c in emptied.changes if c.address != "schedule.docs/home/full"]
    assert stops_all_protection(kept, state) is None
    assert stops_all_protection([], State(resources={"agent.local": _recorded("agent")})) is None
