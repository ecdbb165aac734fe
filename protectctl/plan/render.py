"""A Plan as text (Terraform-like), as markdown (a pull-request comment). Pure.

Text lines carry a style tag ("add", "change", "destroy", "danger", "dim", "") that the
CLI turns into colour on a TTY; the words alone say everything.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Sequence
from typing import Any

from protectctl.humanize import human_bytes as size
from protectctl.plan.model import Action, AttributeChange, Change, GroupEstimate, Plan

Line = tuple[str, str]  # (style, text)

SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.REPLACE: "-/+", Action.DELETE: "-"}
STYLE = {Action.CREATE: "add", Action.UPDATE: "change", Action.REPLACE: "change", Action.DELETE: "destroy"}
VERB = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in-place",
    Action.REPLACE: "must be replaced",
    Action.DELETE: "will be destroyed",
}
MAX_VALUE = 120


def summary_line(plan: Plan) -> str:
    add, change, destroy = plan.counts()
    return f"Plan: {add} to add, {change} to change, {destroy} to destroy."


def value(v: Any) -> str:
    kind = type(v)
    if kind is str and v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
        text = f'"{v}"'  # what json.dumps gives, for most of the 130,000 values of a 1,000-group plan
    elif kind is int:
        text = int.__repr__(v)
    else:
        text = _json(v)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _json(v: Any) -> str:
    """`json.dumps(v, ensure_ascii=False)`, through a C encoder made once: json.dumps sets one up
    for every call, a third of the text rendering of a 1,000-group plan (bench_plan.py)."""
    if _ENCODER is None:
        return json.dumps(v, ensure_ascii=False)
    try:
        return "".join(_ENCODER(v, 0))
    except (TypeError, ValueError, RecursionError):  # what json.dumps says about it, then
        return json.dumps(v, ensure_ascii=False)


def _c_encoder() -> Callable[[Any, int], Sequence[str]] | None:
    """json's own C encoder with json.dumps' defaults (no indent, ', ' and ': ', NaN allowed),
    or None where this Python has none (json.dumps is then used, with the same result)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    encode = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or encode is None:
        return None

    def refuse(o: object) -> object:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    # (markers, default, encoder, indent, key separator, item separator, sort_keys, skipkeys, allow_nan)
    return make({}, refuse, encode, None, ": ", ", ", False, False, True)  # type: ignore[no-any-return]


_ENCODER = _c_encoder()


def render_text(plan: Plan) -> list[Line]:
    lines: list[Line] = []
    if plan.warnings:
        lines += [("warn", f"Warning: {w}") for w in plan.warnings] + [("", "")]
    if not plan.changes:
        lines.append(("add", "No changes. The hosts match the policy."))
        lines += _estimates_text(plan.estimates)
        return lines
    lines.append(("", "protectctl will perform the following actions:"))
    for change in plan.changes:
        lines.append(("", ""))
        lines += _change_text(change)
    lines += _estimates_text(plan.estimates)
    lines += [("", ""), ("bold", summary_line(plan))]
    if any(c.delete_data for c in plan.changes):
        lines.append(("danger", "This plan DELETES PROTECTED DATA (repositories, recovery points or keys)."))
    return lines


def _change_text(change: Change) -> list[Line]:
    style = "danger" if change.delete_data else STYLE[change.action]
    why = f" ({change.reason.value.replace('_', ' ')})" if change.action is not Action.CREATE else ""
    verb = "will be destroyed WITH ITS DATA" if change.delete_data else VERB[change.action]
    lines: list[Line] = [
        ("dim", f"  # {change.address} {verb}{why}"),
        (style, f"  {SYMBOL[change.action]} {change.address}"),
    ]
    if change.action is Action.CREATE:
        lines += [
            ("add", f"      + {k} = {value(v)}") for k, v in sorted((change.after or {}).items()) if v is not None
        ]
    elif change.action is Action.DELETE:
        lines += [
            ("destroy", f"      - {k} = {value(v)}") for k, v in sorted((change.before or {}).items()) if v is not None
        ]
    for attr in change.attributes:
        lines.append(_attribute_line(change.action, attr))
    lines += [("dim", f"      # {note}") for note in change.notes]
    return lines


def _attribute_line(action: Action, attr: AttributeChange) -> Line:
    forces = "  # forces replacement" if attr.forces_replace else ""
    if action is Action.CREATE or attr.before is None:
        return ("add", f"      + {attr.path} = {value(attr.after)}")
    if action is Action.DELETE or attr.after is None:
        return ("destroy", f"      - {attr.path} = {value(attr.before)}")
    return ("change", f"      ~ {attr.path}: {value(attr.before)} -> {value(attr.after)}{forces}")


def _estimates_text(estimates: list[GroupEstimate]) -> list[Line]:
    if not estimates:
        return []
    lines: list[Line] = [("", ""), ("bold", "Capacity and recovery points per group:")]
    for e in estimates:
        lines.append(
            (
                "",
                f"  {e.group} (SLA {e.sla}, {e.sources} source(s)): "
                f"{size(e.bytes_per_full)} moved per full; "
                f"{e.points_per_snapshot:,} recovery points per snapshot x {e.snapshots_retained} "
                f"snapshots = {e.points_total:,} per source ({e.points_all_sources:,} in all); "
                f"est. disk use over retention {size(e.disk_bytes)}",
            )
        )
    return lines


def render_markdown(plan: Plan) -> str:
    add, change, destroy = plan.counts()
    out = ["### protectctl plan", ""]
    for w in plan.warnings:
        out.append(f"> :warning: {w}")
    if not plan.changes:
        out.append("**No changes.** The hosts match the policy.")
    else:
        out += [f"**{summary_line(plan)}**", ""]
        if any(c.delete_data for c in plan.changes):
            out += ["> :red_circle: **This plan deletes protected data.**", ""]
        out += ["| | resource | action | reason |", "|---|---|---|---|"]
        for c in plan.changes:
            mark = ":red_circle:" if c.delete_data else SYMBOL[c.action]
            out.append(f"| {mark} | `{c.address}` | {c.action.value} | {c.reason.value.replace('_', ' ')} |")
        out += ["", "<details><summary>Details</summary>", "", "```diff"]
        for c in plan.changes:
            out += [text for _style, text in _change_text(c)]
        out += ["```", "", "</details>"]
    if plan.estimates:
        out += [
            "",
            "| group | SLA | per full | points / snapshot | snapshots | points / source | est. disk |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in plan.estimates:
            out.append(
                f"| {e.group} | {e.sla} | {size(e.bytes_per_full)} | {e.points_per_snapshot:,} | "
                f"{e.snapshots_retained} | {e.points_total:,} | {size(e.disk_bytes)} |"
            )
    _ = (add, change, destroy)
    return "\n".join(out) + "\n"
