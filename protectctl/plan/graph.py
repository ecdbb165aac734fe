"""The dependency graph of resources (networkx): cycles, order, DOT. Pure.

Edges point from a dependency to its dependant (key → storage, agent → source → schedule),
so a topological order creates dependencies first; deletions walk it reversed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from protectctl.errors import PlanError

if TYPE_CHECKING:
    import networkx as nx

    from protectctl.plan.resources import Resource


class _Node(Protocol):
    @property
    def address(self) -> object: ...
    @property
    def depends_on(self) -> Sequence[object]: ...


def build_graph(resources: Sequence[Resource]) -> nx.DiGraph:
    import networkx as nx

    graph: nx.DiGraph = nx.DiGraph()
    for res in resources:
        graph.add_node(str(res.address), kind=res.address.kind)
    for res in resources:
        for dep in res.depends_on:
            if str(dep) in graph:
                graph.add_edge(str(dep), str(res.address))
    return graph


def check_acyclic(graph: nx.DiGraph) -> None:
    import networkx as nx

    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise PlanError(f"dependency cycle: {path}", hint="break the cycle (e.g. a Host gateway chain)")


def ordered(changes: Iterable[_Change]) -> list[str]:
    """Addresses of the changes: creations/updates dependencies-first, then deletions reversed."""
    import networkx as nx

    items = list(changes)
    graph: nx.DiGraph = nx.DiGraph()
    for c in items:
        graph.add_node(c.address)
    for c in items:
        for dep in c.depends_on:
            if dep in graph:
                graph.add_edge(dep, c.address)
    topo = list(nx.lexicographical_topological_sort(graph))
    deleting = {c.address for c in items if c.action == "delete"}
    return [a for a in topo if a not in deleting] + [a for a in reversed(topo) if a in deleting]


class _Change(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def depends_on(self) -> Sequence[str]: ...


def to_dot(graph: nx.DiGraph) -> str:
    """DOT text of the graph (no pydot needed)."""
    colours = {"key": "gold", "storage": "lightblue", "library": "lightblue", "host": "grey85",
               "agent": "grey70", "group": "palegreen", "source": "lightgreen", "schedule": "white"}
    lines = ["digraph protectctl {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
    for node, data in sorted(graph.nodes(data=True)):
        lines.append(f'  "{node}" [fillcolor={colours.get(data.get("kind", ""), "white")}];')
    for src, dst in sorted(graph.edges()):
        lines.append(f'  "{src}" -> "{dst}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
