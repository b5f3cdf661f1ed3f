"""Data-dependent sizes: run a model in stages cut at the ops whose output size its values decide.

An op with the ``data_dependent`` trait (``nonzero``: ONNX NonZero, a run-time Compress) gives
an output whose size is a symbol that no input binds. :class:`StagedModel` cuts the graph at the
first such ops (those that depend on no other): the *head* (every node that does not depend on
them) is compiled as usual; the cut ops run their numpy reference on the head's values; the
*tail* (the rest) is a graph whose inputs are the cut ops' outputs and the head's values it
reads, compiled by the same ``compile`` (a :class:`SpecializingModel`: one variant per set of
sizes, so the tail compiles once per count it meets, and a tail with further data-dependent ops
is staged again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from satura.engine.errors import InputError, ShapeError
from satura.engine.graph import Graph, Node, Value, is_data_dependent, node_symbols
from satura.engine.interpret import bind_inputs
from satura.engine.ops import get_op


def _subgraph(name: str, inputs: list[Value], nodes: list[Node], outputs: list[Value]) -> Graph:
    """A graph of ``nodes`` reading ``inputs`` (new graph inputs of the same names and types),
    constants and each other; returning ``outputs`` under their names."""
    g = Graph(name)
    new: dict[int, Value] = {id(v): g.add_input(v.name, v.type.shape, v.type.dtype) for v in inputs}

    def get(v: Value | None) -> Value | None:
        return None if v is None else v if v.is_const else new[id(v)]

    for n in nodes:
        made = g.add(n.op, [get(v) for v in n.inputs], n.attrs, n.name, [o.name for o in n.outputs])
        new |= {id(o): o2 for o, o2 in zip(n.outputs, made.outputs, strict=True)}
    g.set_outputs(*[v if v.is_const else new[id(v)] for v in outputs])
    return g


class StagedModel:
    """A compiled model whose graph has data-dependent sizes (see the module's doc)."""

    def __init__(self, graph: Graph, compile_fn: Callable[[Graph], Any]) -> None:
        self.graph = graph
        # Sizes only the data-dependent ops decide: a node that names one in an attribute or
        # an output type runs after them, even with no data edge from them.
        bound = set().union(*(v.type.symbols for v in graph.inputs))
        decided = {
            s
            for n in graph.nodes
            if is_data_dependent(n)
            for o in n.outputs
            for s in o.type.symbols
        } - bound
        # The cut: data-dependent nodes none of whose inputs depends on another one.
        late: set[int] = set()  # values that depend on a cut node's outputs
        self.cut: list[Node] = []
        head: list[Node] = []
        tail: list[Node] = []
        for n in graph.nodes:
            dd = is_data_dependent(n)
            if any(v is not None and id(v) in late for v in n.inputs) or (
                not dd and node_symbols(n) & decided
            ):
                tail.append(n)
                late |= {id(o) for o in n.outputs}
            elif dd:
                self.cut.append(n)
                late |= {id(o) for o in n.outputs}
            else:
                head.append(n)
        made = {id(o) for n in head for o in n.outputs}
        cut_outs = [o for n in self.cut for o in n.outputs]
        # What the cut and the tail read from before the cut: head values and graph inputs.
        needed: dict[int, Value] = {}
        for n in [*self.cut, *tail]:
            for v in n.inputs:
                if v is not None and not v.is_const and id(v) not in late:
                    needed.setdefault(id(v), v)
        head_outs = [v for v in needed.values() if id(v) in made]
        head_outs += [v for v in graph.outputs if id(v) in made and id(v) not in needed]
        self.head = (
            compile_fn(_subgraph(f"{graph.name}_head", graph.inputs, head, head_outs))
            if head_outs
            else None
        )
        self.head_inputs = [v.name for v in graph.inputs]
        # Every graph input goes to the tail too: its shapes bind the sizes the tail's
        # attributes and input types name (a reshape to (batch, ...), an input [n - 1]).
        tail_ins = [*cut_outs, *needed.values()]
        tail_ins += [v for v in graph.inputs if id(v) not in needed]
        tail_outs = [v for v in graph.outputs if id(v) in late]
        self.tail = (
            compile_fn(_subgraph(f"{graph.name}_tail", tail_ins, tail, tail_outs))
            if tail_outs
            else None
        )
        self.tail_inputs = [v.name for v in tail_ins]

    @property
    def fallback_nodes(self) -> list[str]:
        """The nodes run by their numpy reference: the cut's, then the stages'."""
        out = [n.name for n in self.cut]
        for stage in (self.head, self.tail):
            out += list(getattr(stage, "fallback_nodes", []))
        return out

    def __call__(
        self, inputs: Mapping[str, Any] | None = None, /, **kw: Any
    ) -> dict[str, np.ndarray]:
        """Run the model: the head, the cut's references, the tail. Raises InputError (an
        input's name, shape or dtype), before anything runs."""
        given = {**(inputs or {}), **kw}
        bind_inputs(self.graph, given)
        vals: dict[str, Any] = dict(given)
        if self.head is not None:
            vals |= self.head({k: given[k] for k in self.head_inputs})
        for n in self.cut:
            info = get_op(n.op)
            ins = [None if v is None else v.data if v.is_const else vals[v.name] for v in n.inputs]
            try:
                with np.errstate(all="ignore"):
                    outs = info.reference(ins, info.with_defaults(n.attrs))
            except (ValueError, IndexError, TypeError, ShapeError) as e:
                raise InputError(f"node '{n.name}' ({n.op}) failed on these inputs: {e}") from None
            vals |= {
                o.name: np.ascontiguousarray(a, o.type.dtype)
                for o, a in zip(n.outputs, outs, strict=True)
            }
        if self.tail is not None:
            vals |= self.tail({k: vals[k] for k in self.tail_inputs})
        return {v.name: v.data if v.is_const else vals[v.name] for v in self.graph.outputs}
