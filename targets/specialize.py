"""Symbolic input shapes: compile one static variant per set of concrete input shapes.

The first call with given shapes binds every symbol from the inputs' dimensions, rebuilds the graph
with those sizes (types re-inferred by the registry, attribute dimensions substituted), compiles
it, and caches the variant under the shapes; later calls with the same shapes reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import sympy
from satura.engine.errors import InputError, ShapeError
from satura.engine.graph import Graph, Value


def bind_symbols(graph: Graph, inputs: Mapping[str, Any]) -> dict[sympy.Symbol, int]:
    """Symbol values read off the inputs' shapes. Raises InputError on a mismatch."""
    env: dict[sympy.Symbol, int] = {}
    for v in graph.inputs:
        a = inputs.get(v.name)
        if not isinstance(a, np.ndarray):
            continue  # the compiled variant reports it
        if a.ndim != v.type.rank:
            raise InputError(f"input '{v.name}': expected rank {v.type.rank} ({v.type}), got "
                             f"{a.dtype.name}{list(a.shape)}")
        for want, got in zip(v.type.shape, a.shape, strict=True):
            if isinstance(want, sympy.Symbol):
                if env.setdefault(want, int(got)) != int(got):
                    raise InputError(f"input '{v.name}': dimension {want} is {got} here but "
                                     f"{env[want]} in another input")
            elif isinstance(want, int) and want != got:
                raise InputError(f"input '{v.name}': expected {v.type}, got "
                                 f"{a.dtype.name}{list(a.shape)}")
    missing = set().union(*(v.type.symbols for v in graph.inputs)) - set(env)
    if missing:
        raise InputError(f"cannot bind {', '.join(sorted(map(str, missing)))} from the inputs")
    return env


def _bind_attr(v: Any, env: dict[sympy.Symbol, int]) -> Any:
    if isinstance(v, tuple):
        return tuple(_bind_attr(x, env) for x in v)
    if isinstance(v, sympy.Basic):
        return int(v.subs(env))
    return v


def specialize(graph: Graph, env: dict[sympy.Symbol, int]) -> Graph:
    """A copy of ``graph`` with every symbol bound to its value in ``env``."""
    g = Graph(graph.name)
    new: dict[int, Value] = {}
    for v in graph.inputs:
        new[id(v)] = g.add_input(v.name, v.type.bind(env).shape, v.type.dtype)
    for n in graph.nodes:
        ins = [None if x is None else (x if x.is_const else new[id(x)]) for x in n.inputs]
        attrs = {k: _bind_attr(a, env) for k, a in n.attrs.items()}
        try:
            node = g.add(n.op, ins, attrs, name=n.name, out_names=[o.name for o in n.outputs])
        except ShapeError as e:
            raise InputError(f"inputs give shapes the model rejects: {e}") from None
        for o, o2 in zip(n.outputs, node.outputs, strict=True):
            new[id(o)] = o2
    g.set_outputs(*[v if v.is_const else new[id(v)] for v in graph.outputs])
    return g


class SpecializingModel:
    """A model with symbolic input dimensions; compiles a static variant per input-shape set."""

    def __init__(self, graph: Graph, compile_static: Callable[[Graph], Any]) -> None:
        self.graph = graph
        self._compile = compile_static
        self.variants: dict[tuple[tuple[int, ...], ...], Any] = {}

    def variant(self, inputs: Mapping[str, Any]) -> Any:
        """The compiled model for these inputs' shapes (compiling it on first use)."""
        env = bind_symbols(self.graph, inputs)
        key = tuple(tuple(int(d) for d in v.type.bind(env).shape) for v in self.graph.inputs)
        if key not in self.variants:
            self.variants[key] = self._compile(specialize(self.graph, env))
        return self.variants[key]

    def __call__(self, inputs: Mapping[str, Any] | None = None, /,
                 **kw: Any) -> dict[str, np.ndarray]:
        """Run the model; see :meth:`CompiledModel.__call__`. Raises InputError."""
        given = {**(inputs or {}), **kw}
        return self.variant(given)(given)
