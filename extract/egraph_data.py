"""An in-memory e-graph for extraction, independent of egglog, and its egraph-serialize JSON I/O.

The JSON format is the one egglog and extraction-gym write (``egraph-serialize``)::

    {"nodes": {NODE_ID: {"op": str, "children": [NODE_ID, ...], "eclass": CLASS_ID,
                         "cost": float}, ...},
     "root_eclasses": [CLASS_ID, ...],
     "class_data": {CLASS_ID: {...}, ...}}          # optional

A child names a node; it stands for that node's e-class. :class:`EGraphData` keeps children as class
ids. Extractors work on :meth:`EGraphData.index`, an integer view built once, because dicts of
strings are slow to walk thousands of times.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from satura.engine.errors import ExtractError

ClassId = str
NodeId = str


@dataclass(frozen=True, slots=True)
class ENode:
    """One e-node: its op, the e-classes of its children, its own e-class and its cost.

    A ``subsumed`` node (egglog's ``:subsume``) stays in its class but is never extracted.
    """

    op: str
    children: tuple[ClassId, ...]
    eclass: ClassId
    cost: float
    payload: Any = None
    subsumed: bool = False


@dataclass(slots=True)
class EGraphIndex:
    """Integer view of an :class:`EGraphData`: classes and nodes numbered from 0.

    ``children[n]`` keeps duplicates (tree cost counts them); ``uniq_children[n]`` does not.
    ``parents[c]`` lists the nodes that have class ``c`` among their children (each once).
    """

    class_ids: list[ClassId]
    class_of: dict[ClassId, int]
    node_ids: list[NodeId]
    node_of: dict[NodeId, int]
    node_class: list[int]
    node_cost: list[float]
    children: list[tuple[int, ...]]
    uniq_children: list[tuple[int, ...]]
    class_nodes: list[list[int]]
    parents: list[list[int]]
    roots: list[int]


@dataclass
class EGraphData:
    """An e-graph to extract from: classes -> node ids, node id -> :class:`ENode`, root classes."""

    classes: dict[ClassId, list[NodeId]]
    nodes: dict[NodeId, ENode]
    roots: list[ClassId]
    class_data: dict[ClassId, Any] = field(default_factory=dict)
    name: str = "<egraph>"
    _index: EGraphIndex | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_nodes(
        cls, nodes: Mapping[NodeId, ENode], roots: list[ClassId], name: str = "<egraph>"
    ) -> EGraphData:
        """Build from nodes (classes are derived from ``ENode.eclass``); checks references.

        Raises ExtractError when a child or root class has no node.
        """
        classes: dict[ClassId, list[NodeId]] = {}
        for nid, node in nodes.items():
            classes.setdefault(node.eclass, []).append(nid)
        for nid, node in nodes.items():
            for ch in node.children:
                if ch not in classes:
                    raise ExtractError(f"{name}: node '{nid}' has child class '{ch}' with no nodes")
        for r in roots:
            if r not in classes:
                raise ExtractError(
                    f"{name}: root e-class '{r}' has no nodes "
                    "(not a canonical class of this e-graph)"
                )
        return cls(classes=classes, nodes=dict(nodes), roots=list(roots), name=name)

    def index(self) -> EGraphIndex:
        """The integer view, built on first use and cached (the e-graph must not change after)."""
        if self._index is None:
            self._index = _build_index(self)
        return self._index

    def reachable_classes(self) -> set[ClassId]:
        """Classes reachable from the roots through any node."""
        ix = self.index()
        seen = [False] * len(ix.class_ids)
        stack = list(ix.roots)
        for r in stack:
            seen[r] = True
        while stack:
            c = stack.pop()
            for n in ix.class_nodes[c]:
                for ch in ix.uniq_children[n]:
                    if not seen[ch]:
                        seen[ch] = True
                        stack.append(ch)
        return {ix.class_ids[c] for c, s in enumerate(seen) if s}


def _build_index(g: EGraphData) -> EGraphIndex:
    class_ids = list(g.classes)
    class_of = {c: i for i, c in enumerate(class_ids)}
    node_ids: list[NodeId] = []
    class_nodes: list[list[int]] = [[] for _ in class_ids]
    for ci, cid in enumerate(class_ids):
        for nid in g.classes[cid]:
            if not g.nodes[nid].subsumed:
                class_nodes[ci].append(len(node_ids))
                node_ids.append(nid)
    node_of = {n: i for i, n in enumerate(node_ids)}
    node_class: list[int] = []
    node_cost: list[float] = []
    children: list[tuple[int, ...]] = []
    uniq: list[tuple[int, ...]] = []
    parents: list[list[int]] = [[] for _ in class_ids]
    for ni, nid in enumerate(node_ids):
        node = g.nodes[nid]
        node_class.append(class_of[node.eclass])
        node_cost.append(float(node.cost))
        ch = tuple(class_of[c] for c in node.children)
        children.append(ch)
        u = tuple(dict.fromkeys(ch))
        uniq.append(u)
        for c in u:
            parents[c].append(ni)
    roots = [class_of[r] for r in g.roots]
    return EGraphIndex(
        class_ids,
        class_of,
        node_ids,
        node_of,
        node_class,
        node_cost,
        children,
        uniq,
        class_nodes,
        parents,
        roots,
    )


def load_serialized(source: str | os.PathLike[str] | Mapping[str, Any]) -> EGraphData:
    """Read an egraph-serialize JSON file (a path) or its parsed dict into :class:`EGraphData`.

    Raises ExtractError, one line naming the file and what is wrong, on a missing file, bad JSON,
    a node without ``op``/``eclass``, a child that names no node, a non-numeric or NaN cost, or a
    root e-class that has no nodes.
    """
    if isinstance(source, Mapping):
        name, data = "<dict>", source
    else:
        name = os.fspath(source)
        try:
            with open(name, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ExtractError(f"{name}: no such file") from None
        except json.JSONDecodeError as e:
            raise ExtractError(
                f"{name}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ExtractError(f"{name}: cannot read: {e}") from None
    return _parse(data, name)


def _parse(data: Any, name: str) -> EGraphData:
    if not isinstance(data, Mapping):
        raise ExtractError(f"{name}: top level must be a JSON object, got {type(data).__name__}")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        raise ExtractError(f"{name}: missing or malformed 'nodes' (must map node ids to nodes)")
    eclass_of: dict[str, str] = {}
    for nid, raw in raw_nodes.items():
        if not isinstance(raw, Mapping):
            raise ExtractError(f"{name}: node '{nid}' must be a JSON object")
        if "eclass" not in raw or "op" not in raw:
            missing = "eclass" if "eclass" not in raw else "op"
            raise ExtractError(f"{name}: node '{nid}' has no '{missing}'")
        eclass_of[nid] = str(raw["eclass"])
    nodes: dict[NodeId, ENode] = {}
    for nid, raw in raw_nodes.items():
        kids = raw.get("children", [])
        if not isinstance(kids, list):
            raise ExtractError(f"{name}: node '{nid}': 'children' must be a list of node ids")
        try:
            children = tuple(eclass_of[str(k)] for k in kids)
        except KeyError as e:
            raise ExtractError(
                f"{name}: node '{nid}' has child {e.args[0]!r}, which is not a node of the e-graph"
            ) from None
        cost = raw.get("cost", 1.0)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or math.isnan(cost):
            raise ExtractError(f"{name}: node '{nid}' has cost {cost!r}; it must be a number")
        nodes[str(nid)] = ENode(
            str(raw["op"]),
            children,
            eclass_of[nid],
            float(cost),
            subsumed=bool(raw.get("subsumed", False)),
        )
    roots = data.get("root_eclasses", [])
    if not isinstance(roots, list):
        raise ExtractError(f"{name}: 'root_eclasses' must be a list of e-class ids")
    g = EGraphData.from_nodes(nodes, [str(r) for r in roots], name=name)
    class_data = data.get("class_data") or {}
    if not isinstance(class_data, Mapping):
        raise ExtractError(f"{name}: 'class_data' must map e-class ids to objects")
    g.class_data = {str(k): v for k, v in class_data.items()}
    return g


def reprice(g: EGraphData, cost: Callable[[NodeId, ENode], float]) -> EGraphData:
    """A copy of ``g`` whose node costs are ``cost(node_id, node)`` (e.g. the roofline model)."""
    nodes = {nid: replace(n, cost=float(cost(nid, n))) for nid, n in g.nodes.items()}
    return EGraphData(
        {c: list(ns) for c, ns in g.classes.items()},
        nodes,
        list(g.roots),
        dict(g.class_data),
        g.name,
    )


def to_serialized(g: EGraphData) -> dict[str, Any]:
    """The egraph-serialize dict of ``g`` (children name the first node of their class)."""
    first = {c: ns[0] for c, ns in g.classes.items()}
    return {
        "nodes": {
            nid: {
                "op": n.op,
                "children": [first[c] for c in n.children],
                "eclass": n.eclass,
                "cost": n.cost,
                "subsumed": n.subsumed,
            }
            for nid, n in g.nodes.items()
        },
        "root_eclasses": list(g.roots),
        "class_data": dict(g.class_data),
    }
