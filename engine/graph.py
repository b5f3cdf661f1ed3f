"""The graph IR: a typed DAG of tensor ops with symbolic shapes and constant weights.

A :class:`Graph` owns its :class:`Node` list in topological order. Every tensor is a :class:`Value`:
a graph input, a constant (``data`` holds the array) or an output of one node. Attributes are plain,
hashable Python values (ints, floats, strings, tuples; dimensions may be sympy expressions), so a
node's ``attrs_key()`` can enter the e-graph as it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
from satura.engine.errors import ShapeError
from satura.engine.shapes import Dim, Shape, as_dim

DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "bool",
    "string",
)


@dataclass(frozen=True)
class TensorType:
    """Shape (ints or sympy expressions) and dtype (a numpy dtype name) of one tensor."""

    shape: Shape
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(as_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if isinstance(d, sympy.Basic):
                out |= d.free_symbols  # type: ignore[arg-type]
        return out

    def bind(self, env: Mapping[sympy.Symbol, int]) -> TensorType:
        """The same type with symbols replaced by the ints in ``env``."""
        if self.is_static:
            return self
        return TensorType(
            tuple(d if isinstance(d, int) else int(d.subs(env)) for d in self.shape), self.dtype
        )

    def numel(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return n

    @property
    def itemsize(self) -> int:
        return (
            2
            if self.dtype == "bfloat16"
            else (8 if self.dtype == "string" else np.dtype(self.dtype).itemsize)
        )

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def freeze_attr(v: Any) -> Any:
    """Make an attribute value hashable and canonical (lists become tuples, numpy scalars
    Python)."""
    if isinstance(v, (list, tuple)):
        return tuple(freeze_attr(x) for x in v)
    if isinstance(v, np.ndarray):
        return tuple(freeze_attr(x) for x in v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, sympy.Basic):
        return as_dim(v)
    return v


class Value:
    """One tensor. ``producer`` is None for graph inputs and constants."""

    __slots__ = ("data", "index", "name", "producer", "type")

    def __init__(
        self,
        name: str,
        type: TensorType,
        producer: Node | None = None,
        index: int = 0,
        data: np.ndarray | None = None,
    ) -> None:
        self.name, self.type, self.producer, self.index, self.data = (
            name,
            type,
            producer,
            index,
            data,
        )

    @property
    def is_const(self) -> bool:
        return self.data is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. ``inputs`` may hold None for an absent optional input."""

    __slots__ = ("attrs", "inputs", "name", "op", "outputs")

    def __init__(
        self, op: str, inputs: list[Value | None], attrs: Mapping[str, Any], name: str
    ) -> None:
        self.op, self.inputs, self.name = op, inputs, name
        self.attrs = {k: freeze_attr(v) for k, v in attrs.items()}
        self.outputs: list[Value] = []

    def attrs_key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted(self.attrs.items()))

    def __repr__(self) -> str:
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        at = "".join(f", {k}={v!r}" for k, v in sorted(self.attrs.items()))
        return f"{outs} = {self.op}({ins}{at})"


class Graph:
    """A model: inputs, constants, nodes in topological order, outputs."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # -- construction -------------------------------------------------------------------------
    def fresh_name(self, hint: str = "t") -> str:
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    def fresh_node_name(self, hint: str) -> str:
        name = hint
        while name in self._node_names:
            name = f"{hint}_{next(self._counter)}"
        self._node_names.add(name)
        return name

    def add_input(self, name: str, shape: Iterable[Any], dtype: str = "float32") -> Value:
        v = Value(self.fresh_name(name), TensorType(tuple(shape), dtype))
        self.inputs.append(v)
        return v

    def add_const(self, array: Any, name: str = "c", dtype: str | None = None) -> Value:
        arr = np.asarray(array, dtype=dtype)
        return Value(self.fresh_name(name), TensorType(arr.shape, arr.dtype.name), data=arr)

    def add(
        self,
        op: str,
        inputs: list[Value | None],
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
        out_names: list[str] | None = None,
    ) -> Node:
        """Append a node, inferring its output types from the op registry. Raises ShapeError."""
        from satura.engine.ops import infer_types

        attrs = attrs or {}
        node = Node(op, list(inputs), attrs, self.fresh_node_name(name or op))
        try:
            types = infer_types(op, [None if v is None else v.type for v in inputs], node.attrs)
        except ShapeError as e:
            raise ShapeError(f"node '{node.name}' ({op}): {e}") from None
        for i, t in enumerate(types):
            hint = (
                out_names[i]
                if out_names and i < len(out_names)
                else (node.name if len(types) == 1 else f"{node.name}_{i}")
            )
            node.outputs.append(Value(self.fresh_name(hint), t, node, i))
        self.nodes.append(node)
        return node

    def apply(self, op: str, *inputs: Value | None, **attrs: Any) -> Value:
        """Append a one-output node and return its output: ``g.apply('matmul', x, w)``."""
        return self.add(op, list(inputs), attrs).outputs[0]

    def set_outputs(self, *values: Value) -> None:
        self.outputs = list(values)

    # -- queries ------------------------------------------------------------------------------
    @property
    def constants(self) -> list[Value]:
        seen: dict[int, Value] = {}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.is_const:
                    seen.setdefault(id(v), v)
        for v in self.outputs:
            if v.is_const:
                seen.setdefault(id(v), v)
        return list(seen.values())

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for v in self.inputs:
            out |= v.type.symbols
        return out

    def users(self) -> dict[int, list[Node]]:
        """id(value) -> nodes that read it."""
        out: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None:
                    out.setdefault(id(v), []).append(n)
        return out

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def prune(self) -> None:
        """Drop nodes no output depends on. A data-dependent op (NonZero) whose size a kept
        node names stays too: its run is what binds that size (``len(x.nonzero())``)."""
        live: set[int] = {id(v) for v in self.outputs}
        named: set[sympy.Symbol] = set().union(*(v.type.symbols for v in self.outputs))
        keep: list[Node] = []
        for n in reversed(self.nodes):
            decides = is_data_dependent(n) and any(o.type.symbols & named for o in n.outputs)
            if decides or any(id(o) in live for o in n.outputs):
                keep.append(n)
                live |= {id(v) for v in n.inputs if v is not None}
                named |= node_symbols(n)
        self.nodes = keep[::-1]

    def validate(self) -> None:
        """Check topological order and re-infer every type; raises ShapeError on a mismatch."""
        from satura.engine.ops import infer_types

        defined = {id(v) for v in self.inputs}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and not v.is_const and id(v) not in defined:
                    raise ShapeError(f"node '{n.name}' reads %{v.name} before it is defined")
            types = infer_types(n.op, [None if v is None else v.type for v in n.inputs], n.attrs)
            for o, t in zip(n.outputs, types, strict=True):
                if o.type != t:
                    raise ShapeError(
                        f"node '{n.name}': output %{o.name} is {o.type}, the op says {t}"
                    )
            defined |= {id(o) for o in n.outputs}

    def __str__(self) -> str:
        lines = [f"graph {self.name}(" + ", ".join(repr(v) for v in self.inputs) + ")"]
        lines += [f"  {n!r}" for n in self.nodes]
        lines.append("  return " + ", ".join(f"%{v.name}" for v in self.outputs))
        return "\n".join(lines)


def is_data_dependent(node: Node) -> bool:
    """Whether the node's output size is decided by its input's values (NonZero, Unique, NMS:
    the op's ``data_dependent`` trait)."""
    from satura.engine.ops import get_op

    return "data_dependent" in get_op(node.op).traits


def node_symbols(node: Node) -> set[sympy.Symbol]:
    """The symbols a node names: in its attributes and its output types."""
    out: set[sympy.Symbol] = set().union(*(o.type.symbols for o in node.outputs))
    stack = list(node.attrs.values())
    while stack:
        a = stack.pop()
        if isinstance(a, tuple):
            stack.extend(a)
        elif isinstance(a, sympy.Basic):
            out |= a.free_symbols  # type: ignore[arg-type]
    return out


def _subs_attr(v: Any, env: Mapping[sympy.Symbol, int]) -> Any:
    if isinstance(v, tuple):
        return tuple(_subs_attr(x, env) for x in v)
    if isinstance(v, sympy.Basic):
        return as_dim(v.subs(env))
    return v


def specialize(graph: Graph, env: Mapping[sympy.Symbol, int]) -> Graph:
    """A copy of ``graph`` with every symbolic dimension replaced by its value in ``env``."""
    g = Graph(graph.name)
    new: dict[int, Value | None] = {}
    for v in graph.inputs:
        new[id(v)] = g.add_input(v.name, v.type.bind(env).shape, v.type.dtype)
    for n in graph.nodes:
        ins = []
        for v in n.inputs:
            if v is None:
                ins.append(None)
            elif v.is_const:
                ins.append(new.setdefault(id(v), v))
            else:
                ins.append(new[id(v)])
        attrs = {k: _subs_attr(a, env) for k, a in n.attrs.items()}
        node = g.add(n.op, ins, attrs, name=n.name, out_names=[o.name for o in n.outputs])
        for o, o2 in zip(n.outputs, node.outputs, strict=True):
            new[id(o)] = o2
    g.set_outputs(*[new.get(id(v), v) for v in graph.outputs])  # type: ignore[misc]
    return g
