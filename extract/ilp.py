"""Exact DAG-cost extraction as an integer program, solved by Z3's Optimize within a time limit.

Variables: one Boolean per e-node (chosen) and per e-class (used), one real "level" per e-class.

    every root class is used
    a used class has a chosen node;  a chosen node's class is used
    a chosen node uses each child class, and its class's level exceeds each child's level
    minimise  sum(cost of chosen nodes)

The levels forbid cycles (a strictly decreasing chain cannot close). Before solving, nodes that can
never be part of a finite term (a child class with no acyclic extraction, or a child that is the
node's own class) are dropped, and only classes reachable from the roots are encoded. Z3 reports
each improving model as it finds one, so a time-out still returns the best model so far; the
result is never worse than the greedy extraction it starts from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import z3
from satura.engine.errors import ExtractError
from satura.extract.egraph_data import EGraphData, EGraphIndex
from satura.extract.greedy import Choices, _knuth_tree, check_choices, dag_cost, dag_greedy


@dataclass
class IlpResult:
    """Choices, their DAG cost, whether they are proven optimal, and the solver's wall time."""

    choices: Choices
    cost: float
    optimal: bool
    improved: bool
    seconds: float


def ilp_extract(
    g: EGraphData, time_limit_s: float = 10.0, start: Choices | None = None
) -> IlpResult:
    """Minimum DAG-cost extraction of ``g``, or the best found within ``time_limit_s``.

    ``start`` (default: :func:`~satura.extract.greedy.dag_greedy`) is the fallback; the result's
    cost is never above it. Raises ExtractError when a root has no finite extraction.
    """
    t0 = time.perf_counter()
    best = start if start is not None else dag_greedy(g)
    best_cost = dag_cost(g, best)
    ix = g.index()
    finite = [c >= 0 for c in _knuth_tree(ix)]
    usable = [
        all(finite[ch] for ch in ix.uniq_children[n])
        and ix.node_class[n] not in ix.uniq_children[n]
        for n in range(len(ix.node_ids))
    ]
    reach = _reachable(ix, usable)

    deadline = t0 + time_limit_s
    opt = z3.Optimize()
    used = {c: z3.Bool(f"c{c}") for c in reach}
    level = {c: z3.Real(f"l{c}") for c in reach}
    pick: dict[int, z3.BoolRef] = {}
    for i, c in enumerate(reach):
        if i % 256 == 0 and time.perf_counter() > deadline:
            return IlpResult(best, best_cost, False, False, time.perf_counter() - t0)
        nodes = [n for n in ix.class_nodes[c] if usable[n]]
        for n in nodes:
            pick[n] = z3.Bool(f"n{n}")
            opt.add(z3.Implies(pick[n], used[c]))
            for ch in ix.uniq_children[n]:
                opt.add(z3.Implies(pick[n], z3.And(used[ch], level[c] > level[ch])))
        opt.add(z3.Implies(used[c], z3.Or([pick[n] for n in nodes])))
    for r in ix.roots:
        opt.add(used[r])
    # The greedy cost bounds the search (slack for float rounding of the greedy sum).
    objective = z3.Sum(
        [z3.If(p, z3.RealVal(ix.node_cost[n]), z3.RealVal(0)) for n, p in pick.items()]
    )
    opt.add(objective <= z3.RealVal(best_cost + 1e-9 * (1.0 + abs(best_cost))))
    handle = opt.minimize(objective)
    opt.set("timeout", max(1, int((deadline - time.perf_counter()) * 1000)))

    last: list[z3.ModelRef] = []
    opt.set_on_model(lambda m: last.append(m))  # each call improves on the one before
    status = opt.check() if time.perf_counter() < deadline else z3.unknown
    del handle
    if status == z3.sat:
        last.append(opt.model())
    found = [_choices_of(ix, last[-1], pick)] if last else []
    improved = False
    for cand in found:
        trimmed = _trim(g, cand)
        if trimmed is None:
            continue
        cost = dag_cost(g, trimmed)
        if cost < best_cost - 1e-12:
            best, best_cost, improved = trimmed, cost, True
    return IlpResult(best, best_cost, status == z3.sat, improved, time.perf_counter() - t0)


def _choices_of(ix: EGraphIndex, m: z3.ModelRef, pick: dict[int, z3.BoolRef]) -> Choices:
    """The node each class reachable from the roots picks in model ``m`` (first true one)."""
    out: Choices = {}
    stack = list(dict.fromkeys(ix.roots))
    seen = set(stack)
    while stack:
        c = stack.pop()
        n = next(
            (
                n
                for n in ix.class_nodes[c]
                if n in pick and z3.is_true(m.eval(pick[n], model_completion=True))
            ),
            None,
        )
        if n is None:
            continue  # incomplete: _trim rejects it
        out[ix.class_ids[c]] = ix.node_ids[n]
        for ch in ix.uniq_children[n]:
            if ch not in seen:
                seen.add(ch)
                stack.append(ch)
    return out


def _reachable(ix: EGraphIndex, usable: list[bool]) -> list[int]:
    seen = dict.fromkeys(ix.roots, True)
    stack = list(seen)
    while stack:
        c = stack.pop()
        for n in ix.class_nodes[c]:
            if usable[n]:
                for ch in ix.uniq_children[n]:
                    if ch not in seen:
                        seen[ch] = True
                        stack.append(ch)
    return list(seen)


def _trim(g: EGraphData, cand: Choices) -> Choices | None:
    """``cand`` restricted to what the roots reach; None if it is not a valid extraction."""
    out: Choices = {}
    stack = list(dict.fromkeys(g.roots))
    while stack:
        c = stack.pop()
        if c in out:
            continue
        if c not in cand:
            return None
        out[c] = cand[c]
        stack.extend(ch for ch in g.nodes[cand[c]].children if ch not in out)
    try:
        check_choices(g, out)
    except ExtractError:
        return None
    return out
