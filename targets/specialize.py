"""Symbolic input shapes: compile one static variant per set of concrete input shapes.

The first call with given shapes checks the inputs and binds every symbol from their dimensions
(:func:`satura.engine.interpret.bind_inputs`), rebuilds the graph with those sizes
(:func:`satura.engine.graph.specialize`: types re-inferred by the registry, attribute dimensions
substituted), compiles it, and caches the variant under the bindings; later calls with the same
shapes reuse it. Nodes that the bound sizes make constant (a slice of a constant mask whose
bounds were the sequence length) are folded before compiling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from satura.engine.errors import InputError, ShapeError
from satura.engine.fold import fold_constants
from satura.engine.graph import Graph, specialize
from satura.engine.interpret import bind_inputs


def static_variant(graph: Graph, env: Mapping[Any, int]) -> Graph:
    """``graph`` with its symbols bound (``env``: sympy symbol -> size), the nodes those sizes
    make constant folded. Raises ShapeError where the sizes break a shape rule."""
    static = specialize(graph, env)
    fold_constants(static)
    return static


class SpecializingModel:
    """A model with symbolic input dimensions; compiles a static variant per input-shape set.

    At most ``max_variants`` variants are kept: past that, the least recently used is dropped
    (a stage after a data-dependent size meets a new size on many calls; each variant holds its
    code and arena)."""

    max_variants = 64

    def __init__(self, graph: Graph, compile_static: Callable[[Graph], Any]) -> None:
        self.graph = graph
        self._compile = compile_static
        self.variants: dict[tuple[tuple[int, ...], ...], Any] = {}

    def variant(self, inputs: Mapping[str, Any]) -> Any:
        """The compiled model for these inputs' shapes (compiling it on first use).
        Raises InputError, naming the input, before anything is compiled or run."""
        try:  # the common case: shapes seen before (the variant checks dtypes and the rest)
            seen = tuple(tuple(inputs[v.name].shape) for v in self.graph.inputs)
        except (KeyError, AttributeError):
            seen = None
        if seen in self.variants:
            self.variants[seen] = self.variants.pop(seen)  # most recently used last
            return self.variants[seen]
        env = bind_inputs(self.graph, inputs)
        key = tuple(tuple(int(d) for d in v.type.bind(env).shape) for v in self.graph.inputs)
        if key not in self.variants:
            try:
                static = static_variant(self.graph, env)
            except ShapeError as e:
                raise InputError(f"inputs give shapes the model rejects: {e}") from None
            self.variants[key] = self._compile(static)
            while len(self.variants) > self.max_variants:
                del self.variants[next(iter(self.variants))]
        return self.variants[key]

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> dict[str, np.ndarray]:
        """Run the model; see :meth:`CompiledModel.__call__`. Raises InputError."""
        given = {**(inputs or {}), **kw}
        return self.variant(given)(given)
