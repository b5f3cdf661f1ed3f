"""Extraction of satura's own e-graphs: price every e-node with the cost model, pick the cheapest
DAG, rebuild the Graph.

The snapshot (``satura.engine.egraph.Snapshot``) is turned into an :class:`EGraphData` whose node
costs are seconds on a hardware profile; structural nodes (inputs, constants, list cells) cost 0
and nodes the cost model cannot price (an ill-typed node) are never chosen.
"""

from __future__ import annotations

import math
import time
from typing import Any

from satura.engine.egraph import INVALID, Snapshot
from satura.engine.errors import ShapeError
from satura.engine.graph import Graph
from satura.extract.cost import Hints, node_time
from satura.extract.egraph_data import EGraphData, ENode
from satura.extract.greedy import check_choices, dag_cost, dag_greedy
from satura.extract.hardware import HardwareProfile

FREE = ("Input", "Const", "Scalar", "Absent", "Get", "TNil", "TCons")
FOLDED = 1e-12  # seconds: an op over constants, computed once at compile time


def _list_types(snap: Snapshot, c: int, seen: frozenset[int] = frozenset()) -> list[Any] | None:
    """Types of the tensors in list class ``c`` (every node of a list class has the same ones)."""
    for n in snap.classes.get(c, []):
        if n.op == "TNil":
            return []
        if n.op == "TCons" and n.children[1] not in seen:
            rest = _list_types(snap, n.children[1], seen | {c})
            if rest is not None:
                return [snap.types.get(n.children[0]), *rest]
    return None


def constant_classes(snap: Snapshot) -> set[int]:
    """Classes that hold a value computable at compile time: a constant, or an op over constant
    classes (least fixpoint)."""
    const: set[int] = set()
    changed = True
    while changed:
        changed = False
        for c, ns in snap.classes.items():
            if c in const:
                continue
            for n in ns:
                if n.op in ("Const", "Scalar", "Absent", "TNil") or (
                    n.op not in ("Input", "Get")
                    and n.children
                    and all(ch in const for ch in n.children)
                ):
                    const.add(c)
                    changed = True
                    break
    return const


def _foldable(out: Any) -> bool:
    from satura.engine.fold import MAX_FOLD_ELEMS

    outs = list(out) if isinstance(out, tuple) else [out]
    return all(t.is_static and math.prod(int(d) for d in t.shape) <= MAX_FOLD_ELEMS for t in outs)


def price(snap: Snapshot, profile: HardwareProfile | str, hints: Hints = None) -> EGraphData:
    """An :class:`EGraphData` of ``snap`` with each node's cost in seconds on ``profile``.
    An op over constants costs (next to) nothing: it is folded after extraction."""
    nodes: dict[str, ENode] = {}
    cache: dict[tuple, float] = {}
    const = constant_classes(snap)
    for c, ns in snap.classes.items():
        for i, n in enumerate(ns):
            cost = 0.0
            out = snap.types.get(c)
            if (
                n.op not in FREE
                and n.children
                and all(ch in const for ch in n.children)
                and out is not None
                and out != INVALID
                and _foldable(out)
            ):
                cost = FOLDED
            elif n.op not in FREE:
                if (
                    n.children
                    and snap.classes.get(n.children[0])
                    and snap.classes[n.children[0]][0].op in ("TNil", "TCons")
                ):
                    ins = _list_types(snap, n.children[0])
                else:
                    ins = [snap.types.get(ch) for ch in n.children]
                if out is None or out == INVALID or ins is None or INVALID in ins:
                    cost = math.inf
                else:
                    outs = list(out) if isinstance(out, tuple) else [out]
                    key = (n.op, tuple(ins), tuple(outs), n.attrs)
                    if key not in cache:
                        try:
                            cache[key] = node_time(n.op, ins, outs, dict(n.attrs), profile, hints)
                        except (ShapeError, TypeError, ValueError, ZeroDivisionError):
                            cache[key] = math.inf
                    cost = cache[key]
            nodes[f"{c}.{i}"] = ENode(n.op, tuple(str(ch) for ch in n.children), str(c), cost)
    usable = {k: v for k, v in nodes.items() if v.cost != math.inf}
    return EGraphData.from_nodes(usable, [str(r) for r in snap.roots], name="satura")


def extract_graph(
    snap: Snapshot, profile: HardwareProfile | str, hints: Hints = None
) -> tuple[Graph, float, float]:
    """The cheapest program in ``snap``: (graph, modelled seconds, extraction seconds)."""
    t0 = time.perf_counter()
    data = price(snap, profile, hints)
    choices = dag_greedy(data)
    check_choices(data, choices)
    cost = dag_cost(data, choices)
    picked = {int(c): int(n.split(".")[1]) for c, n in choices.items()}
    graph = snap.to_graph(picked)
    return graph, cost, time.perf_counter() - t0
