"""Greedy extractors (tree cost and DAG cost), extraction costs and the validity checker.

Both extractors run Knuth's generalisation of Dijkstra's algorithm (Knuth 1977, "A generalization
of Dijkstra's algorithm"): e-classes are finalised in order of their best known cost, and a node
becomes a candidate only once every child class is final. A class therefore only ever gets a node
whose children already have one, which makes the result acyclic by construction (cycles in the
e-graph are simply never closed), and each node is priced once: O(E log E).

- :func:`tree_greedy` prices a node as its cost plus the tree costs of its children. For
  non-negative costs this is the optimal tree-cost extraction.
- :func:`dag_greedy` prices a node as the summed cost of the *set* of distinct nodes its choice
  pulls in (the extraction-gym "faster-greedy-dag" cost), so a subterm shared by two children is
  paid once. It is a heuristic for DAG cost (the exact problem is NP-hard); it returns the better of
  its own result and the tree-greedy one, so it never loses to tree-greedy.
"""

from __future__ import annotations

import heapq
import math

from satura.engine.errors import ExtractError
from satura.extract.egraph_data import ClassId, EGraphData, EGraphIndex, NodeId

Choices = dict[ClassId, NodeId]


# -- extractors --------------------------------------------------------------------------------
def tree_greedy(g: EGraphData) -> Choices:
    """Bottom-up tree-cost extraction: a node per class reachable from the roots.

    Raises ExtractError when a root has no finite (acyclic) extraction.
    """
    ix = g.index()
    choice = _knuth_tree(ix)
    return _reachable_choices(g, ix, choice)


def dag_greedy(g: EGraphData) -> Choices:
    """DAG-aware greedy extraction (shared subterms paid once), never worse than tree-greedy.

    Raises ExtractError when a root has no finite (acyclic) extraction.
    """
    ix = g.index()
    dag = _reachable_choices(g, ix, _knuth_dag(ix))
    tree = _reachable_choices(g, ix, _knuth_tree(ix))
    return dag if dag_cost(g, dag) <= dag_cost(g, tree) else tree


def _knuth_tree(ix: EGraphIndex) -> list[int]:
    n_nodes = len(ix.node_ids)
    missing = [len(u) for u in ix.uniq_children]
    best = [math.inf] * len(ix.class_ids)
    choice = [-1] * len(ix.class_ids)
    heap = [(ix.node_cost[n], n) for n in range(n_nodes) if missing[n] == 0]
    heapq.heapify(heap)
    node_class, node_cost, children, parents = ix.node_class, ix.node_cost, ix.children, ix.parents
    while heap:
        c, n = heapq.heappop(heap)
        k = node_class[n]
        if choice[k] >= 0:
            continue
        choice[k] = n
        best[k] = c
        for p in parents[k]:
            missing[p] -= 1
            if missing[p] == 0:
                pc = node_cost[p]
                for ch in children[p]:
                    pc += best[ch]
                heapq.heappush(heap, (pc, p))
    return choice


def _knuth_dag(ix: EGraphIndex) -> list[int]:
    """Knuth's order with set-union prices: the price of a node is the cost of its closure."""
    n_nodes = len(ix.node_ids)
    missing = [len(u) for u in ix.uniq_children]
    choice = [-1] * len(ix.class_ids)
    closure: list[frozenset[int] | None] = [None] * len(ix.class_ids)
    node_class, node_cost, uniq, parents = ix.node_class, ix.node_cost, ix.uniq_children, ix.parents
    heap = [(node_cost[n], n) for n in range(n_nodes) if missing[n] == 0]
    heapq.heapify(heap)
    pending: dict[int, frozenset[int]] = {}  # node -> closure, computed when pushed
    while heap:
        _, n = heapq.heappop(heap)
        k = node_class[n]
        if choice[k] >= 0:
            pending.pop(n, None)
            continue
        choice[k] = n
        closure[k] = pending.pop(n, None) or frozenset((n,))
        for p in parents[k]:
            missing[p] -= 1
            if missing[p] == 0:
                sets = sorted((closure[ch] for ch in uniq[p]), key=len, reverse=True)  # type: ignore
                s = set(sets[0])
                for other in sets[1:]:
                    s.update(other)
                s.add(p)
                fs = frozenset(s)
                pending[p] = fs
                heapq.heappush(heap, (sum(node_cost[x] for x in fs), p))
    return choice


def _reachable_choices(g: EGraphData, ix: EGraphIndex, choice: list[int]) -> Choices:
    """Per-class choices restricted to the classes the roots reach; ExtractError if incomplete."""
    out: Choices = {}
    seen = [False] * len(ix.class_ids)
    stack: list[int] = []
    for r in ix.roots:
        if choice[r] < 0:
            raise ExtractError(
                f"{g.name}: root e-class '{ix.class_ids[r]}' has no finite "
                "extraction (every term in it is cyclic or needs such a class)"
            )
        if not seen[r]:
            seen[r] = True
            stack.append(r)
    while stack:
        k = stack.pop()
        n = choice[k]
        out[ix.class_ids[k]] = ix.node_ids[n]
        for ch in ix.uniq_children[n]:
            if not seen[ch]:
                seen[ch] = True
                stack.append(ch)
    return out


# -- costs and checks --------------------------------------------------------------------------
def check_choices(g: EGraphData, choices: Choices) -> None:
    """Check that ``choices`` is a complete, acyclic extraction of ``g``'s roots.

    Complete: every class reachable from the roots through chosen nodes has a choice, and each
    chosen node belongs to its class. Acyclic: no chosen node reaches its own class.
    Raises ExtractError naming the first problem found.
    """
    gray, black = 1, 2
    color: dict[ClassId, int] = {}
    for root in g.roots:
        if color.get(root) == black:
            continue
        _node_of(g, choices, root)
        color[root] = gray
        stack = [(root, iter(g.nodes[choices[root]].children))]
        while stack:
            cls, it = stack[-1]
            child = next(it, None)
            if child is None:
                color[cls] = black
                stack.pop()
                continue
            state = color.get(child)
            if state == gray:
                raise ExtractError(
                    f"{g.name}: extraction is cyclic: e-class '{child}' reaches "
                    "itself through the chosen nodes"
                )
            if state is None:
                _node_of(g, choices, child)
                color[child] = gray
                stack.append((child, iter(g.nodes[choices[child]].children)))


def _node_of(g: EGraphData, choices: Choices, cls: ClassId) -> NodeId:
    nid = choices.get(cls)
    if nid is None:
        raise ExtractError(f"{g.name}: extraction is incomplete: e-class '{cls}' has no choice")
    node = g.nodes.get(nid)
    if node is None or node.eclass != cls:
        raise ExtractError(
            f"{g.name}: choice for e-class '{cls}' is '{nid}', which is not a node of that class"
        )
    if node.subsumed:
        raise ExtractError(f"{g.name}: choice for e-class '{cls}' is '{nid}', which is subsumed")
    return nid


def dag_cost(g: EGraphData, choices: Choices) -> float:
    """Sum of the costs of the distinct nodes reachable from the roots through ``choices``.

    Raises ExtractError when a reachable class has no choice.
    """
    seen: set[ClassId] = set(g.roots)
    stack = list(seen)
    total = 0.0
    while stack:
        cls = stack.pop()
        node = g.nodes[_node_of(g, choices, cls)]
        total += node.cost
        for ch in node.children:
            if ch not in seen:
                seen.add(ch)
                stack.append(ch)
    return total


def tree_cost(g: EGraphData, choices: Choices) -> float:
    """Sum over roots of the cost of the term each root denotes, shared subterms counted per use.

    Raises ExtractError when the extraction is incomplete or cyclic.
    """
    check_choices(g, choices)
    memo: dict[ClassId, float] = {}
    for root in g.roots:
        stack = [root]
        while stack:
            cls = stack[-1]
            if cls in memo:
                stack.pop()
                continue
            node = g.nodes[choices[cls]]
            todo = [c for c in node.children if c not in memo]
            if todo:
                stack.extend(todo)
                continue
            memo[cls] = node.cost + sum(memo[c] for c in node.children)
            stack.pop()
    return sum(memo[r] for r in g.roots)
