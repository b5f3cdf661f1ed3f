"""Shared helpers for the CPU target tests: build one-node graphs and run the numpy oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
from satura.engine.graph import Graph, Value
from satura.engine.ops import run_reference


def reference(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every node's numpy reference (the registry's oracle), in order."""
    env: dict[int, np.ndarray] = {id(v): feeds[v.name] for v in graph.inputs}

    def get(v: Value) -> np.ndarray:
        return np.asarray(v.data) if v.is_const else env[id(v)]

    for n in graph.nodes:
        outs = run_reference(n.op, [None if v is None else get(v) for v in n.inputs], n.attrs)
        for o, r in zip(n.outputs, outs, strict=True):
            env[id(o)] = np.asarray(r)
    return {v.name: get(v) for v in graph.outputs}


def one_node(
    op: str, shapes: list[Any], consts: dict[int, np.ndarray] | None = None, **attrs: Any
) -> tuple[Graph, dict[str, np.ndarray]]:
    """A graph of one ``op`` node over random fp32 inputs (or the given constants)."""
    rng = np.random.default_rng(abs(hash((op, str(shapes)))) % 2**32)
    g = Graph(op)
    ins: list[Value | None] = []
    feeds: dict[str, np.ndarray] = {}
    for i, s in enumerate(shapes):
        if s is None:
            ins.append(None)
        elif consts and i in consts:
            ins.append(g.add_const(consts[i], f"c{i}"))
        else:
            v = g.add_input(f"x{i}", s)
            feeds[v.name] = rng.standard_normal(s).astype(np.float32)
            ins.append(v)
    g.set_outputs(g.apply(op, *ins, **attrs))
    return g, feeds


def check_compiled(
    graph: Graph,
    feeds: dict[str, np.ndarray],
    threads: tuple[int, ...] = (1, 2),
    rtol: float | None = 1e-4,
) -> dict[str, np.ndarray]:
    """Compile ``graph`` at each thread count, with no numpy fallback, and compare with the
    reference: within ``rtol`` (atol 1e-5), or bit for bit and dtype for dtype when None."""
    from satura.targets import compile_graph

    want = reference(graph, feeds)
    for t in threads:
        model = compile_graph(graph, threads=t)
        assert model.fallback_nodes == [], model.fallback_nodes
        got = model(**feeds)
        for name, w in want.items():
            if rtol is None:
                assert got[name].dtype == w.dtype
                np.testing.assert_array_equal(got[name], w, err_msg=f"{name} threads={t}")
            else:
                np.testing.assert_allclose(
                    got[name], w, rtol=rtol, atol=1e-5, err_msg=f"{name} threads={t}"
                )
    return want
